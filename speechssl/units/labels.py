"""Unit label files (`uttid u1 u2 ...`, one line per utterance): parsing and checks.

The one place a units line is turned into integers: `read_labels` for a whole
file (k-means output, the pretraining start-up checks, unit metrics) and
`parse_units` as a dataset target transform (`AudioDataset(target_transforms=
{"units": parse_units})`; the data layer takes the parser as an argument and
never imports this module). `check_unit_ids` is the range check every
pretraining run makes before its first step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from speechssl.data.kaldi import read_table_lines


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
