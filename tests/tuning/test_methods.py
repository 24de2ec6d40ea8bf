"""Efficient tuning: identity at init, only tuned weights move, hand-counted fractions,
LoRA merge / prefix fold parity, save/load of tuned weights apart from the upstream, errors."""

from __future__ import annotations

import copy

import pytest
import torch

from speechssl.config import ConfigError
from speechssl.interop.upstream import Upstream
from speechssl.models.model import build_model
from speechssl.testing.models import perturb_, random_waves, tiny_config
from speechssl.tuning import (
    AdapterConfig,
    LoRAConfig,
    PrefixConfig,
    TuningConfig,
    apply_tuning,
    load_tuned,
    load_tuned_state_dict,
    merge_tuning,
    read_tuned,
    save_tuned,
    tuned_state_dict,
    tuning_config,
)

# tiny model: D=32, 2 layers, 4 heads x 8 = 32 inner, FFN 64, frontend output C=24
CONFIGS = {
    "adapter": TuningConfig(method="adapter", adapter=AdapterConfig(bottleneck_dim=8)),
    "pfeiffer": TuningConfig(method="adapter", adapter=AdapterConfig(bottleneck_dim=8, placement="pfeiffer")),
    "lora": TuningConfig(method="lora", lora=LoRAConfig(rank=4)),
    "lora_all": TuningConfig(
        method="lora",
        lora=LoRAConfig(
            rank=2, targets=("q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense")
        ),
    ),
    "prefix": TuningConfig(method="prefix", prefix=PrefixConfig(prefix_length=3, mlp_dim=5)),
    "prefix_direct": TuningConfig(method="prefix", prefix=PrefixConfig(prefix_length=3, mlp_dim=None)),
    "bitfit": TuningConfig(method="bitfit"),
    "full": TuningConfig(method="full"),
    "frozen": TuningConfig(method="frozen"),
}
IDENTITY = ["adapter", "pfeiffer", "lora", "lora_all", "prefix", "prefix_direct"]


def make_upstream(mode: str = "group_norm") -> Upstream:
    config = tiny_config(mode=mode)
    torch.manual_seed(0)
    return Upstream(perturb_(build_model(config)).eval(), config).eval()


@pytest.fixture(scope="module")
def plain() -> Upstream:
    return make_upstream()


@pytest.fixture(scope="module")
def batch():
    return random_waves([4000, 2900, 2300], seed=1)  # padded: 12, 9, 7 frames


def outputs(up: Upstream, batch) -> list[torch.Tensor]:
    with torch.no_grad():
        out = up(*batch)
    return [h.clone() for h in out.hidden_states]


def tuned(plain: Upstream, name: str) -> Upstream:
    up = copy.deepcopy(plain)
    apply_tuning(up, CONFIGS[name])
    return up


@pytest.mark.parametrize("name", IDENTITY)
def test_starts_as_identity_on_padded_batch(plain, batch, name):
    reference = outputs(plain, batch)
    got = outputs(tuned(plain, name), batch)
    assert len(got) == len(reference) == 3
    for h_ref, h in zip(reference, got):
        torch.testing.assert_close(h, h_ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "name", ["adapter", "pfeiffer", "lora", "lora_all", "prefix", "prefix_direct", "bitfit", "full"]
)
def test_one_step_moves_only_tuned_parameters(plain, batch, name):
    up = tuned(plain, name)
    before = {n: p.detach().clone() for n, p in up.named_parameters()}
    trainable = {n for n, p in up.named_parameters() if p.requires_grad}
    assert trainable == set(up.tuning.names) and trainable
    optimizer = torch.optim.AdamW([p for p in up.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    out = up(*batch)
    loss = sum((h**2).mean() for h in out.hidden_states[1:])
    loss.backward()
    optimizer.step()
    changed = set()
    for n, p in up.named_parameters():
        if n in trainable:
            if not torch.equal(p, before[n]):
                changed.add(n)
        else:
            assert p.grad is None, n
            assert torch.equal(p, before[n]), f"frozen {n} changed"
    assert changed, "no tuned parameter changed"
    assert not any(n.startswith("model.feature_extractor.") for n in trainable)
    if name != "full":  # full: masked_spec_embed is unused without masking
        assert all(p.grad is not None for n, p in up.named_parameters() if n in trainable)
    # the zero-initialised parts must be the ones that move first
    expect = {"adapter": "adapter.up.weight", "lora": "lora_B", "prefix": "attention.gate", "bitfit": ".bias"}
    key = next((v for k, v in expect.items() if name.startswith(k)), None)
    if key:
        assert any(key in n for n in changed), sorted(changed)


def test_trainable_fraction_equals_hand_count(plain):
    base = sum(p.numel() for p in plain.parameters())
    frontend = sum(p.numel() for p in plain.model.feature_extractor.parameters())
    layers, D, inner, ffn, C = 2, 32, 32, 64, 24
    adapter = (D * 8 + 8) + (8 * D + D)  # down + up, bottleneck 8
    prefix_mlp = 3 * 5 + (5 * 5 + 5) + (5 * 2 * inner + 2 * inner) + 4  # table, MLP, gate (4 heads)
    bitfit = (
        layers * (4 * D + ffn + D + 2 * D) + (C + D) + D + D
    )  # layers; projection LN+Linear; encoder LN; pos conv
    added = {
        "adapter": layers * 2 * adapter,
        "pfeiffer": layers * adapter,
        "lora": layers * 2 * 4 * (D + inner),  # q, v: rank 4 x (in + out)
        "lora_all": layers * 2 * (4 * (D + inner) + (D + ffn) + (ffn + D)),
        "prefix": layers * prefix_mlp,
        "prefix_direct": layers * (3 * 2 * inner + 4),
    }
    for name, count in added.items():
        report = apply_tuning(copy.deepcopy(plain), CONFIGS[name])
        assert (report.trainable, report.total) == (count, base + count), name
        assert report.fraction == pytest.approx(count / (base + count))
    expected = {"bitfit": bitfit, "full": base - frontend, "frozen": 0}
    for name, count in expected.items():
        report = apply_tuning(copy.deepcopy(plain), CONFIGS[name])
        assert (report.method, report.trainable, report.total) == (CONFIGS[name].method, count, base), name


def _perturb_tuned(up: Upstream, seed: int = 3) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in up.tuning.names:
            p = dict(up.named_parameters())[name]
            p.add_(0.2 * torch.randn(p.shape, generator=generator))


def test_lora_merge_gives_the_same_outputs_and_plain_keys(plain, batch):
    up = tuned(plain, "lora_all")
    _perturb_tuned(up)
    before = outputs(up, batch)
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(before, outputs(plain, batch)))
    report = merge_tuning(up)
    assert report.trainable == 0 and report.total == sum(p.numel() for p in plain.parameters())
    assert list(up.state_dict()) == list(plain.state_dict())
    assert not hasattr(up, "tuning")
    for a, b in zip(before, outputs(up, batch)):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_prefix_fold_gives_the_same_outputs_and_reloads(plain, batch, tmp_path):
    up = tuned(plain, "prefix")
    _perturb_tuned(up)
    before = outputs(up, batch)
    report = merge_tuning(up)
    assert report.trainable == 2 * (3 * 64 + 4)  # the folded prefixes and gates
    assert up.tuning.config.prefix.mlp_dim is None
    for a, b in zip(before, outputs(up, batch)):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
    fresh = copy.deepcopy(plain)
    load_tuned(fresh, save_tuned(up, tmp_path / "prefix.safetensors"))
    for a, b in zip(before, outputs(fresh, batch)):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["adapter", "lora", "prefix", "bitfit", "full"])
def test_save_load_round_trip_into_fresh_upstream(plain, batch, name, tmp_path):
    up = tuned(plain, name)
    _perturb_tuned(up)
    expected = outputs(up, batch)
    path = save_tuned(up, tmp_path / f"{name}.safetensors")
    config, state = read_tuned(path)
    assert config == CONFIGS[name] and set(state) == set(up.tuning.names)
    fresh = copy.deepcopy(plain)  # the frozen upstream, loaded apart
    report = load_tuned(fresh, path)
    assert report.trainable == sum(v.numel() for v in state.values())
    for a, b in zip(expected, outputs(fresh, batch)):
        assert torch.equal(a, b)
    assert list(tmp_path.iterdir()) == [path]  # atomic write leaves no temp file


def test_prefix_attention_is_padding_invariant():
    """Batched (padded) == one utterance at a time, with a non-identity prefix (gate off)."""
    up = make_upstream(mode="layer_norm")
    apply_tuning(up, TuningConfig(method="prefix", prefix=PrefixConfig(prefix_length=4, gate=False)))
    wavs, lens = random_waves([4000, 2300], seed=2)
    with torch.no_grad():
        out = up(wavs, lens)
        for b in range(2):
            alone = up(wavs[b : b + 1, : lens[b]], lens[b : b + 1])
            T = int(out.lengths[b])
            torch.testing.assert_close(
                out.hidden_states[-1][b, :T], alone.hidden_states[-1][0], atol=1e-5, rtol=1e-5
            )


def test_errors_name_valid_methods_and_bad_keys(plain, tmp_path):
    with pytest.raises(
        ValueError, match="unknown tuning method 'lorra'; valid: adapter, bitfit, frozen, full, lora, prefix"
    ):
        TuningConfig(method="lorra")
    with pytest.raises(ValueError, match="unknown tuning method 'houlsby'; valid: adapter"):
        tuning_config("houlsby")
    with pytest.raises(ConfigError, match="unknown key 'rnak'.*did you mean 'rank'"):
        tuning_config("lora", {"rnak": 4})
    with pytest.raises(ConfigError, match="tuning method 'full' takes no options; found \\['rank'\\]"):
        tuning_config("full", {"rank": 4})
    assert tuning_config("lora", {"rank": 4, "targets": ["q_proj"]}).lora == LoRAConfig(
        rank=4, targets=("q_proj",)
    )
    with pytest.raises(
        ValueError, match="LoRA targets must be a non-empty list of q_proj.*found \\['query'\\]"
    ):
        LoRAConfig(targets=("query",))

    up = tuned(plain, "lora")
    with pytest.raises(ValueError, match="already tuned with 'lora'"):
        apply_tuning(up, CONFIGS["lora"])
    state = tuned_state_dict(up)
    first = next(iter(state))
    broken = {k: v for k, v in state.items() if k != first} | {"model.encoder.bogus": torch.zeros(1)}
    with pytest.raises(
        ValueError, match=f"missing 1 key\\(s\\): {first}; unexpected 1 key\\(s\\): model.encoder.bogus"
    ):
        load_tuned_state_dict(up, broken)
    with pytest.raises(ValueError, match=f"'{first}' has shape \\(1,\\)"):
        load_tuned_state_dict(up, state | {first: torch.zeros(1)})
    with pytest.raises(ValueError, match="no tuning applied"):
        tuned_state_dict(copy.deepcopy(plain))
    path = save_tuned(up, tmp_path / "lora.safetensors")
    with pytest.raises(ValueError, match="was tuned with"):
        load_tuned(tuned(plain, "adapter"), path)
    with pytest.raises(ValueError, match="needs an upstream with a transformer encoder"):
        apply_tuning(torch.nn.Linear(2, 2), CONFIGS["lora"])
