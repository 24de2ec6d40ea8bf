"""Tiny data dirs with sine/noise wavs, written with soundfile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def make_data_dir(root: Path, durations: dict[str, float], sample_rate: int = 16000, seed: int = 0) -> Path:
    """A Kaldi data dir (wav.scp, utt2spk) of sine + noise wavs, one per utterance."""
    rng = np.random.default_rng(seed)
    wav_dir = root / "wav"
    data = root / "data"
    wav_dir.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    scp, u2s = [], []
    for i, (utt, seconds) in enumerate(sorted(durations.items())):
        n = int(round(seconds * sample_rate))
        t = np.arange(n) / sample_rate
        x = 0.3 * np.sin(2 * np.pi * (200 + 100 * i) * t) + 0.05 * rng.standard_normal(n)
        path = wav_dir / f"{utt}.wav"
        sf.write(path, x.astype(np.float32), sample_rate, subtype="PCM_16")
        scp.append(f"{utt} {path}\n")
        u2s.append(f"{utt} {utt}\n")
    (data / "wav.scp").write_text("".join(scp))
    (data / "utt2spk").write_text("".join(u2s))
    return data


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_data_dir(tmp_path, {"utt_a": 0.5, "utt_b": 1.03, "utt_c": 0.77, "utt_d": 0.3, "utt_e": 0.61})


@pytest.fixture
def data_dir_factory(tmp_path):
    """make_data_dir bound to this test's tmp dir: factory({utt: seconds}) -> data dir."""
    return lambda durations: make_data_dir(tmp_path, durations)
