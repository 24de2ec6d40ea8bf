"""Phone alignments: Kaldi CTM files and per-frame labels at any frame shift.

`phone_ctm` holds one line per phone segment, `uttid channel start duration phone`
(seconds, channel 1), as Kaldi's `ali-to-phones --ctm-output` writes it. Unit
quality metrics (PNMI, purity) and phone probes need one label per model frame,
so `frame_labels` samples the segment under the centre of each frame: at 10 ms
(MFCC), 20 ms (wav2vec 2.0 / HuBERT) or 40 ms (a 2x downsampled student).
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from speechssl.data.kaldi import Problem, ProblemKind, check_regular_file, format_seconds, write_table

SILENCE_PHONE = "sil"
CTM_TOLERANCE_S = 1e-3  # gaps/overlaps below this are rounding in the file, not errors


@dataclass(frozen=True)
class PhoneSegment:
    """One aligned phone: start and duration in seconds."""

    start: float
    duration: float
    phone: str

    @property
    def end(self) -> float:
        return self.start + self.duration


def format_ctm(uttid: str, segments: Sequence[PhoneSegment], *, digits: int = 4) -> str:
    """CTM lines for one utterance (`uttid 1 start duration phone`)."""
    return "".join(f"{uttid} 1 {s.start:.{digits}f} {s.duration:.{digits}f} {s.phone}\n" for s in segments)


@dataclass(frozen=True)
class CtmRow:
    """One well-formed phone_ctm line: `uttid channel start duration phone`."""

    line: int
    uttid: str
    channel: str
    start: float
    duration: float
    phone: str
    text: str  # the line's fields as written, joined by single spaces

    @property
    def segment(self) -> PhoneSegment:
        return PhoneSegment(self.start, self.duration, self.phone)


def scan_phone_ctm(path: str | Path) -> tuple[list[CtmRow], list[Problem]]:
    """Every well-formed line of a phone CTM, and a problem (file, line, utterance) for each line
    that `read_phone_ctm` would refuse: not 5 fields, times that are not numbers, start < 0 or
    duration <= 0, an utterance that does not start at 0, a gap or an overlap between an
    utterance's segments (within CTM_TOLERANCE_S). After the first timing problem of an
    utterance its later lines are not compared (one misplaced line would flag every later one)."""
    path = Path(path)
    check_regular_file(path)
    rows: list[CtmRow] = []
    problems: list[Problem] = []
    last: dict[str, CtmRow] = {}  # utterance -> its last segment, while its timing is right
    broken: set[str] = set()

    def bad(lineno: int, key: str | None, message: str, kind: ProblemKind = ProblemKind.SEGMENT) -> None:
        problems.append(Problem(str(path), lineno, key, message, kind))

    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                fields = raw.decode("utf-8").split()
            except UnicodeDecodeError as err:
                bad(lineno, None, f"is not valid UTF-8 ({err.reason})", ProblemKind.NOT_UTF8)
                continue
            if not fields:
                continue
            uttid = fields[0]
            if len(fields) != 5:
                bad(
                    lineno,
                    uttid,
                    f"expected 5 fields 'uttid channel start duration phone', found {len(fields)}",
                    ProblemKind.MALFORMED,
                )
                broken.add(uttid)
                continue
            _, channel, start_s, dur_s, phone = fields
            try:
                start, duration = float(start_s), float(dur_s)
            except ValueError:
                start = duration = math.nan
            if not (math.isfinite(start) and math.isfinite(duration)):
                bad(
                    lineno,
                    uttid,
                    f"start/duration must be numbers, found '{start_s} {dur_s}'",
                    ProblemKind.MALFORMED,
                )
                broken.add(uttid)
                continue
            row = CtmRow(lineno, uttid, channel, start, duration, phone, " ".join(fields))
            rows.append(row)
            if uttid in broken:
                continue
            previous = last.get(uttid)
            message = None
            if start < 0 or duration <= 0:
                message = f"has start {start} and duration {duration}; expected start >= 0 and duration > 0"
            elif previous is not None and abs(previous.start + previous.duration - start) > CTM_TOLERANCE_S:
                kind = "gap" if start > previous.start + previous.duration else "overlap"
                message = (
                    f"{kind}: segment starts at {start:.4f} s but the previous one"
                    f" (line {previous.line}) ends at {previous.start + previous.duration:.4f} s"
                )
            elif previous is None and start > CTM_TOLERANCE_S:
                message = (
                    f"starts at {start:.4f} s, expected 0 (the first segment must cover the start,"
                    f" with '{SILENCE_PHONE}' for silence)"
                )
            if message is not None:
                bad(lineno, uttid, message)
                broken.add(uttid)
                last.pop(uttid, None)
            else:
                last[uttid] = row
    return rows, problems


def read_phone_ctm(path: str | Path) -> dict[str, list[PhoneSegment]]:
    """Read a phone CTM into segments per utterance, in time order.

    Each utterance's segments must follow each other without gaps or overlaps
    (within CTM_TOLERANCE_S): the error names the file, the line and the utterance
    (`speechssl data validate` lists every such line).
    """
    rows, problems = scan_phone_ctm(path)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ValueError(f"{problems[0]}{more}")
    by_utt: dict[str, list[PhoneSegment]] = {}
    for row in rows:
        by_utt.setdefault(row.uttid, []).append(row.segment)
    return by_utt


def format_ctm_row(row: CtmRow, *, uttid: str | None = None, scale: float = 1.0) -> str:
    """One CTM line for `row`, renamed to `uttid` and with its times multiplied by `scale` (a copy
    of a dir: ids with a prefix, times of speed-perturbed audio)."""
    if scale == 1.0:  # the times as written
        return row.text + "\n" if uttid is None else f"{uttid} {row.text.split(' ', 1)[1]}\n"
    return (
        f"{uttid or row.uttid} {row.channel} {format_seconds(row.start * scale)}"
        f" {format_seconds(row.duration * scale)} {row.phone}\n"
    )


def num_frames_for(duration_s: float, frame_shift_s: float) -> int:
    """Frames at `frame_shift_s` in `duration_s`: one per started shift, rounding half a frame down.

    A 1.00 s utterance has 100 frames at 10 ms, 50 at 20 ms, 25 at 40 ms.
    """
    return max(1, math.floor(duration_s / frame_shift_s + 0.5))


def frame_labels(
    segments: Sequence[PhoneSegment], frame_shift_s: float, num_frames: int | None = None
) -> list[str]:
    """The phone under the centre of each frame, frame i covering [i, i+1) * frame_shift_s.

    num_frames defaults to `num_frames_for(end of the last segment)`; frames past the
    last segment (when a model's count is larger) repeat the last phone.
    """
    if not segments:
        raise ValueError("frame_labels: an utterance needs at least one segment")
    if frame_shift_s <= 0:
        raise ValueError(f"frame_shift_s must be > 0, found {frame_shift_s}")
    if num_frames is None:
        num_frames = num_frames_for(segments[-1].end, frame_shift_s)
    starts = [s.start for s in segments]
    labels = []
    for i in range(num_frames):
        centre = (i + 0.5) * frame_shift_s
        k = max(0, bisect.bisect_right(starts, centre) - 1)
        labels.append(segments[k].phone)
    return labels


def ctm_to_frame_labels(
    ctm: Mapping[str, Sequence[PhoneSegment]] | str | os.PathLike,
    frame_shift_s: float,
    num_frames: Mapping[str, int] | None = None,
) -> dict[str, list[str]]:
    """Frame labels for every utterance of `ctm` (what `read_phone_ctm` returns, or the path of a
    phone_ctm, which is read); num_frames (per uttid) matches a model's frame counts."""
    if isinstance(ctm, (str, os.PathLike)):
        ctm = read_phone_ctm(ctm)
    elif not isinstance(ctm, Mapping):
        raise TypeError(
            "ctm_to_frame_labels: ctm must be a phone_ctm path or the dict read_phone_ctm returns,"
            f" found {type(ctm).__name__}"
        )
    out = {}
    for uttid, segments in ctm.items():
        count = None if num_frames is None else num_frames.get(uttid)
        if num_frames is not None and count is None:
            raise ValueError(f"no frame count given for utterance '{uttid}'")
        out[uttid] = frame_labels(segments, frame_shift_s, count)
    return out


def write_frame_labels(
    ctm_path: str | Path, out_path: str | Path, frame_shift_s: float
) -> dict[str, list[str]]:
    """Render `phone_ctm` as `uttid p1 p2 ...` (one phone per frame), the layout of unit label files."""
    labels = ctm_to_frame_labels(read_phone_ctm(ctm_path), frame_shift_s)
    write_table(out_path, labels)
    return labels
