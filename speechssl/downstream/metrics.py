"""Downstream metrics: error rates by edit distance, accuracy, EER and minDCF, slot filling, DER, MTWV.

EER and minDCF follow the SUPERB ASV protocol (and Kaldi's compute_min_dcf.py):
minDCF with p_target 0.01, c_miss 1, c_fa 1, normalised by the cost of the
best trivial system, min(c_miss * p_target, c_fa * (1 - p_target)).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from speechssl.data.rttm import Turn


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


# --- slot filling (SUPERB SF: CTC over transcripts with slot tags) -------------------------
SLOT_SPAN = re.compile(r"B-(\S+) (.+?) E-\1(?= |$)")
SLOT_TAG = re.compile(r"(?:^| )[BE]-\S+(?= |$)")


def parse_slots(tagged: str) -> tuple[str, dict[str, list[str]]]:
    """(plain transcript, slot type -> values) of a SUPERB slot-filling sequence, where a slot is
    written `B-<type> <value words> E-<type>` inside the transcript (s3prl's SNIPS format).
    Unclosed or mismatched tags are dropped from the text and yield no slot."""
    text = " ".join(tagged.split())
    slots: dict[str, list[str]] = {}
    for slot_type, value in SLOT_SPAN.findall(text):
        slots.setdefault(slot_type, []).append(" ".join(SLOT_TAG.sub("", value).split()))
    return " ".join(SLOT_TAG.sub("", text).split()), slots


def slot_type_f1(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """SUPERB's slot-type F1: per utterance the F1 of the sets of slot types (precision: hyp types
    found in ref; recall: ref types found in hyp; 1 when both have none, 0 when only one has),
    averaged over utterances."""
    if len(refs) != len(hyps) or not refs:
        raise ValueError(
            f"slot F1 needs equally many (>0) references and hypotheses, found {len(refs)}, {len(hyps)}"
        )
    total = 0.0
    for ref, hyp in zip(refs, hyps):
        ref_types, hyp_types = set(parse_slots(ref)[1]), set(parse_slots(hyp)[1])
        if not ref_types or not hyp_types:
            total += float(not ref_types and not hyp_types)
            continue
        common = len(ref_types & hyp_types)
        precision, recall = common / len(hyp_types), common / len(ref_types)
        total += 2 * precision * recall / (precision + recall) if common else 0.0
    return total / len(refs)


def slot_value_cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """SUPERB's slot-value CER: every reference slot value is paired with the hypothesis value of
    the same type that has the lowest CER against it (the empty string when the hypothesis has no
    slot of that type); corpus CER over the pairs, characters as written (spaces included)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    pairs: list[tuple[str, str]] = []
    for ref, hyp in zip(refs, hyps):
        ref_slots, hyp_slots = parse_slots(ref)[1], parse_slots(hyp)[1]
        for slot_type, values in ref_slots.items():
            candidates = hyp_slots.get(slot_type, [""])
            for value in values:
                best = min(candidates, key=lambda h, v=value: edit_counts(list(v), list(h)).errors)
                pairs.append((value, best))
    if not pairs:
        raise ValueError("references hold no slots; the slot-value CER is undefined")
    return error_rate([list(r) for r, _ in pairs], [list(h) for _, h in pairs])


# --- speaker diarization (DER with a no-score collar, as md-eval) --------------------------
@dataclass(frozen=True)
class DiarizationCounts:
    """Seconds of scored reference speaker time and of each error (summed over speakers, so
    overlapped speech counts once per speaker, as md-eval scores it)."""

    scored: float
    missed: float
    false_alarm: float
    confusion: float

    @property
    def der(self) -> float:
        if self.scored <= 0:
            raise ValueError("no scored reference speech; DER is undefined")
        return (self.missed + self.false_alarm + self.confusion) / self.scored

    def __add__(self, other: DiarizationCounts) -> DiarizationCounts:
        return DiarizationCounts(
            self.scored + other.scored,
            self.missed + other.missed,
            self.false_alarm + other.false_alarm,
            self.confusion + other.confusion,
        )


def _active(turns: Sequence[Turn], t: float) -> set[str]:
    return {turn.speaker for turn in turns if turn.start <= t < turn.end}


def diarization_counts(
    reference: Sequence[Turn], hypothesis: Sequence[Turn], *, collar: float = 0.25
) -> DiarizationCounts:
    """Errors of one recording. Time within `collar` seconds of any reference turn's start or end
    is not scored; hypothesis speakers are mapped one-to-one onto reference speakers so that the
    mapped speakers overlap the most scored time (Hungarian assignment), and the confusion is the
    scored time where fewer mapped speakers agree than min(#ref, #hyp) active speakers."""
    from scipy.optimize import linear_sum_assignment

    if collar < 0:
        raise ValueError(f"collar must be >= 0, found {collar}")
    for turn in (*reference, *hypothesis):
        if not turn.end > turn.start >= 0:
            raise ValueError(f"turn of speaker {turn.speaker} has start {turn.start}, end {turn.end}")
    edges = [x for turn in reference for x in (turn.start, turn.end)]
    no_score = [(max(0.0, x - collar), x + collar) for x in edges] if collar > 0 else []
    cuts = sorted(
        {0.0, *edges, *(x for turn in hypothesis for x in (turn.start, turn.end))}
        | {x for span in no_score for x in span}
    )
    pieces = []  # (duration, ref speakers, hyp speakers) of every scored elementary interval
    for t0, t1 in zip(cuts, cuts[1:]):
        mid = (t0 + t1) / 2
        if any(a <= mid < b for a, b in no_score):
            continue
        pieces.append((t1 - t0, _active(reference, mid), _active(hypothesis, mid)))
    ref_speakers = sorted({t.speaker for t in reference})
    hyp_speakers = sorted({t.speaker for t in hypothesis})
    overlap = np.zeros((len(ref_speakers), len(hyp_speakers)))
    for duration, ref, hyp in pieces:
        for r in ref:
            for h in hyp:
                overlap[ref_speakers.index(r), hyp_speakers.index(h)] += duration
    rows, cols = linear_sum_assignment(overlap, maximize=True) if overlap.size else ([], [])
    mapping = {hyp_speakers[c]: ref_speakers[r] for r, c in zip(rows, cols)}
    scored = missed = false_alarm = confusion = 0.0
    for duration, ref, hyp in pieces:
        n_ref, n_hyp = len(ref), len(hyp)
        agree = sum(1 for h in hyp if mapping.get(h) in ref)
        scored += duration * n_ref
        missed += duration * max(0, n_ref - n_hyp)
        false_alarm += duration * max(0, n_hyp - n_ref)
        confusion += duration * (min(n_ref, n_hyp) - agree)
    return DiarizationCounts(scored, missed, false_alarm, confusion)


# --- query-by-example spoken term detection (MTWV) -----------------------------------------
def max_term_weighted_value(
    scores: np.ndarray,
    targets: np.ndarray,
    *,
    p_target: float = 0.0008,
    c_miss: float = 100.0,
    c_fa: float = 1.0,
) -> tuple[float, float]:
    """(MTWV, its threshold) of query x document detection scores (`targets[q, d]`: query q occurs in
    document d). TWV(t) = 1 - mean over queries with a target of P_miss(q, t) + beta P_fa(q, t),
    beta = (c_fa / c_miss) (1 / p_target - 1); one threshold for all queries, the best one.
    Defaults: MediaEval QUESST 2014 / SWS 2013 (p_target 0.0008, c_miss 100, c_fa 1: beta 12.49),
    SUPERB's QbE scoring. Accepting nothing scores 0, so MTWV >= 0."""
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets, dtype=bool)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(
            f"scores and targets must be equal 2-d arrays, found {scores.shape}, {targets.shape}"
        )
    if not 0 < p_target < 1:
        raise ValueError(f"p_target must be in (0, 1), found {p_target}")
    beta = (c_fa / c_miss) * (1 / p_target - 1)
    num_true = targets.sum(axis=1)
    keep = num_true > 0  # queries without an occurrence are not scored (NIST)
    if not keep.any():
        raise ValueError("no query occurs in any document; TWV is undefined")
    scores, targets, num_true = scores[keep], targets[keep], num_true[keep]
    num_docs = scores.shape[1]
    # accepting one trial changes the summed miss rate (target) or the summed false-alarm rate
    per_trial = np.where(
        targets, -1.0 / num_true[:, None], beta / np.maximum(num_docs - num_true, 1)[:, None]
    )
    flat_scores, flat_gain = scores.ravel(), per_trial.ravel()
    order = np.argsort(-flat_scores, kind="stable")
    sorted_scores, cost = flat_scores[order], np.cumsum(flat_gain[order])
    ends = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))  # no tie is split
    twv = -cost[ends] / len(num_true)  # 1 - (Q + cost) / Q
    best = int(np.argmax(twv))
    if twv[best] <= 0:
        return 0.0, float("inf")
    return float(twv[best]), float(sorted_scores[ends[best]])
