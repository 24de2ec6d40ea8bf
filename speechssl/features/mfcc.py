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
a difference of one frame (speechssl.units.labels.check_label_lengths) for labels
made with other conventions (e.g. snip_edges=False). Utterances shorter than
one window (400 samples) have no frame and are rejected.

Long recordings are computed in chunks (`iter_mfcc`): every Kaldi frame
depends only on its own 400 samples, and a delta of order d only on the
d * (win_length - 1) // 2 frames either side, so a chunk of frames computed
with that many frames of context each side (cut at the true ends of the
recording, where compute_deltas replicates the edge as in the whole-file
computation) equals the whole-file result frame for frame. Memory is then
bounded by the chunk, not the recording (a 2-hour file computed whole peaks
at several GB).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torchaudio
from torch import Tensor

from speechssl.data.audio import SAMPLE_RATE


@dataclass(frozen=True, kw_only=True)
class MfccConfig:
    sample_rate: int = SAMPLE_RATE
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


def _check_length(num_samples: int, config: MfccConfig) -> None:
    if num_samples < config.window_samples:
        raise ValueError(
            f"waveform of {num_samples} samples is shorter than one {config.frame_length_ms} ms window "
            f"({config.window_samples} samples)"
        )


def _mfcc_frames(wav: Tensor, config: MfccConfig) -> Tensor:
    """(samples,) -> (T100, num_ceps) Kaldi MFCC at the full frame rate, no deltas."""
    return torchaudio.compliance.kaldi.mfcc(
        wav.float().unsqueeze(0),  # (1, S)
        sample_frequency=config.sample_rate,
        use_energy=False,
        num_ceps=config.num_ceps,
        num_mel_bins=config.num_mel_bins,
        frame_length=config.frame_length_ms,
        frame_shift=config.frame_shift_ms,
    )  # (T100, C)


def _with_deltas(mfcc: Tensor, config: MfccConfig) -> Tensor:
    """(T100, C) -> (T100, C * (1 + delta_order)); edges replicated as compute_deltas does."""
    parts = [mfcc.T]  # (C, T100): compute_deltas works along the last axis
    for _ in range(config.delta_order):
        parts.append(torchaudio.functional.compute_deltas(parts[-1], win_length=config.delta_win_length))
    return torch.cat(parts, dim=0).T  # (T100, C * (1 + delta_order))


def mfcc_features(wav: Tensor, config: MfccConfig = MfccConfig()) -> Tensor:
    """wav: (samples,) float waveform in [-1, 1]. Returns (frames, 13 * (1 + delta_order)),
    at 1000 / frame_shift_ms / subsample frames per second (50 Hz by default). Computed in one
    pass; `iter_mfcc` gives the same frames in bounded memory."""
    if wav.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, found shape {tuple(wav.shape)}")
    _check_length(wav.numel(), config)
    with torch.no_grad():
        feats = _with_deltas(_mfcc_frames(wav, config), config)  # (T100, D)
        return feats[:: config.subsample].contiguous()  # (T, D)


def iter_mfcc(
    read: Callable[[int, int], Tensor],
    num_samples: int,
    config: MfccConfig = MfccConfig(),
    *,
    chunk_frames: int = 6000,
) -> Iterator[Tensor]:
    """`mfcc_features` of a recording of `num_samples` samples, in blocks of about `chunk_frames`
    100 Hz frames. `read(a, b)` returns samples [a, b) as a (b - a,) tensor. Yields (frames, D)
    blocks whose concatenation equals `mfcc_features` of the whole recording."""
    _check_length(num_samples, config)
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, found {chunk_frames}")
    window, shift, step = config.window_samples, config.shift_samples, config.subsample
    total = 1 + (num_samples - window) // shift  # T100 (snip_edges)
    # a multiple of the subsampling step: the kept frames stay aligned
    chunk = -(-chunk_frames // step) * step
    margin = config.delta_order * ((config.delta_win_length - 1) // 2)  # frames of delta context each side
    with torch.no_grad():
        for a in range(0, total, chunk):
            b = min(total, a + chunk)
            lo, hi = max(0, a - margin), min(total, b + margin)  # frames computed, context included
            wav = read(lo * shift, (hi - 1) * shift + window)  # exactly the samples of frames [lo, hi)
            if wav.shape != ((hi - 1 - lo) * shift + window,):
                raise ValueError(
                    f"read({lo * shift}, {(hi - 1) * shift + window}) returned shape {tuple(wav.shape)}"
                )
            feats = _with_deltas(_mfcc_frames(wav, config), config)  # (hi - lo, D)
            yield feats[a - lo : b - lo : step].contiguous()  # (ceil((b - a) / step), D)


class MfccExtractor:
    """The `FeatureExtractor` for MFCCs (see speechssl.features.dump)."""

    name = "mfcc"

    def __init__(self, config: MfccConfig = MfccConfig(), *, chunk_seconds: float = 60.0) -> None:
        if chunk_seconds <= 0:
            raise ValueError(f"chunk_seconds must be positive, found {chunk_seconds}")
        self.config = config
        self.chunk_seconds = chunk_seconds  # recordings longer than this are computed chunk by chunk
        self.settings = {"extractor": "mfcc", **asdict(config)}  # what the output depends on
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
        return [self._one(w) for w in wavs]

    def _one(self, wav: Tensor) -> np.ndarray:
        if wav.ndim == 1 and wav.numel() > self.stream_samples:  # the whole-file pass would need GBs
            return np.concatenate(list(self.extract_stream(lambda a, b: wav[a:b], wav.numel())))
        return mfcc_features(wav, self.config).numpy()

    @property
    def stream_samples(self) -> int:
        """Recordings longer than this are computed (and best read) chunk by chunk."""
        return int(self.chunk_seconds * self.sample_rate)

    def extract_stream(self, read: Callable[[int, int], Tensor], num_samples: int) -> Iterator[np.ndarray]:
        """(frames, feature_dim) float32 blocks of one long recording; see `iter_mfcc`."""
        chunk_frames = max(1, int(self.chunk_seconds * 1000.0 / self.config.frame_shift_ms))
        for block in iter_mfcc(read, num_samples, self.config, chunk_frames=chunk_frames):
            yield block.numpy()
