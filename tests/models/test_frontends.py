"""Frontends: Kaldi-exact fbank, lengths at frame boundaries, padding invariance, grad scaling."""

from __future__ import annotations

import pytest
import torch
import torchaudio

from speechssl.models.config import ConvFrontendConfig, FbankFrontendConfig
from speechssl.models.frontends import KaldiFbank, build_conv_frontend, build_fbank_frontend
from speechssl.testing.models import random_waves


def test_fbank_matches_torchaudio_kaldi_per_utterance():
    wavs, lengths = random_waves([16000, 9123, 401])
    fbank = KaldiFbank(80, waveform_scale=32768.0)
    feats, frames = fbank(wavs, lengths)
    worst = 0.0
    for i, n in enumerate(lengths.tolist()):
        ref = torchaudio.compliance.kaldi.fbank(wavs[i : i + 1, :n] * 32768.0, num_mel_bins=80)
        assert frames[i] == ref.shape[0]
        worst = max(worst, (feats[i, : ref.shape[0]] - ref).abs().max().item())
    assert worst < 1e-3  # log-mel values are O(10); float32 FFT rounding only


@pytest.mark.parametrize("frame_rate", [50, 25])
def test_fbank_frontend_lengths_follow_downsample_rate(frame_rate):
    frontend = build_fbank_frontend(FbankFrontendConfig(frame_rate=frame_rate, subsampler_dim=8)).eval()
    assert frontend.downsample_rate == 16000 // frame_rate
    rate = frontend.downsample_rate
    # around frame boundaries: k * rate (+ the 240-sample window overhang) +-1 sample
    lengths = [k * rate + 240 + d for k in (3, 4) for d in (-1, 0, 1)]
    wavs, lens = random_waves(lengths)
    feats, frames = frontend(wavs, lens)
    for n, t in zip(lengths, frames.tolist()):
        one, _ = frontend(wavs[:1, :n], torch.tensor([n]))
        assert t == one.shape[1]
        assert abs(t - n / rate) <= 1.5
    assert feats.shape[1] == frames.max()


def test_fbank_frontend_batched_equals_one_at_a_time():
    frontend = build_fbank_frontend(FbankFrontendConfig(subsampler_dim=8)).eval()
    wavs, lens = random_waves([8000, 5000, 3210])
    feats, frames = frontend(wavs, lens)
    for i, n in enumerate(lens.tolist()):
        one, t = frontend(wavs[i : i + 1, :n], lens[i : i + 1])
        assert torch.allclose(feats[i, : t.item()], one[0], atol=1e-5)


def test_fbank_frontend_normalises_valid_frames_only():
    frontend = build_fbank_frontend(FbankFrontendConfig(subsampler_dim=8))
    wavs, lens = random_waves([8000, 4000])
    feats, frames = frontend.fbank(wavs, lens)
    from speechssl.models.frontends import masked_mean_var_norm

    normed = masked_mean_var_norm(feats, frames)
    short = normed[1, : frames[1]]
    assert short.mean(0).abs().max() < 1e-4
    assert (short.var(0, unbiased=False) - 1).abs().max() < 1e-2
    assert normed[1, frames[1] :].abs().max() == 0


@pytest.mark.parametrize("mode", ["group_norm", "layer_norm"])
def test_conv_frontend_lengths_at_frame_boundaries(mode):
    frontend = build_conv_frontend(ConvFrontendConfig(conv_dim=[4] * 7, mode=mode))
    assert frontend.downsample_rate == 320 and frontend.receptive_field == 400
    for frames in (1, 2, 10):
        boundary = 400 + 320 * (frames - 1)  # fewest samples that give `frames` frames
        for n, expected in ((boundary - 1, frames - 1), (boundary, frames), (boundary + 319, frames)):
            if expected == 0:
                continue  # too short: SSLModel raises a clear error (tests/models/test_model.py)
            out, lens = frontend(torch.randn(1, n), torch.tensor([n]))
            assert lens.item() == expected == out.shape[1]


def test_layer_norm_conv_frontend_batched_equals_one_at_a_time():
    frontend = build_conv_frontend(ConvFrontendConfig(conv_dim=[8] * 7, mode="layer_norm", conv_bias=True))
    wavs, lens = random_waves([8000, 5123])
    feats, frames = frontend(wavs, lens)
    one, t = frontend(wavs[1:, :5123], lens[1:])
    assert torch.allclose(feats[1, : t.item()], one[0], atol=1e-5)


@pytest.mark.parametrize("mult", [0.1, 0.0])
def test_feature_grad_mult_scales_frontend_gradients(mult):
    torch.manual_seed(0)
    full = build_conv_frontend(ConvFrontendConfig(conv_dim=[4] * 7))
    scaled = build_conv_frontend(ConvFrontendConfig(conv_dim=[4] * 7, feature_grad_mult=mult))
    scaled.load_state_dict(full.state_dict())
    wavs, lens = random_waves([4000])
    for model in (full, scaled):
        out, _ = model(wavs, lens)
        if out.requires_grad:
            out.pow(2).sum().backward()
    g_full = full.conv_layers[0].conv.weight.grad
    g_scaled = scaled.conv_layers[0].conv.weight.grad
    if mult == 0.0:
        assert g_scaled is None  # frozen frontend: no graph at all
    else:
        assert torch.allclose(g_scaled, mult * g_full, rtol=1e-4, atol=1e-7)
