"""Metrics on hand-made cases with known answers."""

from __future__ import annotations

import pytest

from speechssl.downstream import metrics


def test_edit_counts_classify_errors():
    # ref a b c d ; hyp a x c d e : one substitution (b->x), one insertion (e)
    c = metrics.edit_counts("a b c d".split(), "a x c d e".split())
    assert (c.substitutions, c.deletions, c.insertions, c.ref_length) == (1, 0, 1, 4)
    c = metrics.edit_counts("a b c d".split(), "a d".split())
    assert (c.substitutions, c.deletions, c.insertions) == (0, 2, 0)
    assert metrics.edit_counts([], ["a"]).insertions == 1


def test_wer_is_corpus_level_with_insertions_and_deletions():
    refs = ["the cat sat", "on the mat"]
    hyps = ["the cat sat down", "the mat"]  # 1 insertion + 1 deletion over 6 words
    assert metrics.word_error_rate(refs, hyps) == pytest.approx(2 / 6)
    assert metrics.word_error_rate(["a b"], ["c d e f"]) == pytest.approx(2.0)  # 2 subs + 2 ins over 2 words


def test_per_on_phone_lists():
    assert metrics.phone_error_rate([["k", "ae", "t"]], [["k", "ah", "t"]]) == pytest.approx(1 / 3)
    assert metrics.phone_error_rate([["k", "ae", "t"]], [["k", "ae", "t"]]) == 0.0
    with pytest.raises(ValueError, match="no tokens"):
        metrics.phone_error_rate([[]], [["a"]])


def test_accuracy():
    assert metrics.accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert metrics.accuracy([(1, 2), (3, 4)], [(1, 2), (3, 0)]) == 0.5  # IC: every slot must match
    with pytest.raises(ValueError, match="equally many"):
        metrics.accuracy([1], [1, 2])


def test_eer_separable_and_overlapping():
    assert metrics.equal_error_rate([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == 0.0
    assert metrics.equal_error_rate([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 1.0
    # one target (0.1) below one nontarget (0.7): at threshold 0.5 miss = fa = 1/4
    scores = [0.1, 0.6, 0.8, 0.9, 0.2, 0.3, 0.4, 0.7]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    assert metrics.equal_error_rate(scores, labels) == pytest.approx(0.25)
    # no threshold gives miss == fa: (miss 1/2, fa 1/3) above 0.5, (miss 0, fa 1/3) below it;
    # the linear interpolation meets the diagonal at 1/3
    assert metrics.equal_error_rate([0.9, 0.5, 0.6, 0.1, 0.2], [1, 1, 0, 0, 0]) == pytest.approx(1 / 3)


def test_min_dcf_hand_case():
    scores = [0.1, 0.6, 0.8, 0.9, 0.2, 0.3, 0.4, 0.7]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    # p_target 0.01: normalised cost = p_miss + 99 p_fa; best threshold just above 0.7: p_miss 2/4, p_fa 0
    assert metrics.min_dcf(scores, labels) == pytest.approx(0.5)
    # p_target 0.5: cost = (p_miss + p_fa) / 1 ... normalised by 0.5 -> p_miss + p_fa; best 1/4 + 1/4
    assert metrics.min_dcf(scores, labels, p_target=0.5) == pytest.approx(0.5)
    assert metrics.min_dcf([0.9, 0.1], [1, 0]) == 0.0


def test_eer_needs_both_kinds_of_trials():
    with pytest.raises(ValueError, match="target and nontarget"):
        metrics.equal_error_rate([0.1, 0.2], [1, 1])
