"""NIST RTTM speaker turns: the reference of the diarization task, written by `speechssl synth`,
read and written by the sd task, and carried by the data tools with the recordings they keep.

A line is `SPEAKER <reco> <channel> <start s> <duration s> <NA> <NA> <speaker> <NA> <NA>`; other
record types are skipped. Files are sorted by recording (byte order), start and speaker.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from speechssl.data.kaldi import read_lines
from speechssl.errors import SpeechSSLError


@dataclass(frozen=True)
class Turn:
    """One speaker's speech from `start` to `end` seconds of a recording."""

    speaker: str
    start: float
    end: float


class RTTMError(SpeechSSLError, ValueError):
    """A malformed RTTM line (file and line named)."""


def rttm_lines(path: str | Path) -> list[tuple[int, str, Turn]]:
    """(line number, recording, turn) of each SPEAKER line, so that checks can name the line."""
    rows = []
    for number, line in enumerate(read_lines(path), 1):
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
        if not (math.isfinite(start) and math.isfinite(duration)) or start < 0 or duration <= 0:
            raise RTTMError(f"{path}:{number}: start must be >= 0 and duration > 0: {line.strip()!r}")
        rows.append((number, fields[1], Turn(fields[7], start, start + duration)))
    return rows


def read_rttm(path: str | Path) -> dict[str, list[Turn]]:
    """recording -> its turns, in file order."""
    turns: dict[str, list[Turn]] = {}
    for _, reco, turn in rttm_lines(path):
        turns.setdefault(reco, []).append(turn)
    return turns


def format_rttm(turns: Mapping[str, Sequence[Turn]]) -> str:
    """RTTM text of recording -> turns (millisecond precision), sorted by recording, start, speaker."""
    rows = sorted(
        ((reco, turn) for reco, items in turns.items() for turn in items),
        key=lambda row: (row[0].encode(), row[1].start, row[1].speaker.encode()),
    )
    return "".join(
        f"SPEAKER {reco} 1 {t.start:.3f} {t.end - t.start:.3f} <NA> <NA> {t.speaker} <NA> <NA>\n"
        for reco, t in rows
    )


def derive_rttm(
    path: str | Path,
    keep: Callable[[str], str | None],
    *,
    scale: float = 1.0,
    speaker: Callable[[str], str] = str,
) -> str:
    """The RTTM of a derived data dir: the turns of recordings `keep(reco)` maps to a (new) id, their
    times multiplied by `scale` (speed perturbation) and speakers renamed by `speaker`."""
    kept: dict[str, list[Turn]] = {}
    for _, reco, turn in rttm_lines(path):
        new = keep(reco)
        if new is not None:
            kept.setdefault(new, []).append(Turn(speaker(turn.speaker), turn.start * scale, turn.end * scale))
    return format_rttm(kept)
