"""phone_ctm reading and frame labels at 10/20/40 ms."""

from __future__ import annotations

import pytest

from speechssl.data.alignments import (
    PhoneSegment,
    ctm_to_frame_labels,
    format_ctm,
    frame_labels,
    num_frames_for,
    read_phone_ctm,
    write_frame_labels,
)
from speechssl.data.kaldi import read_table

# 1.00 s: sil 0-0.12, h 0.12-0.2, @ 0.2-0.45, l 0.45-0.5, oU 0.5-0.85, sil 0.85-1.0
SEGMENTS = [
    PhoneSegment(0.0, 0.12, "sil"),
    PhoneSegment(0.12, 0.08, "h"),
    PhoneSegment(0.2, 0.25, "@"),
    PhoneSegment(0.45, 0.05, "l"),
    PhoneSegment(0.5, 0.35, "oU"),
    PhoneSegment(0.85, 0.15, "sil"),
]


def _write(tmp_path, text: str):
    path = tmp_path / "phone_ctm"
    path.write_text(text)
    return path


def test_round_trip(tmp_path):
    path = _write(tmp_path, format_ctm("u2", SEGMENTS[:2]) + format_ctm("u1", SEGMENTS))
    ctm = read_phone_ctm(path)
    assert list(ctm) == ["u2", "u1"]
    assert [s.phone for s in ctm["u1"]] == [s.phone for s in SEGMENTS]
    assert ctm["u1"][-1].end == pytest.approx(1.0)


@pytest.mark.parametrize(("shift", "count"), [(0.010, 100), (0.020, 50), (0.040, 25)])
def test_frame_counts(shift, count):
    labels = frame_labels(SEGMENTS, shift)
    assert len(labels) == count == num_frames_for(1.0, shift)
    # the number of frames per phone follows its duration (to within one frame at the edges)
    for seg in SEGMENTS[1:-1]:
        n = sum(
            1 for i, p in enumerate(labels) if p == seg.phone and seg.start <= (i + 0.5) * shift < seg.end
        )
        assert abs(n - seg.duration / shift) <= 1


def test_frame_labels_at_10ms_are_exact():
    labels = frame_labels(SEGMENTS, 0.010)
    assert labels[:12] == ["sil"] * 12 and labels[12:20] == ["h"] * 8
    assert labels[45:50] == ["l"] * 5 and labels[85:] == ["sil"] * 15


def test_frame_labels_at_40ms_sample_the_frame_centre():
    # centres 0.02, 0.06, 0.10 (sil) 0.14, 0.18 (h) 0.22 (@) ...
    assert frame_labels(SEGMENTS, 0.040)[:6] == ["sil", "sil", "sil", "h", "h", "@"]


def test_given_frame_count_pads_with_last_phone_or_truncates():
    assert frame_labels(SEGMENTS, 0.020, 52)[-3:] == ["sil"] * 3
    assert len(frame_labels(SEGMENTS, 0.020, 49)) == 49


def test_ctm_to_frame_labels_needs_every_count():
    with pytest.raises(ValueError, match="no frame count given for utterance 'u1'"):
        ctm_to_frame_labels({"u1": SEGMENTS}, 0.02, {"u2": 50})


def test_write_frame_labels(tmp_path):
    path = _write(tmp_path, format_ctm("u1", SEGMENTS))
    write_frame_labels(path, tmp_path / "labels", 0.020)
    labels = read_table(tmp_path / "labels")["u1"].split()
    assert len(labels) == 50 and labels[6] == "h"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("u1 1 0.0 0.1\n", r"phone_ctm:1: 'u1' expected 5 fields"),
        ("u1 1 0.0 abc sil\n", r"phone_ctm:1: 'u1' start/duration must be numbers"),
        ("u1 1 0.0 0.0 sil\n", r"phone_ctm:1: 'u1' has start 0.0 and duration 0.0"),
        ("u1 1 0.0 0.1 sil\nu1 1 0.2 0.1 a\n", r"phone_ctm:2: 'u1' gap: .*line 1"),
        ("u1 1 0.0 0.1 sil\nu1 1 0.05 0.1 a\n", r"phone_ctm:2: 'u1' overlap"),
        ("u1 1 0.3 0.1 a\n", r"phone_ctm:1: 'u1' starts at 0.3000 s, expected 0"),
    ],
)
def test_bad_ctm_errors_name_file_and_line(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        read_phone_ctm(_write(tmp_path, text))


def test_bad_frame_shift():
    with pytest.raises(ValueError, match="frame_shift_s must be > 0"):
        frame_labels(SEGMENTS, 0.0)
