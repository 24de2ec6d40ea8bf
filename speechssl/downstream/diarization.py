"""Speaker diarization pieces for SUPERB's SD task: RTTM files, frame-level speaker activity
targets, the permutation-invariant loss, and turns decoded from activity.

SUPERB's SD (s3prl's diarization expert, after Hitachi's EEND) predicts, for every upstream frame,
an independent activity logit per speaker slot and trains with binary cross-entropy under the
speaker permutation that costs least per recording (PIT); decoding thresholds the sigmoid at 0.5
after a median filter, and turns are scored with DER (`metrics.diarization_counts`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from speechssl.downstream.metrics import Turn
from speechssl.errors import SpeechSSLError


class RTTMError(SpeechSSLError, ValueError):
    """A malformed RTTM line (file and line named)."""


def read_rttm(path: Path) -> dict[str, list[Turn]]:
    """recording -> turns of NIST RTTM `SPEAKER <reco> <chan> <start> <dur> <NA> <NA> <spk> ...` lines
    (other record types are skipped)."""
    turns: dict[str, list[Turn]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] != "SPEAKER":
            continue
        if len(fields) < 8:
            raise RTTMError(
                f"{path}:{number}: an RTTM SPEAKER line has 8 or more fields, found {len(fields)}"
            )
        try:
            start, duration = float(fields[3]), float(fields[4])
        except ValueError:
            raise RTTMError(
                f"{path}:{number}: start and duration must be numbers: {line.strip()!r}"
            ) from None
        if start < 0 or duration <= 0:
            raise RTTMError(f"{path}:{number}: start must be >= 0 and duration > 0: {line.strip()!r}")
        turns.setdefault(fields[1], []).append(Turn(fields[7], start, start + duration))
    return turns


def format_rttm(turns: Mapping[str, Sequence[Turn]]) -> str:
    """RTTM text of recording -> turns, sorted by recording and start."""
    lines = []
    for reco in sorted(turns):
        for turn in sorted(turns[reco], key=lambda t: (t.start, t.speaker)):
            span = f"{turn.start:.3f} {turn.end - turn.start:.3f}"
            lines.append(f"SPEAKER {reco} 1 {span} <NA> <NA> {turn.speaker} <NA> <NA>")
    return "".join(line + "\n" for line in lines)


def activity_targets(
    turns: Sequence[Turn], speakers: Sequence[str], num_frames: int, frame_shift: float
) -> Tensor:
    """(num_frames, len(speakers)) 0/1 activity: frame t (centred at (t + 0.5) * frame_shift) is
    active for a speaker when one of the speaker's turns covers its centre."""
    centres = (torch.arange(num_frames, dtype=torch.float64) + 0.5) * frame_shift
    targets = torch.zeros(num_frames, len(speakers))
    column = {speaker: k for k, speaker in enumerate(speakers)}
    for turn in turns:
        if turn.speaker not in column:
            raise ValueError(f"speaker {turn.speaker} is not one of the {len(speakers)} speaker slots")
        targets[(centres >= turn.start) & (centres < turn.end), column[turn.speaker]] = 1.0
    return targets


def pit_bce_loss(logits: Tensor, targets: Tensor, lengths: Tensor) -> tuple[Tensor, list[tuple[int, ...]]]:
    """Permutation-invariant BCE: for each recording the speaker-column permutation of `targets`
    with the least summed (over valid frames) speaker-mean BCE; the loss is the sum of those
    minima over the total number of valid frames. logits, targets: (B, T, S); lengths: (B,).
    Returns the loss and each recording's chosen permutation (targets[..., perm] matches logits)."""
    batch, frames, slots = logits.shape
    if targets.shape != logits.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    valid = (torch.arange(frames, device=logits.device)[None, :] < lengths[:, None]).to(logits.dtype)
    perms = list(itertools.permutations(range(slots)))
    per_perm = torch.stack(
        [
            (
                F.binary_cross_entropy_with_logits(logits, targets[..., list(p)], reduction="none").mean(-1)
                * valid
            ).sum(1)
            for p in perms
        ],
        dim=1,
    )  # (B, permutations)
    best, index = per_perm.min(dim=1)
    return best.sum() / lengths.sum().clamp(min=1), [perms[k] for k in index.tolist()]


def median_filter(activity: np.ndarray, width: int) -> np.ndarray:
    """Median over `width` (odd) frames along time, per speaker; the ends use shrunken windows."""
    if width <= 1:
        return activity
    if width % 2 == 0:
        raise ValueError(f"median filter width must be odd, found {width}")
    half = width // 2
    out = np.empty_like(activity)
    for t in range(len(activity)):
        out[t] = np.median(activity[max(0, t - half) : t + half + 1], axis=0)
    return out


def decode_turns(
    probs: np.ndarray,
    speakers: Sequence[str],
    frame_shift: float,
    *,
    threshold: float = 0.5,
    median: int = 11,
) -> list[Turn]:
    """Turns of (frames, slots) activity probabilities: thresholded, median-filtered, and each run of
    active frames a turn from its first frame's start to its last frame's end."""
    active = median_filter((np.asarray(probs) > threshold).astype(np.float64), median) > 0.5
    turns = []
    for k, speaker in enumerate(speakers):
        column = np.concatenate([[False], active[:, k], [False]])
        edges = np.flatnonzero(column[1:] != column[:-1])
        for start, end in zip(edges[::2], edges[1::2]):
            turns.append(Turn(speaker, start * frame_shift, end * frame_shift))
    return sorted(turns, key=lambda t: (t.start, t.speaker))
