"""The trainer's label/frame-count guard."""

from __future__ import annotations

import pytest

from speechssl.units.labels import LabelLengthError, check_label_lengths


def conv_frames(num_samples: int) -> int:
    return 0 if num_samples < 400 else (num_samples - 400) // 320 + 1


def test_matching_and_off_by_one_pass():
    labels = {"a": [0] * 49, "b": [0] * 50}
    check_label_lengths(labels, {"a": 16000, "b": 16000}, conv_frames)  # 49 frames each


def test_every_mismatch_is_listed_with_both_counts():
    labels = {"a": [0] * 49, "b": [0] * 10, "c": [0] * 52}
    samples = {"a": 16000, "b": 16000, "c": 16000, "d": 8000}
    with pytest.raises(LabelLengthError) as info:
        check_label_lengths(labels, samples, conv_frames)
    msg = str(info.value)
    assert "3 of 4 utterance(s)" in msg
    assert "b: 10 labels, model gives 49 frames for 16000 samples" in msg
    assert "c: 52 labels, model gives 49 frames for 16000 samples" in msg
    assert "d: no labels (8000 samples)" in msg
    assert "a:" not in msg


def test_tolerance_zero_is_strict():
    with pytest.raises(LabelLengthError, match="b: 50 labels, model gives 49 frames"):
        check_label_lengths({"b": [0] * 50}, {"b": 16000}, conv_frames, tolerance=0)
