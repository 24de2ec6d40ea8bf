"""MFCC 39-dim features: Kaldi parity, 50 Hz rate, frame counts of the conv frontend."""

from __future__ import annotations

import pytest
import torch
import torchaudio

from speechssl.features.mfcc import MfccConfig, MfccExtractor, mfcc_features


def conv_frontend_frames(num_samples: int) -> int:
    """fairseq's conv feature extractor: kernels (10,3,3,3,3,2,2), strides (5,2,2,2,2,2,2)."""
    n = num_samples
    for kernel, stride in zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)):
        n = (n - kernel) // stride + 1
    return max(n, 0)


def test_equals_kaldi_mfcc_with_deltas_every_second_frame():
    torch.manual_seed(0)
    wav = torch.randn(12345) * 0.1
    feats = mfcc_features(wav)
    ref = torchaudio.compliance.kaldi.mfcc(
        wav.unsqueeze(0), sample_frequency=16000, use_energy=False
    )  # (T, 13)
    d1 = torchaudio.functional.compute_deltas(ref.T)
    d2 = torchaudio.functional.compute_deltas(d1)
    full = torch.cat([ref.T, d1, d2]).T  # (T, 39)
    assert feats.shape == (full[::2].shape[0], 39)
    torch.testing.assert_close(feats, full[::2], rtol=0, atol=0)


@pytest.mark.parametrize(
    "num_samples", [400, 401, 559, 560, 719, 720, 16000, 16160, 16319, 16320, 23456, 48000]
)
def test_frame_count_matches_conv_frontend(num_samples):
    extractor = MfccExtractor()
    wav = torch.randn(num_samples) * 0.1
    (feats,) = extractor.extract([wav])
    assert feats.shape[0] == extractor.num_frames(num_samples) == conv_frontend_frames(num_samples)
    assert conv_frontend_frames(num_samples) == (num_samples - 400) // 320 + 1


def test_rate_and_dims():
    extractor = MfccExtractor()
    assert (extractor.feature_dim, extractor.frame_rate, extractor.sample_rate) == (39, 50.0, 16000)
    full_rate = MfccExtractor(MfccConfig(subsample=1, delta_order=0))
    assert (full_rate.feature_dim, full_rate.frame_rate) == (13, 100.0)
    assert full_rate.extract([torch.zeros(16000) + 0.01])[0].shape == (98, 13)


def test_too_short_and_bad_shape():
    with pytest.raises(ValueError, match="399 samples is shorter than one 25.0 ms window"):
        mfcc_features(torch.zeros(399))
    with pytest.raises(ValueError, match="expected a 1-D waveform"):
        mfcc_features(torch.zeros(2, 1000))
    with pytest.raises(ValueError, match="delta_order must be 0, 1 or 2"):
        MfccConfig(delta_order=3)


@pytest.mark.parametrize(
    ("num_samples", "chunk_frames"), [(400, 1), (1200, 1), (12345, 24), (12345, 1000), (48077, 64)]
)
def test_chunked_equals_whole_file(num_samples, chunk_frames):
    """Long recordings are computed in chunks (bounded memory): the same frames as one pass."""
    from speechssl.features.mfcc import iter_mfcc

    torch.manual_seed(num_samples)
    wav = torch.randn(num_samples) * 0.1
    whole = mfcc_features(wav)
    blocks = list(iter_mfcc(lambda a, b: wav[a:b], num_samples, chunk_frames=chunk_frames))
    chunked = torch.cat(blocks)
    assert chunked.shape == whole.shape
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-4)
    for config in (MfccConfig(subsample=1, delta_order=1), MfccConfig(subsample=3, delta_win_length=7)):
        whole = mfcc_features(wav, config)
        chunked = torch.cat(
            list(iter_mfcc(lambda a, b: wav[a:b], num_samples, config, chunk_frames=chunk_frames))
        )
        torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-4)
