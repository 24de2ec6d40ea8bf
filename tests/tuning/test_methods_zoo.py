"""Efficient tuning on the new families (WavLM, data2vec-audio, UniSpeech-SAT): identity at init on
padded batches with the presets' dropout on (the injected modules follow the model's eval mode),
WavLM prefix attention (bias 0 for prefix keys, the shared table and gates keep their keys), merge /
fold parity, save/load into a fresh upstream."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from speechssl.interop.upstream import Upstream
from speechssl.models.model import build_model
from speechssl.models.presets import get_preset
from speechssl.models.relative_position import gated_position_bias
from speechssl.testing.models import perturb_, random_waves
from speechssl.tuning import (
    AdapterConfig,
    LoRAConfig,
    PrefixConfig,
    PrefixSelfAttention,
    TuningConfig,
    apply_tuning,
    load_tuned,
    merge_tuning,
    save_tuned,
)

CONFIGS = {
    "houlsby": TuningConfig(method="adapter", adapter=AdapterConfig(bottleneck_dim=6, dropout=0.1)),
    "pfeiffer": TuningConfig(method="adapter", adapter=AdapterConfig(bottleneck_dim=6, placement="pfeiffer")),
    "lora_all": TuningConfig(
        method="lora",
        lora=LoRAConfig(
            rank=3,
            dropout=0.1,
            targets=("q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense"),
        ),
    ),
    "prefix": TuningConfig(method="prefix", prefix=PrefixConfig(prefix_length=3, mlp_dim=7)),
    "prefix_direct": TuningConfig(method="prefix", prefix=PrefixConfig(prefix_length=5, mlp_dim=None)),
    "bitfit": TuningConfig(method="bitfit"),
}
IDENTITY = ["houlsby", "pfeiffer", "lora_all", "prefix", "prefix_direct"]


def unispeech_sat_tiny():
    """The wav2vec 2.0-style tiny network under the unispeech_sat family (no preset of its own)."""
    config = get_preset("wavlm_tiny")
    encoder = dataclasses.replace(config.encoder, relative_position_buckets=0)
    return dataclasses.replace(config, family="unispeech_sat", encoder=encoder)


def make_upstream(preset: str, **frontend) -> Upstream:
    """A perturbed tiny upstream in eval mode; the presets keep their dropout (0.1), so a module
    left in training mode by a tuning method would show."""
    config = unispeech_sat_tiny() if preset == "unispeech_sat_tiny" else get_preset(preset)
    if frontend:
        config = dataclasses.replace(config, frontend=dataclasses.replace(config.frontend, **frontend))
    torch.manual_seed(0)
    return Upstream(perturb_(build_model(config), seed=4).eval(), config).eval()


@pytest.fixture(scope="module", params=["wavlm_tiny", "data2vec_tiny"])
def plain(request) -> Upstream:
    return make_upstream(request.param)


@pytest.fixture(scope="module")
def batch():
    return random_waves([4100, 2900, 2300], seed=1)  # padded: 12, 9, 7 frames


def outputs(up: Upstream, batch) -> list[torch.Tensor]:
    with torch.no_grad():
        return [h.clone() for h in up(*batch).hidden_states]


def tuned(plain: Upstream, name: str) -> Upstream:
    up = copy.deepcopy(plain)
    apply_tuning(up, CONFIGS[name])
    return up


def _perturb_tuned(up: Upstream, seed: int = 3, scale: float = 0.2) -> None:
    generator = torch.Generator().manual_seed(seed)
    params = dict(up.named_parameters())
    with torch.no_grad():
        for name in up.tuning.names:
            params[name].add_(scale * torch.randn(params[name].shape, generator=generator))


@pytest.mark.parametrize("name", IDENTITY)
def test_starts_as_identity_on_padded_batch(plain, batch, name):
    reference = outputs(plain, batch)
    up = tuned(plain, name)
    assert not any(m.training for m in up.modules())
    got = outputs(up, batch)
    assert len(got) == len(reference) == 3
    for h_ref, h in zip(reference, got):
        torch.testing.assert_close(h, h_ref, atol=1e-6, rtol=0)


def test_unispeech_sat_starts_as_identity(batch):
    plain = make_upstream("unispeech_sat_tiny")
    reference = outputs(plain, batch)
    for name in IDENTITY:
        for h_ref, h in zip(reference, outputs(tuned(plain, name), batch)):
            torch.testing.assert_close(h, h_ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["houlsby", "lora_all", "prefix", "bitfit"])
def test_one_step_moves_only_tuned_parameters(plain, batch, name):
    up = tuned(plain, name)
    up.train()
    before = {n: p.detach().clone() for n, p in up.named_parameters()}
    trainable = {n for n, p in up.named_parameters() if p.requires_grad}
    assert trainable == set(up.tuning.names) and trainable
    optimizer = torch.optim.AdamW([p for p in up.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    out = up(*batch)
    sum((h**2).mean() for h in out.hidden_states[1:]).backward()
    optimizer.step()
    changed = {n for n in trainable if not torch.equal(dict(up.named_parameters())[n], before[n])}
    for n, p in up.named_parameters():
        if n not in trainable:
            assert p.grad is None and torch.equal(p, before[n]), f"frozen {n} changed"
    assert changed, "no tuned parameter changed"
    # WavLM's shared table and gates are frozen by every method but BitFit (the gate Linear's bias)
    frozen = [n for n in before if "rel_attn_embed" in n or "gru_rel_pos_const" in n]
    assert not set(frozen) & trainable


def test_prefix_keeps_the_wavlm_keys_and_the_shared_table():
    plain = make_upstream("wavlm_tiny")
    up = tuned(plain, "prefix")
    keys = set(up.state_dict())
    assert set(plain.state_dict()) <= keys
    assert "model.encoder.layers.0.attention.rel_attn_embed.weight" in keys
    assert "model.encoder.layers.1.attention.gru_rel_pos_const" in keys
    layer0 = up.model.encoder.layers[0].attention
    assert isinstance(layer0, PrefixSelfAttention)
    torch.testing.assert_close(
        layer0.rel_attn_embed.weight, plain.model.encoder.layers[0].attention.rel_attn_embed.weight
    )


def test_wavlm_prefix_keys_get_bias_zero():
    """Li & Liang prefix attention (gate off) on a WavLM layer equals a hand-written softmax in
    which frame keys carry the gated relative bias and the P prefix keys carry none."""
    up = make_upstream("wavlm_tiny")
    apply_tuning(up, TuningConfig(method="prefix", prefix=PrefixConfig(prefix_length=4, gate=False)))
    _perturb_tuned(up)
    encoder = up.model.encoder
    attention = encoder.layers[1].attention
    B, T, D = 2, 11, encoder.layers[1].layer_norm.normalized_shape[0]
    H, d = attention.num_heads, attention.head_dim
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(B, T, D, generator=generator)
    padding = torch.zeros(B, T, dtype=torch.bool)
    padding[1, 8:] = True
    with torch.no_grad():
        position = encoder.relative_position(encoder.layers[0].attention.rel_attn_embed, T, x.dtype)
        got = attention(x, padding, position)
        bias = gated_position_bias(x, position, attention.gru_rel_pos_linear, attention.gru_rel_pos_const, d)

        def heads(t, n):
            return t.reshape(-1, n, H, d).transpose(1, 2)

        prefix = attention.prefix()
        P = prefix.shape[0]
        pk, pv = (heads(t, P).expand(B, H, P, d) for t in prefix.chunk(2, dim=-1))
        q = heads(attention.q_proj(x), T)
        k = torch.cat([pk, heads(attention.k_proj(x), T)], dim=2)
        v = torch.cat([pv, heads(attention.v_proj(x), T)], dim=2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, H, T, P + T)
        scores = scores + F.pad(bias, (P, 0), value=0.0)
        scores = scores.masked_fill(F.pad(padding, (P, 0), value=False)[:, None, None, :], float("-inf"))
        y = scores.softmax(-1) @ v  # (B, H, T, d)
        expected = attention.out_proj(y.transpose(1, 2).reshape(B, T, H * d))
    assert (got - expected).abs().max() < 1e-5


def test_wavlm_prefix_is_padding_invariant():
    """Batched (padded) == one utterance at a time with a non-identity prefix (gate off), WavLM on a
    layer-norm frontend (a group-norm one is not padding invariant by construction)."""
    up = make_upstream("wavlm_tiny", mode="layer_norm")
    apply_tuning(up, TuningConfig(method="prefix", prefix=PrefixConfig(prefix_length=4, gate=False)))
    _perturb_tuned(up)
    wavs, lens = random_waves([4100, 2300], seed=2)
    with torch.no_grad():
        out = up(wavs, lens)
        for b in range(2):
            alone = up(wavs[b : b + 1, : lens[b]], lens[b : b + 1])
            T = int(out.lengths[b])
            for h, h_alone in zip(out.hidden_states, alone.hidden_states):
                torch.testing.assert_close(h[b, :T], h_alone[0], atol=1e-5, rtol=1e-5)


def test_prefix_on_pruned_wavlm_heads_starts_as_identity(batch):
    """A head-pruned WavLM layer (3 of 5 heads, `head_index`) keeps its table columns and gate
    chunks through the prefix wrapper."""
    config = get_preset("wavlm_tiny")
    config = dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, layer_num_heads=[5, 3]))
    torch.manual_seed(0)
    model = perturb_(build_model(config), seed=6).eval()
    model.encoder.layers[1].attention.head_index = [0, 2, 4]
    plain = Upstream(model, config).eval()
    reference = outputs(plain, batch)
    up = copy.deepcopy(plain)
    apply_tuning(up, CONFIGS["prefix"])
    assert up.model.encoder.layers[1].attention.head_index == [0, 2, 4]
    for h_ref, h in zip(reference, outputs(up, batch)):
        torch.testing.assert_close(h, h_ref, atol=1e-6, rtol=0)
    _perturb_tuned(up)
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(reference, outputs(up, batch)))


def test_lora_merge_gives_the_same_outputs_and_plain_keys(plain, batch):
    up = tuned(plain, "lora_all")
    _perturb_tuned(up, scale=0.05)  # scaling alpha / rank = 16 / 3: larger updates round off beyond 1e-5
    before = outputs(up, batch)
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(before, outputs(plain, batch)))
    merge_tuning(up)
    assert list(up.state_dict()) == list(plain.state_dict())
    for a, b in zip(before, outputs(up, batch)):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_prefix_fold_gives_the_same_outputs_and_reloads(plain, batch, tmp_path):
    up = tuned(plain, "prefix")
    _perturb_tuned(up)
    before = outputs(up, batch)
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(before, outputs(plain, batch)))
    merge_tuning(up)
    assert up.tuning.config.prefix.mlp_dim is None
    for a, b in zip(before, outputs(up, batch)):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
    fresh = copy.deepcopy(plain)
    load_tuned(fresh, save_tuned(up, tmp_path / "prefix.safetensors"))
    for a, b in zip(before, outputs(fresh, batch)):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["houlsby", "bitfit"])
def test_save_load_round_trip_into_fresh_upstream(plain, batch, name, tmp_path):
    up = tuned(plain, name)
    _perturb_tuned(up)
    expected = outputs(up, batch)
    fresh = copy.deepcopy(plain)
    load_tuned(fresh, save_tuned(up, tmp_path / f"{name}.safetensors"))
    for a, b in zip(expected, outputs(fresh, batch)):
        assert torch.equal(a, b)
