"""Speaker diarization pieces for SUPERB's SD task: RTTM files, frame-level speaker activity
targets, the permutation-invariant loss, and turns decoded from activity.

SUPERB's SD (s3prl's diarization expert, after Hitachi's EEND) predicts, for every upstream frame,
an independent activity logit per speaker slot and trains with binary cross-entropy under the
speaker permutation that costs least per recording (PIT); decoding thresholds the sigmoid at 0.5
and median-filters the 0/1 activity, and turns are scored with DER (`metrics.diarization_counts`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from speechssl.data.kaldi import read_table_lines
from speechssl.data.rttm import Turn, rttm_lines
from speechssl.errors import SpeechSSLError


def activity_targets(
    turns: Sequence[Turn], speakers: Sequence[str], num_frames: int, frame_shift: float
) -> Tensor:
    """(num_frames, len(speakers)) 0/1 activity: frame t (centred at (t + 0.5) * frame_shift) is
    active for a speaker when one of the speaker's turns [start, end) covers its centre. Times are
    compared in whole microseconds, so an edge on a frame centre decides the same way whether it was
    written as an end (segments) or as start + duration (RTTM, whose float sum may pass it by 1e-15)."""
    centres = torch.round((torch.arange(num_frames, dtype=torch.float64) + 0.5) * frame_shift * 1e6)
    targets = torch.zeros(num_frames, len(speakers))
    column = {speaker: k for k, speaker in enumerate(speakers)}
    for turn in turns:
        if turn.speaker not in column:
            raise ValueError(f"speaker {turn.speaker} is not one of the {len(speakers)} speaker slots")
        start, end = round(turn.start * 1e6), round(turn.end * 1e6)  # microseconds
        targets[(centres >= start) & (centres < end), column[turn.speaker]] = 1.0
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
    """Median over `width` (odd) frames along time, per speaker, zero-padded at the ends: s3prl's
    make_rttm (scipy.signal.medfilt with kernel (width, 1))."""
    if width <= 1:
        return activity
    if width % 2 == 0:
        raise ValueError(f"median filter width must be odd, found {width}")
    from scipy.signal import medfilt

    return medfilt(np.asarray(activity, dtype=np.float64), (width, 1))


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


# --- a diarization data dir: recordings, their turns and the checks of SD's input ---------------
DURATION_TOLERANCE = 0.01  # seconds a turn may pass its recording's reco2dur (rounding of the files)


class DiarizationDataError(SpeechSSLError, ValueError):
    """A diarization data dir whose files disagree (file and line named)."""


@dataclass(frozen=True)
class Recording:
    """One recording of a diarization split: its length and its speakers' turns (from `segments`
    and `utt2spk`)."""

    reco: str
    seconds: float
    turns: tuple[Turn, ...]

    @property
    def speakers(self) -> list[str]:
        """The recording's speakers in byte order: speaker slot k of its targets is speakers[k]."""
        return sorted({t.speaker for t in self.turns}, key=str.encode)


DIAR_FILES = ("wav.scp", "segments", "utt2spk", "reco2dur", "rttm")


def load_recordings(split_dir: Path) -> dict[str, Recording]:
    """The recordings of `split_dir` (wav.scp keys) with their turns, checked in seconds: every
    segment names a recording of wav.scp and lies inside its reco2dur, every turn has a speaker in
    utt2spk, and `rttm` names the same speakers per recording as segments/utt2spk, within reco2dur.
    Errors are one line naming file:line."""
    split_dir = Path(split_dir)
    for name in DIAR_FILES:
        if not (split_dir / name).is_file():
            raise FileNotFoundError(
                f"{split_dir / name} does not exist (a diarization split has {', '.join(DIAR_FILES)})"
            )
    recos = [key for _, key, _ in read_table_lines(split_dir / "wav.scp")]
    seconds: dict[str, float] = {}
    path = split_dir / "reco2dur"
    for line, reco, value in read_table_lines(path):
        try:
            seconds[reco] = float(value)
        except ValueError:
            raise DiarizationDataError(
                f"{path}:{line}: duration of '{reco}' is not a number: {value!r}"
            ) from None
        if not (math.isfinite(seconds[reco]) and seconds[reco] > 0):
            raise DiarizationDataError(f"{path}:{line}: duration of '{reco}' must be > 0 s, found {value}")
    for reco in recos:
        if reco not in seconds:
            raise DiarizationDataError(
                f"{path}: recording '{reco}' of {split_dir / 'wav.scp'} has no duration"
            )
    utt2spk = {utt: spk.strip() for _, utt, spk in read_table_lines(split_dir / "utt2spk")}
    turns: dict[str, list[Turn]] = {reco: [] for reco in recos}
    path = split_dir / "segments"
    for line, utt, value in read_table_lines(path):
        parts = value.split()
        try:
            reco, start, end = parts[0], float(parts[1]), float(parts[2])
        except (IndexError, ValueError):
            raise DiarizationDataError(
                f"{path}:{line}: expected 'utt reco start end', found {value!r}"
            ) from None
        where = f"{path}:{line}: turn '{utt}'"
        if reco not in turns:
            raise DiarizationDataError(f"{where} names recording '{reco}', which is not in wav.scp")
        if not 0 <= start < end <= seconds[reco] + DURATION_TOLERANCE:
            raise DiarizationDataError(
                f"{where} spans {start}-{end} s, outside recording '{reco}' (0-{seconds[reco]} s in reco2dur)"
            )
        if utt not in utt2spk:
            raise DiarizationDataError(f"{where} has no speaker in {split_dir / 'utt2spk'}")
        turns[reco].append(Turn(utt2spk[utt], start, end))
    recordings = {reco: Recording(reco, seconds[reco], tuple(turns[reco])) for reco in recos}
    _check_rttm(split_dir / "rttm", recordings)
    return recordings


def _check_rttm(path: Path, recordings: Mapping[str, Recording]) -> None:
    """The reference RTTM agrees with segments/utt2spk: known recordings, turns inside reco2dur,
    and per recording the same set of speakers."""
    speakers: dict[str, set[str]] = {}
    for line, reco, turn in rttm_lines(path):
        if reco not in recordings:
            raise DiarizationDataError(f"{path}:{line}: recording '{reco}' is not in wav.scp")
        rec = recordings[reco]
        if turn.end > rec.seconds + DURATION_TOLERANCE:
            raise DiarizationDataError(
                f"{path}:{line}: turn of '{turn.speaker}' ends at {turn.end:.3f} s, after recording "
                f"'{reco}' ({rec.seconds} s in reco2dur)"
            )
        if turn.speaker not in rec.speakers:
            said = ", ".join(rec.speakers) or "none"
            raise DiarizationDataError(
                f"{path}:{line}: speaker '{turn.speaker}' does not speak in recording '{reco}' by "
                f"segments/utt2spk (speakers: {said})"
            )
        speakers.setdefault(reco, set()).add(turn.speaker)
    for reco, rec in recordings.items():
        missing = sorted(set(rec.speakers) - speakers.get(reco, set()))
        if missing:
            raise DiarizationDataError(
                f"{path}: speaker '{missing[0]}' of recording '{reco}' (segments/utt2spk) has no RTTM turn"
            )


def recording_targets(recording: Recording, num_slots: int, frame_shift: float) -> Tensor:
    """(frames, num_slots) 0/1 activity of a whole recording, frames = floor(seconds / frame_shift):
    slot k is the recording's k-th speaker (`Recording.speakers`), unused slots stay 0."""
    speakers = recording.speakers
    if len(speakers) > num_slots:
        raise ValueError(
            f"recording '{recording.reco}' has {len(speakers)} speakers, more than {num_slots} slots"
        )
    num_frames = max(1, math.floor(recording.seconds / frame_shift + 1e-9))
    targets = torch.zeros(num_frames, num_slots)
    targets[:, : len(speakers)] = activity_targets(recording.turns, speakers, num_frames, frame_shift)
    return targets
