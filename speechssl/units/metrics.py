"""Unit quality against phone alignments, as defined in the HuBERT paper.

Hsu et al., "HuBERT" (2021), section IV.C: over all frames, take the joint
distribution p(y, z) of phone y and unit z. Then

    phone purity   = E_z[ max_y p(y | z) ]   (how pure each unit is in phones)
    cluster purity = E_y[ max_z p(z | y) ]   (how concentrated each phone is in one unit)
    PNMI           = I(y; z) / H(y)          (phone-normalised mutual information)

Phones and units must be at the same frame rate (e.g. 50 Hz for HuBERT
labels: `speechssl.data.alignments` turns a phone_ctm into frame labels at any
frame shift). Frame counts of the two may differ by `tolerance` frames (one by
default: the two sides round the last partial frame differently); the longer
one is trimmed. A larger difference means the rates differ and is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnitQuality:
    """Scores of one label set; `num_*` say what they were computed over."""

    pnmi: float
    phone_purity: float
    cluster_purity: float
    num_frames: int
    num_utts: int
    num_phones: int  # distinct phones seen
    num_units: int  # distinct units seen
    num_trimmed: int = 0  # utterances whose lengths differed by <= tolerance

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def quality_from_counts(counts: np.ndarray) -> tuple[float, float, float]:
    """(PNMI, phone purity, cluster purity) from a (phones, units) count matrix.

    PNMI is NaN when there is a single phone (H(y) = 0: nothing to explain).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2:
        raise ValueError(f"counts must be a (phones, units) matrix, found shape {counts.shape}")
    total = counts.sum()
    if total <= 0:
        raise ValueError("no frames to score: the (phone, unit) counts are all zero")
    p_yz = counts / total  # (P, U)
    p_y = p_yz.sum(axis=1, keepdims=True)  # (P, 1)
    p_z = p_yz.sum(axis=0, keepdims=True)  # (1, U)
    nz = p_yz > 0
    mutual_info = float(np.sum(p_yz[nz] * np.log(p_yz[nz] / (p_y @ p_z)[nz])))
    p_y_nz = p_y[p_y > 0]
    phone_entropy = float(-np.sum(p_y_nz * np.log(p_y_nz)))
    pnmi = mutual_info / phone_entropy if phone_entropy > 0 else float("nan")
    # sum_z p(z) max_y p(y|z) = sum_z max_y p(y, z); likewise for cluster purity.
    phone_purity = float(p_yz.max(axis=0).sum())
    cluster_purity = float(p_yz.max(axis=1).sum())
    return pnmi, phone_purity, cluster_purity


def align_frames(
    phones: Sequence[Hashable], units: Sequence[int], *, utt_id: str, tolerance: int = 1
) -> tuple[Sequence[Hashable], Sequence[int]]:
    """Trim the longer of two frame sequences by at most `tolerance` frames."""
    diff = len(phones) - len(units)
    if abs(diff) > tolerance:
        raise ValueError(
            f"utterance '{utt_id}': {len(units)} unit labels but {len(phones)} phone frames "
            f"(differ by more than {tolerance}); are both at the same frame rate?"
        )
    n = min(len(phones), len(units))
    return phones[:n], units[:n]


def joint_counts(
    pairs: Sequence[tuple[Sequence[Hashable], Sequence[int]]],
) -> tuple[np.ndarray, list[Hashable], list[int]]:
    """(phones, units) count matrix over aligned frame pairs, plus its row/column labels."""
    phone_frames = [p for ph, _ in pairs for p in ph]
    unit_frames = np.fromiter((u for _, us in pairs for u in us), dtype=np.int64)
    if not phone_frames:
        raise ValueError("no frames to score")
    phone_names, phone_idx = np.unique(
        np.asarray(phone_frames, dtype=object).astype(str), return_inverse=True
    )
    unit_names, unit_idx = np.unique(unit_frames, return_inverse=True)
    counts = np.zeros((len(phone_names), len(unit_names)), dtype=np.int64)  # (P, U)
    np.add.at(counts, (phone_idx.ravel(), unit_idx.ravel()), 1)
    return counts, phone_names.tolist(), unit_names.tolist()


def unit_quality(
    phones: Mapping[str, Sequence[Hashable]],
    units: Mapping[str, Sequence[int]],
    *,
    tolerance: int = 1,
) -> UnitQuality:
    """Score `units` (utt -> unit per frame) against `phones` (utt -> phone per frame).

    Only utterances present in both are scored (the others are counted in the
    log); every utterance whose lengths differ by more than `tolerance` is
    listed in one error.
    """
    common = [u for u in units if u in phones]
    if not common:
        raise ValueError(
            f"no utterance has both unit labels ({len(units)} utts) and phone alignments ({len(phones)} utts)"
        )
    if len(common) < len(units):
        logger.warning(
            "%d of %d labelled utterances have no alignment; scoring the rest",
            len(units) - len(common),
            len(units),
        )
    pairs, errors, trimmed = [], [], 0
    for utt in common:
        try:
            ph, un = align_frames(phones[utt], units[utt], utt_id=utt, tolerance=tolerance)
        except ValueError as err:
            errors.append(str(err))
            continue
        trimmed += len(ph) != len(phones[utt]) or len(un) != len(units[utt])
        pairs.append((ph, un))
    if errors:
        shown = "\n  ".join(errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise ValueError(f"{len(errors)} utterance(s) have mismatched lengths:\n  {shown}{more}")
    counts, phone_names, unit_names = joint_counts(pairs)
    pnmi, phone_purity, cluster_purity = quality_from_counts(counts)
    return UnitQuality(
        pnmi=pnmi,
        phone_purity=phone_purity,
        cluster_purity=cluster_purity,
        num_frames=int(counts.sum()),
        num_utts=len(pairs),
        num_phones=len(phone_names),
        num_units=len(unit_names),
        num_trimmed=int(trimmed),
    )
