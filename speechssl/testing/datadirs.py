"""Tiny audio files and tiny Kaldi data dirs for tests, valid or with one planted defect.

`make_data_dir` writes a valid dir (speaker-prefixed ids, distinct durations,
utt2dur); `plant_defect` breaks it in one named way and returns where
`validate_data_dir` must report it, so every test can assert the exact
file:line and id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from speechssl.data.audio import SAMPLE_RATE
from speechssl.data.datadir import DataDir, write_data_dir
from speechssl.data.dataset import AudioDataset
from speechssl.data.kaldi import write_table
from speechssl.units.labels import parse_units

WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")


def write_tone(
    path: str | Path,
    seconds: float,
    *,
    sample_rate: int = SAMPLE_RATE,
    freq: float = 220.0,
    amplitude: float = 0.1,
) -> str:
    """Write a sine tone (16-bit PCM, format from the suffix: .wav, .flac) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * sample_rate)) / sample_rate  # (samples,)
    sf.write(
        path, (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32), sample_rate, subtype="PCM_16"
    )
    return str(path)


def utt_seconds(speaker: int, utt: int, base: float = 0.5) -> float:
    """Duration of utterance `utt` of speaker `speaker` (0-based): distinct, multiples of 10 ms."""
    return round(base + 0.1 * utt + 0.03 * speaker, 2)


def make_data_dir(
    root: str | Path,
    *,
    num_speakers: int = 2,
    utts_per_speaker: int = 2,
    base_seconds: float = 0.5,
    sample_rate: int = SAMPLE_RATE,
    segments: bool = False,
    name: str = "data",
) -> DataDir:
    """A valid data dir in root/<name> with its audio in root/audio.

    Ids are `spk{i}` and `spk{i}-utt{j}` (1-based). With `segments`, each speaker
    has one recording `spk{i}-rec` holding its utterances back to back.
    """
    root = Path(root)
    wav_scp, utt2spk, text, utt2dur, segs = {}, {}, {}, {}, {}
    for i in range(num_speakers):
        spk = f"spk{i + 1}"
        offset = 0.0
        for j in range(utts_per_speaker):
            utt = f"{spk}-utt{j + 1}"
            seconds = utt_seconds(i, j, base_seconds)
            utt2spk[utt], utt2dur[utt] = spk, seconds
            text[utt] = " ".join(WORDS[(i + j + k) % len(WORDS)] for k in range(3))
            if segments:
                segs[utt] = (f"{spk}-rec", round(offset, 2), round(offset + seconds, 2))
            else:
                wav_scp[utt] = write_tone(root / "audio" / f"{utt}.wav", seconds, sample_rate=sample_rate)
            offset += seconds
        if segments:
            rec = f"{spk}-rec"
            wav_scp[rec] = write_tone(root / "audio" / f"{rec}.wav", offset, sample_rate=sample_rate)
    return write_data_dir(
        root / name, wav_scp, utt2spk=utt2spk, text=text, utt2dur=utt2dur, segments=segs if segments else None
    )


@dataclass(frozen=True)
class Planted:
    """Where a planted defect must be reported: `str(problem)` matches `expected`."""

    file: Path
    line: int
    key: str
    pattern: str  # regex for the message

    @property
    def expected(self) -> str:
        return f"{self.file}:{self.line}: '{self.key}' {self.pattern}"


DEFECTS = (
    "unsorted",
    "duplicate_id",
    "text_extra_utt",
    "spk2utt_mismatch",
    "missing_audio",
    "corrupt_audio",
    "segment_past_end",
    "segment_start_ge_end",
    "empty_transcript",
    "malformed_line",
)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def plant_defect(data_dir: str | Path, defect: str) -> Planted:
    """Break a dir made by `make_data_dir` in one way (see DEFECTS); return where it must be reported.

    Segment defects need a dir made with `segments=True`; defects touching
    audio modify the audio files the dir points at.
    """
    d = Path(data_dir)
    if defect not in DEFECTS:
        raise ValueError(f"unknown defect '{defect}'; valid: {', '.join(DEFECTS)}")
    if defect.startswith("segment") and not (d / "segments").is_file():
        raise ValueError(f"defect '{defect}' needs a dir with segments (make_data_dir(..., segments=True))")

    def edit(name: str, index: int, new: str | None) -> list[str]:
        lines = _lines(d / name)
        old = lines[index]
        if new is None:
            del lines[index]
        else:
            lines[index] = new
        (d / name).write_text("".join(lines))
        return old.split()

    if defect == "unsorted":  # swap the first two lines of text
        lines = _lines(d / "text")
        lines[0], lines[1] = lines[1], lines[0]
        (d / "text").write_text("".join(lines))
        return Planted(d / "text", 2, lines[1].split()[0], "file is not sorted in C locale")
    if defect == "duplicate_id":  # repeat the first line of utt2spk right after itself
        lines = _lines(d / "utt2spk")
        (d / "utt2spk").write_text("".join([lines[0], *lines]))
        return Planted(d / "utt2spk", 2, lines[0].split()[0], r"duplicate id \(first on line 1\)")
    if defect == "text_extra_utt":  # an utterance only text knows
        lines = _lines(d / "text")
        (d / "text").write_text("".join(lines) + "zz-unknown-utt hello\n")
        return Planted(d / "text", len(lines) + 1, "zz-unknown-utt", "utterance is not in utt2spk")
    if defect == "spk2utt_mismatch":  # first speaker forgets its last utterance
        spk, *utts = _lines(d / "spk2utt")[0].split()
        edit("spk2utt", 0, " ".join([spk, *utts[:-1]]) + "\n")
        return Planted(d / "spk2utt", 1, spk, f"does not list utterance '{utts[-1]}'")
    if defect in ("missing_audio", "corrupt_audio"):
        index = 0 if defect == "missing_audio" else 1
        key, audio = _lines(d / "wav.scp")[index].split(maxsplit=1)
        audio = Path(audio.strip())
        if defect == "missing_audio":
            audio.unlink()
            return Planted(d / "wav.scp", 1, key, ".* file not found")
        audio.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunkjunk")
        return Planted(d / "wav.scp", 2, key, ".* cannot read audio header")
    if defect == "segment_past_end":  # the first segment ends 0.5 s after its recording
        utt, reco, start, end = _lines(d / "segments")[0].split()
        last = max(float(line.split()[3]) for line in _lines(d / "segments") if line.split()[1] == reco)
        edit("segments", 0, f"{utt} {reco} {start} {last + 0.5:g}\n")
        return Planted(d / "segments", 1, utt, f"end .* is past the end of recording '{reco}'")
    if defect == "segment_start_ge_end":
        utt, reco, start, end = _lines(d / "segments")[1].split()
        edit("segments", 1, f"{utt} {reco} {end} {end}\n")
        return Planted(d / "segments", 2, utt, "start .* is not before end")
    if defect == "empty_transcript":
        utt = edit("text", 0, _lines(d / "text")[0].split()[0] + "\n")[0]
        return Planted(d / "text", 1, utt, "empty transcript")
    # malformed_line: a duration with an extra field
    utt, seconds = _lines(d / "utt2dur")[0].split()
    edit("utt2dur", 0, f"{utt} {seconds} extra\n")
    return Planted(d / "utt2dur", 1, utt, "expected '<id> <duration in seconds>'")


def frame_units_dataset(root: Path) -> AudioDataset:
    """A training AudioDataset of `make_data_dir`'s 12 utterances (0.5-0.86 s) with 50 Hz units
    (as many as a 400-sample window at a 320-sample hop gives, ids 0-6) in `units/`, cropped to 1 s."""
    data = make_data_dir(root, num_speakers=3, utts_per_speaker=4, base_seconds=0.5)
    plain = AudioDataset(data.path)
    counts = {u: (round(d * SAMPLE_RATE) - 400) // 320 + 1 for u, d in zip(plain.utt_ids(), plain.durations)}
    (data.path / "units").mkdir()
    write_table(
        data.path / "units" / "labels", {u: " ".join(str(k % 7) for k in range(n)) for u, n in counts.items()}
    )
    units = {"units": str(data.path / "units" / "labels")}
    return AudioDataset(
        data.path, targets=units, target_transforms={"units": parse_units}, label_rates={"units": 50.0},
        max_seconds=1.0,
    )  # fmt: skip
