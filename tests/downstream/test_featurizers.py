"""Featurizers: shapes, gradients, the hconv depth, the registry error; the fbank upstream."""

from __future__ import annotations

import math

import pytest
import torch

from speechssl.downstream.featurizers import FeaturizerConfig, HierarchicalConv, build_featurizer
from speechssl.interop.upstream import load_upstream
from speechssl.models.fbank_upstream import FbankUpstream

B, T, D, L = 2, 7, 16, 5  # batch, frames, dims, hidden states


def _hidden(requires_grad: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, T, D, generator=g, requires_grad=requires_grad) for _ in range(L)]


@pytest.mark.parametrize("name,out_dim", [("weighted_sum", D), ("layer", D), ("last", D), ("hconv", 8)])
def test_featurizer_shapes(name, out_dim):
    f = build_featurizer(FeaturizerConfig(name=name, layer=2, hconv_dim=8), L, D)
    lengths = torch.tensor([7, 4])
    y, out_lens = f(_hidden(), lengths)
    assert y.shape == (B, T, out_dim) and f.output_dim == out_dim
    assert torch.equal(out_lens, lengths)


def test_weighted_sum_weights_get_gradient_and_start_uniform():
    f = build_featurizer(FeaturizerConfig(name="weighted_sum", layer_norm=True), L, D)
    hs = _hidden()
    y, _ = f(hs, torch.tensor([7, 7]))
    assert torch.allclose(f.layer_weights(), torch.full((L,), 1 / L))
    (y * torch.randn_like(y)).sum().backward()
    assert f.weights.grad is not None and f.weights.grad.abs().sum() > 0


def test_weighted_sum_without_norm_is_mean_at_init():
    f = build_featurizer(FeaturizerConfig(name="weighted_sum"), L, D)
    hs = _hidden()
    y, _ = f(hs, torch.tensor([7, 7]))
    torch.testing.assert_close(y, torch.stack(hs).mean(0))


def test_single_and_last_layer_pick_the_tensor():
    hs = _hidden()
    assert (
        build_featurizer(FeaturizerConfig(name="layer", layer=1), L, D)(hs, torch.tensor([7, 7]))[0] is hs[1]
    )
    assert build_featurizer(FeaturizerConfig(name="last"), L, D)(hs, torch.tensor([7, 7]))[0] is hs[-1]
    with pytest.raises(ValueError, match="layer 9 is out of range .* 5 hidden states"):
        build_featurizer(FeaturizerConfig(name="layer", layer=9), L, D)


@pytest.mark.parametrize("num_hidden", [1, 2, 3, 5, 13, 25])
def test_hconv_depth_grows_with_log2_of_layers(num_hidden):
    f = HierarchicalConv(num_hidden, D, channels=4)
    assert f.depth == (math.ceil(math.log2(num_hidden)) if num_hidden > 1 else 0)
    hs = [torch.randn(B, T, D) for _ in range(num_hidden)]
    y, _ = f(hs, torch.tensor([7, 3]))
    assert y.shape == (B, T, 4)
    y.sum().backward()
    assert all(p.grad is not None for p in f.parameters())


def test_hconv_is_per_frame():
    """Frames do not mix: changing frame 3 of every layer changes output frame 3 only."""
    f = HierarchicalConv(L, D, channels=4)
    hs = _hidden()
    y0, _ = f(hs, torch.tensor([7, 7]))
    hs2 = [h.clone() for h in hs]
    for h in hs2:
        h[:, 3] += 1.0
    y1, _ = f(hs2, torch.tensor([7, 7]))
    changed = (y1 - y0).abs().sum(dim=(0, 2)) > 0
    assert changed.tolist() == [i == 3 for i in range(T)]


def test_unknown_featurizer_lists_valid_names():
    with pytest.raises(
        ValueError, match="unknown featurizer 'wsum'; valid featurizers: weighted_sum, layer, last, hconv"
    ):
        FeaturizerConfig(name="wsum")


def test_fbank_upstream_interface_and_padding_invariance():
    up = load_upstream("fbank")
    assert isinstance(up, FbankUpstream)
    assert (up.downsample_rate, up.num_layers, up.hidden_dim) == (160, 0, 240)
    g = torch.Generator().manual_seed(0)
    wav_a, wav_b = torch.randn(8000, generator=g) * 0.1, torch.randn(5000, generator=g) * 0.1
    wavs = torch.zeros(2, 8000)
    wavs[0], wavs[1, :5000] = wav_a, wav_b
    out = up(wavs, torch.tensor([8000, 5000]))
    assert len(out.hidden_states) == 1 and out.lengths.tolist() == [48, 29]  # (S - 400) // 160 + 1
    alone = up(wav_b[None], torch.tensor([5000]))
    torch.testing.assert_close(out.hidden_states[0][1, :29], alone.hidden_states[0][0], atol=1e-4, rtol=1e-4)
    assert out.hidden_states[0][1, 29:].abs().sum() == 0


def test_load_upstream_error_names_the_spec(tmp_path):
    builtins = "fbank, fbank_no_cmvn, fbank_global_cmvn"
    with pytest.raises(FileNotFoundError, match=rf"'nope' is neither a built-in upstream \({builtins}\)"):
        load_upstream("nope")
