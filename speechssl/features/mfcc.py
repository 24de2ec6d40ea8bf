"""MFCC + deltas + delta-deltas (39 dims), as fairseq's HuBERT iteration-0 features.

Settings follow fairseq examples/hubert/simple_kmeans/dump_mfcc_feature.py:
torchaudio.compliance.kaldi.mfcc with its (Kaldi) defaults except
use_energy=False, sample_frequency=16000 (13 cepstra, 23 mel bins, 25 ms
povey window, 10 ms shift, snip_edges=True, dither 0), then first and second
order deltas over time (torchaudio.functional.compute_deltas, window 5),
concatenated to [mfcc, delta, delta-delta].

Frame rate. Kaldi frames come at 100 Hz: with a 400-sample window and a
160-sample shift a waveform of S >= 400 samples gives

    n100 = 1 + (S - 400) // 160

frames. HuBERT's conv frontend (receptive field 400, stride 320) gives

    n50 = 1 + (S - 400) // 320

frames at 50 Hz. We keep every 2nd MFCC frame (frames 0, 2, 4, ...; deltas are
computed at 100 Hz first), which gives ceil(n100 / 2) frames; writing
(S - 400) // 160 = 2q + b with q = (S - 400) // 320 and b in {0, 1},
ceil((2q + 1 + b) / 2) = q + 1 = n50 for both values of b. So the subsampled
MFCC labels match the conv frontend frame for frame. The trainer still allows
a difference of one frame (speechssl.units.check_label_lengths) for labels
made with other conventions (e.g. snip_edges=False). Utterances shorter than
one window (400 samples) have no frame and are rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchaudio
from torch import Tensor


@dataclass(frozen=True, kw_only=True)
class MfccConfig:
    sample_rate: int = 16000
    num_ceps: int = 13
    num_mel_bins: int = 23
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    delta_order: int = 2  # 0: mfcc only, 1: + deltas, 2: + delta-deltas
    delta_win_length: int = 5  # torchaudio compute_deltas win_length (Kaldi's default window 2)
    subsample: int = 2  # keep every n-th 100 Hz frame: 2 gives the 50 Hz label rate

    def __post_init__(self) -> None:
        if self.delta_order not in (0, 1, 2):
            raise ValueError(f"delta_order must be 0, 1 or 2, found {self.delta_order}")
        if self.subsample < 1:
            raise ValueError(f"subsample must be >= 1, found {self.subsample}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, found {self.sample_rate}")

    @property
    def window_samples(self) -> int:
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def shift_samples(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms / 1000)


def mfcc_features(wav: Tensor, config: MfccConfig = MfccConfig()) -> Tensor:
    """wav: (samples,) float waveform in [-1, 1]. Returns (frames, 13 * (1 + delta_order)),
    at 1000 / frame_shift_ms / subsample frames per second (50 Hz by default)."""
    if wav.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, found shape {tuple(wav.shape)}")
    if wav.numel() < config.window_samples:
        raise ValueError(
            f"waveform of {wav.numel()} samples is shorter than one {config.frame_length_ms} ms window "
            f"({config.window_samples} samples)"
        )
    with torch.no_grad():
        mfcc = torchaudio.compliance.kaldi.mfcc(
            wav.float().unsqueeze(0),  # (1, S)
            sample_frequency=config.sample_rate,
            use_energy=False,
            num_ceps=config.num_ceps,
            num_mel_bins=config.num_mel_bins,
            frame_length=config.frame_length_ms,
            frame_shift=config.frame_shift_ms,
        )  # (T100, C)
        parts = [mfcc.T]  # (C, T100): compute_deltas works along the last axis
        for _ in range(config.delta_order):
            parts.append(torchaudio.functional.compute_deltas(parts[-1], win_length=config.delta_win_length))
        feats = torch.cat(parts, dim=0).T  # (T100, C * (1 + delta_order))
        return feats[:: config.subsample].contiguous()  # (T, D)


class MfccExtractor:
    """The `FeatureExtractor` for MFCCs (see speechssl.features.dump)."""

    name = "mfcc"

    def __init__(self, config: MfccConfig = MfccConfig()) -> None:
        self.config = config
        self.feature_dim = config.num_ceps * (1 + config.delta_order)
        self.sample_rate = config.sample_rate
        self.frame_rate = 1000.0 / config.frame_shift_ms / config.subsample

    def num_frames(self, num_samples: int) -> int:
        """Output frames for a waveform of `num_samples` (0 if shorter than a window)."""
        if num_samples < self.config.window_samples:
            return 0
        n_full = 1 + (num_samples - self.config.window_samples) // self.config.shift_samples
        return -(-n_full // self.config.subsample)  # ceil

    def extract(self, wavs: list[Tensor]) -> list[np.ndarray]:
        """Each (samples,) waveform -> (frames, feature_dim) float32 array."""
        return [mfcc_features(w, self.config).numpy() for w in wavs]
