"""Unit label files (`uttid u1 u2 ...`, one line per utterance): parsing and checks.

The one place a units line is turned into integers: `read_labels` for a whole
file (k-means output, the pretraining start-up checks, unit metrics) and
`parse_units` as a dataset target transform (`AudioDataset(target_transforms=
{"units": parse_units})`; the data layer takes the parser as an argument and
never imports this module). `check_unit_ids` is the range check every
pretraining run makes before its first step, `check_label_lengths` the frame-count check.

Labels are produced at the feature frame rate (e.g. MFCC 100 Hz taken every 2nd frame, or an
upstream's 50 Hz output) while the model computes its own frame count from the audio length. A
difference of one frame (`tolerance=1`) is accepted because conventions for the last partial frame
differ between feature extractors (Kaldi's snip_edges=False, resampled audio, labels made by another
toolkit), and the trainer trims/pads that one frame. Anything larger means labels for a different
audio file or frame rate, which would silently misalign every target.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from speechssl.data.kaldi import read_table_lines
from speechssl.errors import SpeechSSLError


def parse_unit_ids(value: str) -> list[int]:
    """'12 7 7 3' -> [12, 7, 7, 3]; a token that is not an integer is a ValueError naming it."""
    try:
        return [int(tok) for tok in value.split()]
    except ValueError:
        bad = next(tok for tok in value.split() if not tok.lstrip("-").isdigit())
        raise ValueError(f"expected integer units, found '{bad}'") from None


def parse_units(value: str) -> torch.Tensor:
    """'12 7 7 3' -> LongTensor [4]: discrete units (or alignments) at the frame rate."""
    return torch.tensor(parse_unit_ids(value), dtype=torch.long)


def read_labels(path: str | Path) -> dict[str, list[int]]:
    """Read a `uttid u1 u2 ...` labels file; a non-integer unit is an error naming file:line."""
    labels: dict[str, list[int]] = {}
    for lineno, utt, value in read_table_lines(path):
        if utt in labels:
            raise ValueError(f"{path}:{lineno}: duplicate utterance '{utt}'")
        try:
            labels[utt] = parse_unit_ids(value)
        except ValueError:
            raise ValueError(
                f"{path}:{lineno}: utterance '{utt}': units must be integers, found '{value[:40]}'"
            ) from None
    return labels


def check_unit_ids(labels: Mapping[str, Sequence[int]], num_classes: int, *, where: str | Path) -> None:
    """Every unit id must be in 0..num_classes-1 (an id past the classifier is a CUDA assert
    hours later); the error names `where` and the first utterances that break it."""
    bad = [utt for utt, seq in labels.items() if seq and (max(seq) >= num_classes or min(seq) < 0)]
    if bad:
        raise ValueError(f"{where}: unit ids outside 0..{num_classes - 1} in {', '.join(bad[:5])}")


class LabelLengthError(SpeechSSLError, ValueError):
    """Labels whose frame count does not match the model's for the audio."""


def check_label_lengths(
    labels: Mapping[str, Sequence[int]],
    num_samples: Mapping[str, int],
    frames_for_samples: Callable[[int], int],
    tolerance: int = 1,
) -> None:
    """Raise LabelLengthError listing every utterance whose label count differs from
    `frames_for_samples(num_samples[utt])` by more than `tolerance`, or that has
    no labels at all."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, found {tolerance}")
    problems = []
    for utt, samples in num_samples.items():
        if utt not in labels:
            problems.append(f"{utt}: no labels ({samples} samples)")
            continue
        expected = int(frames_for_samples(int(samples)))
        found = len(labels[utt])
        if abs(found - expected) > tolerance:
            problems.append(f"{utt}: {found} labels, model gives {expected} frames for {samples} samples")
    if problems:
        shown = "\n  ".join(problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        raise LabelLengthError(
            f"{len(problems)} of {len(num_samples)} utterance(s) have label counts that differ from the "
            f"model's frame count by more than {tolerance}:\n  {shown}{more}"
        )
