"""A tiny "phone" corpus: each utterance is a sequence of tones, each tone one phone in a CTM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

TONES = {"aa": 300.0, "iy": 900.0, "sh": None, "sil": 0.0}  # None: white noise, 0: near-silence


def make_phone_corpus(
    root: Path, num_utts: int = 6, seed: int = 0, sample_rate: int = 16000
) -> tuple[Path, Path]:
    """(data dir, phone_ctm): utterances of 4-7 segments of 0.1-0.3 s, durations on a 10 ms grid."""
    rng = np.random.default_rng(seed)
    data, wavs = root / "data", root / "wav"
    data.mkdir(parents=True)
    wavs.mkdir()
    scp, u2s, ctm = [], [], []
    for i in range(num_utts):
        utt = f"spk{i % 2}-utt{i}"
        pieces, t0 = [], 0.0
        for k in range(int(rng.integers(4, 8))):
            phone = "sil" if k == 0 else str(rng.choice(list(TONES)))
            dur = int(rng.integers(10, 31)) / 100
            n = int(round(dur * sample_rate))
            t = np.arange(n) / sample_rate
            freq = TONES[phone]
            if freq is None:
                x = 0.2 * rng.standard_normal(n)
            elif freq == 0.0:
                x = 0.001 * rng.standard_normal(n)
            else:
                x = 0.4 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(n)
            pieces.append(x)
            ctm.append(f"{utt} 1 {t0:.2f} {dur:.2f} {phone}\n")
            t0 += dur
        path = wavs / f"{utt}.wav"
        sf.write(path, np.concatenate(pieces).astype(np.float32), sample_rate, subtype="PCM_16")
        scp.append(f"{utt} {path}\n")
        u2s.append(f"{utt} spk{i % 2}\n")
    (data / "wav.scp").write_text("".join(scp))
    (data / "utt2spk").write_text("".join(u2s))
    (root / "phone_ctm").write_text("".join(ctm))
    return data, root / "phone_ctm"


@pytest.fixture
def phone_corpus(tmp_path) -> tuple[Path, Path]:
    return make_phone_corpus(tmp_path / "corpus")
