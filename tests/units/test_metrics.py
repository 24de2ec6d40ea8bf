"""PNMI and purities (HuBERT paper, IV.C) on hand-made examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from speechssl.units.metrics import align_frames, quality_from_counts, unit_quality


def test_perfect_clustering_scores_one():
    phones = {"a": list("aabbbcc"), "b": list("ccaab")}
    # a bijective relabelling of the phones
    to_unit = {"a": 7, "b": 3, "c": 0}
    units = {u: [to_unit[p] for p in ph] for u, ph in phones.items()}
    q = unit_quality(phones, units)
    assert q.pnmi == pytest.approx(1.0)
    assert q.phone_purity == pytest.approx(1.0)
    assert q.cluster_purity == pytest.approx(1.0)
    assert (q.num_frames, q.num_utts, q.num_phones, q.num_units) == (12, 2, 3, 3)


def test_units_finer_than_phones_are_pure_but_spread():
    # every phone split over two units: phone purity 1, cluster purity 1/2, PNMI still 1
    phones = {"u": ["a"] * 4 + ["b"] * 4}
    units = {"u": [0, 1, 0, 1, 2, 3, 2, 3]}
    q = unit_quality(phones, units)
    assert q.phone_purity == pytest.approx(1.0)
    assert q.cluster_purity == pytest.approx(0.5)
    assert q.pnmi == pytest.approx(1.0)


def test_independent_labels_score_about_zero():
    rng = np.random.default_rng(0)
    phones = {f"u{i}": rng.integers(0, 10, 500).tolist() for i in range(20)}
    units = {f"u{i}": rng.integers(0, 20, 500).tolist() for i in range(20)}
    q = unit_quality(phones, units)
    assert q.pnmi < 0.01
    # the most frequent phone of any unit: about 1/10 plus sampling noise
    assert q.phone_purity < 0.15


def test_hand_computed_case():
    # rows: phones a, b; columns: units 0, 1
    counts = np.array([[3, 1], [0, 4]])
    p = counts / 8
    h_y = -2 * 0.5 * math.log(0.5)
    p_y, p_z = p.sum(1), p.sum(0)  # (1/2, 1/2), (3/8, 5/8)
    mi = sum(p[i, j] * math.log(p[i, j] / (p_y[i] * p_z[j])) for i in range(2) for j in range(2) if p[i, j])
    pnmi, phone_purity, cluster_purity = quality_from_counts(counts)
    assert pnmi == pytest.approx(mi / h_y)
    assert pnmi == pytest.approx(0.5487949406953985)  # (3/8 ln 2 + 1/8 ln(2/5) + 1/2 ln(8/5)) / ln 2
    # unit 0: max p(y|z) = 3/3 (weight 3/8); unit 1: 4/5 (weight 5/8) -> (3 + 4) / 8
    assert phone_purity == pytest.approx(7 / 8)
    # phone a: max p(z|y) = 3/4; phone b: 4/4 -> (3 + 4) / 8
    assert cluster_purity == pytest.approx(7 / 8)
    # the same through the frame-level API
    q = unit_quality({"x": ["a"] * 4 + ["b"] * 4}, {"x": [0, 0, 0, 1, 1, 1, 1, 1]})
    assert (q.pnmi, q.phone_purity, q.cluster_purity) == pytest.approx((pnmi, 7 / 8, 7 / 8))


def test_one_frame_difference_is_trimmed():
    q = unit_quality({"x": ["a", "a", "b", "b", "b"]}, {"x": [1, 1, 2, 2]})
    assert q.num_frames == 4 and q.num_trimmed == 1 and q.pnmi == pytest.approx(1.0)
    ph, un = align_frames(["a"], [1, 2], utt_id="x")
    assert (list(ph), list(un)) == (["a"], [1])


def test_larger_difference_names_the_utterance():
    with pytest.raises(ValueError, match=r"utterance 'bad2': 3 unit labels but 6 phone frames"):
        unit_quality({"ok": ["a", "b"], "bad2": ["a"] * 6}, {"ok": [0, 1], "bad2": [0, 0, 0]})


def test_no_common_utterances_is_an_error():
    with pytest.raises(ValueError, match="no utterance has both"):
        unit_quality({"a": ["x"]}, {"b": [0]})


def test_unaligned_utterances_are_skipped():
    q = unit_quality({"a": ["x", "y"]}, {"a": [0, 1], "b": [5, 5]})
    assert q.num_utts == 1 and q.num_frames == 2
