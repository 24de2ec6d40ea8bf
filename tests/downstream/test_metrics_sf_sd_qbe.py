"""Slot filling, diarization and query-by-example metrics on fixtures with answers worked out by hand
from the definitions (SUPERB SF / md-eval DER / NIST TWV)."""

import numpy as np
import pytest

from speechssl.downstream.metrics import (
    Turn,
    diarization_counts,
    max_term_weighted_value,
    parse_slots,
    slot_type_f1,
    slot_value_cer,
)

SF_REFS = ["B-action set E-action an alarm for B-time seven thirty E-time", "play some music"]
SF_HYPS = ["set an alarm B-time seven thirteen E-time", "play music"]


def test_parse_slots_strips_tags_and_collects_values():
    text, slots = parse_slots("B-action  set E-action an alarm for B-time seven thirty E-time")
    assert text == "set an alarm for seven thirty"
    assert slots == {"action": ["set"], "time": ["seven thirty"]}
    assert parse_slots("B-time seven thirty E-place") == ("seven thirty", {})  # mismatched tags: no slot


def test_slot_type_f1_and_value_cer():
    # utterance 1: ref types {action, time}, hyp {time}: P 1, R 1/2, F1 2/3; utterance 2: no slots
    # on either side: 1. Mean 5/6. Values: "set" vs "" (3 deletions), "seven thirty" vs "seven
    # thirteen" (y->e, +e, +n: 3) over 3 + 12 reference characters: 6/15. s3prl 0.4.18's
    # slot_type_f1 / slot_value_cer give 0.8333 / 0.4 on these strings (checked by hand).
    assert slot_type_f1(SF_REFS, SF_HYPS) == pytest.approx(5 / 6)
    assert slot_value_cer(SF_REFS, SF_HYPS) == pytest.approx(6 / 15)


def test_slot_value_cer_pairs_each_reference_with_its_best_hypothesis_value():
    # ref a: "x y", "q"; b: "zz". hyp a: "x"; b: "zy"; c: "w" (extra type: precision 2/3, recall 1).
    # pairs: "x y"/"x" 2, "q"/"x" 1, "zz"/"zy" 1 -> 4/6 (s3prl: 0.8, 0.6667)
    refs, hyps = ["B-a x y E-a and B-b zz E-b B-a q E-a"], ["B-a x E-a B-b zy E-b B-c w E-c"]
    assert slot_type_f1(refs, hyps) == pytest.approx(0.8)
    assert slot_value_cer(refs, hyps) == pytest.approx(4 / 6)


def test_der_confusion_without_and_with_collar():
    ref = [Turn("A", 0, 10), Turn("B", 10, 20)]
    hyp = [Turn("x", 0, 12), Turn("y", 12, 20)]
    counts = diarization_counts(ref, hyp, collar=0.0)
    assert (counts.scored, counts.missed, counts.false_alarm, counts.confusion) == (20, 0, 0, 2)
    assert counts.der == pytest.approx(0.1)
    # collar 0.25 removes [0, .25], [9.75, 10.25], [19.75, 20.25]: 19 s scored, confusion 10.25-12
    assert diarization_counts(ref, hyp).der == pytest.approx(1.75 / 19)


def test_der_miss_false_alarm_and_overlap():
    ref = [Turn("A", 0, 10)]
    hyp = [Turn("x", 2, 10), Turn("x", 12, 14)]
    counts = diarization_counts(ref, hyp, collar=0.0)
    assert (counts.missed, counts.false_alarm, counts.confusion) == (2, 2, 0)
    assert counts.der == pytest.approx(0.4)
    # two reference speakers overlap 5-10 and the hypothesis has one: 5 s missed, and whichever
    # reference speaker x maps to, 5 s of the other is confusion; overlap counts per speaker
    overlap = diarization_counts([Turn("A", 0, 10), Turn("B", 5, 15)], [Turn("x", 0, 15)], collar=0.0)
    assert (overlap.scored, overlap.missed, overlap.confusion) == (20, 5, 5)


def test_der_maps_speakers_optimally_and_ignores_their_names():
    # overlaps x-A 6, x-B 6, y-A 4: the best one-to-one mapping is x->B, y->A (10 s), not x->A (6 s)
    ref = [Turn("A", 0, 10), Turn("B", 10, 16)]
    hyp = [Turn("x", 0, 6), Turn("x", 10, 16), Turn("y", 6, 10)]
    assert diarization_counts(ref, hyp, collar=0.0).der == pytest.approx(6 / 16)
    renamed = [Turn({"x": "spk9", "y": "spk1"}[t.speaker], t.start, t.end) for t in hyp]
    assert diarization_counts(ref, renamed, collar=0.0) == diarization_counts(ref, hyp, collar=0.0)
    total = diarization_counts(ref, hyp, collar=0.0) + diarization_counts(ref, ref, collar=0.0)
    assert total.der == pytest.approx(6 / 32)


def test_der_refuses_bad_turns():
    with pytest.raises(ValueError, match="speaker A"):
        diarization_counts([Turn("A", 3, 2)], [])


def test_mtwv_worked_example():
    # beta 1 (c_fa = c_miss, p_target 0.5). Trials by score: .9 q0 T, .8 q0 N, .7 q1 T, .6 q1 N,
    # .3 q0 T, ... TWV after each cut: .25, 0, .5, 1/3, 7/12 (the maximum), 5/12, ...
    scores = np.array([[0.9, 0.8, 0.3, 0.1], [0.2, 0.7, 0.6, 0.05], [0.5, 0.4, 0.35, 0.0]])
    targets = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])  # q2 never occurs: not scored
    mtwv, threshold = max_term_weighted_value(scores, targets, p_target=0.5, c_miss=1, c_fa=1)
    assert mtwv == pytest.approx(7 / 12)
    assert threshold == 0.3


def test_mtwv_defaults_never_split_ties_and_floor_at_zero():
    # QUESST/SWS defaults: beta = 0.01 * (1/0.0008 - 1) = 12.49; one false alarm among 3
    # nontargets costs 12.49/3 > the 1/1 gained by the tied target: accepting nothing (0) is best
    scores = np.array([[0.5, 0.5, 0.1, 0.1]])
    targets = np.array([[1, 0, 0, 0]])
    assert max_term_weighted_value(scores, targets) == (0.0, float("inf"))
    # without the tie the target alone is accepted: TWV 1
    assert max_term_weighted_value(np.array([[0.6, 0.5, 0.1, 0.1]]), targets) == (1.0, 0.6)
    with pytest.raises(ValueError, match="no query occurs"):
        max_term_weighted_value(scores, np.zeros_like(targets))
