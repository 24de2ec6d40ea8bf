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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from speechssl.data.kaldi import write_table

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


def read_phone_ctm(path: str | Path) -> dict[str, list[PhoneSegment]]:
    """Read a phone CTM into segments per utterance, in time order.

    Each utterance's segments must follow each other without gaps or overlaps
    (within CTM_TOLERANCE_S): the errors name the file and line.
    """
    by_utt: dict[str, list[PhoneSegment]] = {}
    last_line: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 5:
                raise ValueError(
                    f"{path}:{lineno}: expected 5 fields 'uttid channel start duration phone', "
                    f"found {len(fields)}"
                )
            uttid, _channel, start_s, dur_s, phone = fields
            try:
                start, duration = float(start_s), float(dur_s)
            except ValueError:
                raise ValueError(
                    f"{path}:{lineno}: start/duration must be numbers, found '{start_s} {dur_s}'"
                ) from None
            if start < 0 or duration <= 0:
                raise ValueError(f"{path}:{lineno}: utterance '{uttid}' has start {start} "
                                 f"and duration {duration}; "
                                 "expected start >= 0 and duration > 0")  # fmt: skip
            segments = by_utt.setdefault(uttid, [])
            if segments and abs(segments[-1].end - start) > CTM_TOLERANCE_S:
                kind = "gap" if start > segments[-1].end else "overlap"
                raise ValueError(
                    f"{path}:{lineno}: {kind} in utterance '{uttid}': "
                    f"segment starts at {start:.4f} s but the "
                    f"previous one (line {last_line[uttid]}) ends at {segments[-1].end:.4f} s"
                )
            if not segments and start > CTM_TOLERANCE_S:
                raise ValueError(f"{path}:{lineno}: utterance '{uttid}' starts at {start:.4f} s, expected 0 "
                                 "(the first segment must cover the start, "
                                 f"with '{SILENCE_PHONE}' for silence)")  # fmt: skip
            segments.append(PhoneSegment(start, duration, phone))
            last_line[uttid] = lineno
    return by_utt


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
    ctm: Mapping[str, Sequence[PhoneSegment]],
    frame_shift_s: float,
    num_frames: Mapping[str, int] | None = None,
) -> dict[str, list[str]]:
    """Frame labels for every utterance; num_frames (per uttid) matches a model's frame counts."""
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
