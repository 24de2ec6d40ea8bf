"""Downstream metrics: error rates by edit distance, accuracy, EER and minDCF.

EER and minDCF follow the SUPERB ASV protocol (and Kaldi's compute_min_dcf.py):
minDCF with p_target 0.01, c_miss 1, c_fa 1, normalised by the cost of the
best trivial system, min(c_miss * p_target, c_fa * (1 - p_target)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EditCounts:
    """Alignment counts of one or more hypotheses against their references."""

    substitutions: int
    deletions: int
    insertions: int
    ref_length: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def __add__(self, other: EditCounts) -> EditCounts:
        return EditCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.ref_length + other.ref_length,
        )


def edit_counts(ref: Sequence[str], hyp: Sequence[str]) -> EditCounts:
    """Levenshtein alignment of token sequences; ties prefer substitutions (as sclite)."""
    n, m = len(ref), len(hyp)
    # cost[i][j] = (errors, subs, dels, ins) to turn ref[:i] into hyp[:j]
    prev = [(j, 0, 0, j) for j in range(m + 1)]
    for i in range(1, n + 1):
        cur = [(i, 0, i, 0)]
        for j in range(1, m + 1):
            e, s, d, k = prev[j - 1]
            same = ref[i - 1] == hyp[j - 1]
            options = [
                (e + (not same), s + (not same), d, k),  # match / substitution
                (prev[j][0] + 1, prev[j][1], prev[j][2] + 1, prev[j][3]),  # deletion
                (cur[j - 1][0] + 1, cur[j - 1][1], cur[j - 1][2], cur[j - 1][3] + 1),  # insertion
            ]
            cur.append(min(options, key=lambda o: o[0]))
        prev = cur
    _, s, d, k = prev[m]
    return EditCounts(s, d, k, n)


def error_rate(refs: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]]) -> float:
    """Corpus error rate: total edits / total reference tokens (not a mean of per-utterance rates)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    total = EditCounts(0, 0, 0, 0)
    for ref, hyp in zip(refs, hyps):
        total = total + edit_counts(list(ref), list(hyp))
    if total.ref_length == 0:
        raise ValueError("references hold no tokens; the error rate is undefined")
    return total.errors / total.ref_length


def word_error_rate(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """WER over whitespace-separated words."""
    return error_rate([r.split() for r in refs], [h.split() for h in hyps])


def _characters(text: str, unk: str) -> list[str]:
    """The characters of the words, one space between words; `unk` (a decoded unknown
    character) is one character, not len(unk)."""
    out: list[str] = []
    for k, part in enumerate(" ".join(text.split()).split(unk)):
        if k:
            out.append(unk)
        out.extend(part)
    return out


def char_error_rate(refs: Sequence[str], hyps: Sequence[str], *, unk: str = "<unk>") -> float:
    """CER over the characters of the words, one space between words (spaces are characters;
    `unk`, the ASR task's unknown character, counts as one)."""
    return error_rate([_characters(r, unk) for r in refs], [_characters(h, unk) for h in hyps])


def phone_error_rate(refs: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]]) -> float:
    """PER over phone sequences (lists of phone symbols)."""
    return error_rate(refs, hyps)


def accuracy(labels: Sequence[object], predictions: Sequence[object]) -> float:
    """Fraction of exact matches (for IC, a prediction is the tuple of all slots)."""
    if len(labels) != len(predictions) or not labels:
        raise ValueError(
            f"accuracy needs equally many (>0) labels and predictions, found {len(labels)} "
            f"and {len(predictions)}"
        )
    return sum(a == b for a, b in zip(labels, predictions)) / len(labels)


def _error_curves(scores: Sequence[float], labels: Sequence[int | bool]) -> tuple[np.ndarray, np.ndarray]:
    """Miss and false-alarm rates for thresholds between consecutive sorted scores.

    Entry k accepts the k highest-scoring trials, k = 0..N (tied scores are
    never split, so no threshold separates equal scores)."""
    scores_arr = np.asarray(scores, dtype=np.float64)
    labels_arr = np.asarray(labels, dtype=bool)
    if scores_arr.shape != labels_arr.shape or scores_arr.ndim != 1:
        raise ValueError(
            f"scores and labels must be 1-d of equal length, found {scores_arr.shape} and {labels_arr.shape}"
        )
    num_target = int(labels_arr.sum())
    num_nontarget = len(labels_arr) - num_target
    if num_target == 0 or num_nontarget == 0:
        raise ValueError(
            f"EER/minDCF need target and nontarget trials, found {num_target} target and "
            f"{num_nontarget} nontarget"
        )
    order = np.argsort(-scores_arr, kind="stable")
    sorted_scores, sorted_labels = scores_arr[order], labels_arr[order]
    accepted_target = np.concatenate([[0], np.cumsum(sorted_labels)])
    accepted_nontarget = np.concatenate([[0], np.cumsum(~sorted_labels)])
    # keep only cuts between distinct scores (and the two ends)
    keep = np.concatenate([[True], sorted_scores[1:] != sorted_scores[:-1], [True]])
    p_miss = 1.0 - accepted_target[keep] / num_target
    p_fa = accepted_nontarget[keep] / num_nontarget
    return p_miss, p_fa


def equal_error_rate(scores: Sequence[float], labels: Sequence[int | bool]) -> float:
    """EER: where miss and false-alarm rates cross, linearly interpolated between
    the two operating points around the crossing. labels: 1/True = target trial."""
    p_miss, p_fa = _error_curves(scores, labels)
    diff = p_miss - p_fa  # decreasing from 1 to -1 as more trials are accepted
    k = int(np.argmax(diff <= 0))  # first point with miss <= false alarm
    if diff[k] == 0:
        return float(p_miss[k])
    # interpolate between points k-1 (miss > fa) and k (miss < fa)
    d0, d1 = diff[k - 1], diff[k]
    t = d0 / (d0 - d1)
    return float(p_miss[k - 1] + t * (p_miss[k] - p_miss[k - 1]))


def min_dcf(
    scores: Sequence[float],
    labels: Sequence[int | bool],
    *,
    p_target: float = 0.01,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> float:
    """Minimum normalised detection cost over all thresholds (SUPERB: 0.01, 1, 1)."""
    if not 0 < p_target < 1:
        raise ValueError(f"p_target must be in (0, 1), found {p_target}")
    p_miss, p_fa = _error_curves(scores, labels)
    cost = c_miss * p_target * p_miss + c_fa * (1 - p_target) * p_fa
    return float(cost.min() / min(c_miss * p_target, c_fa * (1 - p_target)))
