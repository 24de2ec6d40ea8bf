"""DPHuBERT pruning of the zoo: a pruned WavLM (heads cut unevenly, a whole attention block
removed from the layer that held the shared relative position table) equals its gated model,
counts exactly, and rebuilds from its config.yaml; data2vec-audio and UniSpeech-SAT too."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from speechssl import load_upstream
from speechssl.cli.main import main
from speechssl.compression import GatedModel, GatesConfig, prune_model
from speechssl.compression.distill import count_params
from speechssl.config import load_yaml
from speechssl.models import build_model, get_preset, save_checkpoint
from speechssl.models.config import ModelConfig
from speechssl.models.encoder import RelativeSelfAttention
from speechssl.testing.datadirs import make_data_dir
from speechssl.testing.models import perturb_, random_waves

# padded batch, longest 45 frames: relative distances past max_distance (32 frames) and the
# log-spaced buckets in between are all used
LENGTHS = [14720, 9000, 5333]
TABLE = "attention.rel_attn_embed.weight"


def _zoo(name: str, *, num_layers: int = 4, **encoder) -> ModelConfig:
    """A tiny preset with more layers, dropout off (eval mode is what the equality is about)."""
    config = get_preset(name)
    return dataclasses.replace(
        config, encoder=dataclasses.replace(config.encoder, num_layers=num_layers, **encoder)
    )


def _unispeech_sat_tiny() -> ModelConfig:
    """UniSpeech-SAT has no tiny preset: the wav2vec 2.0 tiny network, pre-LN, odd head count."""
    config = _zoo("wav2vec2_tiny", num_layers=3, embed_dim=60, num_heads=3, layer_norm_first=True)
    return dataclasses.replace(config, family="unispeech_sat")


def _gated(config: ModelConfig, seed: int = 0) -> GatedModel:
    torch.manual_seed(seed)
    return GatedModel(perturb_(build_model(config), seed=seed), config, GatesConfig())


def _set_gates(gated: GatedModel, values: dict[str, list[float]], seed: int = 0) -> GatedModel:
    """Fix the named gates to `values`; every other gate gets seeded values in (0.3, 1] or 0 (so
    folding a gate value, not only a 0/1 mask, is checked)."""
    generator = torch.Generator().manual_seed(seed)
    for key, gate in gated.gates.items():
        if key in values:
            z = torch.tensor(values[key], dtype=torch.float32)
        else:
            z = 0.3 + 0.7 * torch.rand(gate.num_units, generator=generator)
            z[torch.rand(gate.num_units, generator=generator) < 0.25] = 0.0
            if not (z > 0).any():
                z[0] = 0.5
        gate.fix(z)
    return gated.eval()


def _max_error(a, b) -> float:
    valid = (~a.padding_mask)[..., None]
    return max(((x - y).abs() * valid).max().item() for x, y in zip(a.hidden_states, b.hidden_states))


def _outputs(model, lengths=LENGTHS):
    wavs, lens = random_waves(lengths, seed=5)
    with torch.no_grad():
        return model(wavs, lens)


# wavlm_tiny at 4 layers, 5 heads of 12: layer 0 loses its attention block by its block gate (its
# head gates stay open), layer 1 keeps heads 1 and 3, layer 2 loses every head, layer 3 keeps 0, 2, 4
WAVLM_GATES = {
    "attention_0": [0.0],
    "heads_1": [0.0, 0.9, 0.0, 0.4, 0.0],
    "attention_1": [0.7],
    "heads_2": [0.0] * 5,
    "heads_3": [0.8, 0.0, 0.6, 0.0, 1.0],
}


@pytest.mark.parametrize("layer_norm_first", [False, True], ids=["post_ln", "pre_ln"])
def test_pruned_wavlm_equals_gated_wavlm(layer_norm_first):
    config = _zoo("wavlm_tiny", layer_norm_first=layer_norm_first)
    gated = _set_gates(_gated(config), WAVLM_GATES)
    expected = _outputs(gated)
    model, new_config = prune_model(gated)
    error = _max_error(expected, _outputs(model.eval()))
    assert error < 1e-5, error
    enc = new_config.encoder
    assert enc.layer_num_heads == [0, 2, 0, 3]
    assert enc.layer_head_index == [[], [1, 3], [], [0, 2, 4]]
    # the shared table (every original head) moved to layer 1, the first layer that still attends
    state = model.state_dict()
    assert [k for k in state if k.endswith(TABLE)] == [f"encoder.layers.1.{TABLE}"]
    torch.testing.assert_close(
        state[f"encoder.layers.1.{TABLE}"], gated.model.state_dict()[f"encoder.layers.0.{TABLE}"]
    )
    assert state["encoder.layers.3.attention.gru_rel_pos_const"].shape == (1, 3, 1, 1)
    assert count_params(model) == gated.deterministic_params()


def test_wavlm_head_gates_alone_and_a_second_pruning_compose_head_indices():
    """Layer 0 keeps its attention (the table stays there); pruning the pruned model again maps
    its head indices back to the original heads."""
    config = _zoo("wavlm_tiny", num_layers=3)
    gated = _set_gates(_gated(config, seed=1), {"heads_0": [0.5, 0.0, 1.0, 0.0, 0.7]}, seed=1)
    model, first = prune_model(gated)
    assert first.encoder.layer_head_index[0] == [0, 2, 4]
    assert f"encoder.layers.0.{TABLE}" in model.state_dict()
    again = _set_gates(
        GatedModel(model, first, GatesConfig(conv_channels=False)), {"heads_0": [0.0, 0.6, 0.9]}, seed=2
    )
    expected = _outputs(again)
    model2, second = prune_model(again)
    assert second.encoder.layer_head_index[0] == [2, 4]
    assert _max_error(expected, _outputs(model2.eval())) < 1e-5
    assert count_params(model2) == again.deterministic_params()


def test_wavlm_without_any_attention_drops_the_table_and_counts_it():
    config = _zoo("wavlm_tiny", num_layers=2)
    gated = _set_gates(_gated(config), {"attention_0": [0.0], "attention_1": [0.0]})
    expected = _outputs(gated)
    model, new_config = prune_model(gated)
    assert new_config.encoder.layer_num_heads == [0, 0]
    assert not any(k.endswith(TABLE) for k in model.state_dict())
    assert _max_error(expected, _outputs(model.eval())) < 1e-5
    assert count_params(model) == gated.deterministic_params()


def test_wavlm_counting_formula_equals_removed_parameters_for_many_masks():
    gated = _gated(_zoo("wavlm_tiny"))
    assert gated.fixed_params + gated.prunable_params(gated._ones()) == count_params(gated.model)
    for seed in range(4):
        _set_gates(gated, {}, seed=seed)
        assert count_params(prune_model(gated)[0]) == gated.deterministic_params()


def test_fixed_wavlm_gates_hit_the_target_and_the_dense_count():
    gated = _gated(_zoo("wavlm_tiny"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for gate in gated.gates.values():
            gate.log_alpha_scaled.copy_(3 * torch.randn(gate.num_units, generator=generator) / gate.lr_scale)
    gated.eval()
    target = round(0.5 * gated.full_params)
    count = gated.fix_gates(target)
    assert abs(count - target) / target < 0.02
    model, _ = prune_model(gated)
    assert count_params(model) == count


def test_pruned_wavlm_config_yaml_rebuilds_it_through_load_upstream(tmp_path):
    gated = _set_gates(_gated(_zoo("wavlm_tiny")), WAVLM_GATES)
    model, config = prune_model(gated)
    out = save_checkpoint(model, config, tmp_path / "pruned")
    written = load_yaml(out / "config.yaml")["encoder"]
    assert written["layer_head_index"] == [[], [1, 3], [], [0, 2, 4]]
    assert written["layer_num_heads"] == [0, 2, 0, 3]
    upstream = load_upstream(out)
    assert upstream.config == config
    attention = upstream.model.encoder.layers[3].attention
    assert isinstance(attention, RelativeSelfAttention) and attention.head_index == [0, 2, 4]
    a, b = _outputs(model.eval()), _outputs(upstream)
    for x, y in zip(a.hidden_states, b.hidden_states):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["data2vec_audio", "unispeech_sat"])
def test_pruned_data2vec_and_unispeech_sat_equal_their_gated_models(name):
    config = _zoo("data2vec_tiny", num_layers=3) if name == "data2vec_audio" else _unispeech_sat_tiny()
    gated = _set_gates(_gated(config), {"ffn_1": [0.0], "heads_2": [0.0] * config.encoder.num_heads})
    # data2vec's layer-norm conv frontend normalises over channels: no conv gates (the rule kept)
    assert any(k.startswith("conv_") for k in gated.gates) == (name == "unispeech_sat")
    expected = _outputs(gated)
    model, new_config = prune_model(gated)
    assert _max_error(expected, _outputs(model.eval())) < 1e-5
    assert new_config.family == name and new_config.encoder.layer_head_index is None
    assert new_config.encoder.layer_ffn_dims[1] == 0 and new_config.encoder.layer_num_heads[2] == 0
    assert count_params(model) == gated.deterministic_params()


def test_layer_head_index_errors():
    enc = _zoo("wavlm_tiny", num_layers=2).encoder
    with pytest.raises(ValueError, match="layer_head_index must list, per layer"):
        dataclasses.replace(enc, layer_num_heads=[2, 1], layer_head_index=[[0, 1], [5]])
    with pytest.raises(ValueError, match="layer_head_index must list, per layer"):
        dataclasses.replace(enc, layer_num_heads=[2, 1], layer_head_index=[[1, 0], [2]])
    with pytest.raises(ValueError, match="layer_head_index must list, per layer"):
        dataclasses.replace(enc, layer_num_heads=[2, 1], layer_head_index=[[0, 1]])


@pytest.mark.slow
def test_cli_prune_of_a_wavlm_teacher_then_onnx_export(tmp_path):
    """`speechssl prune` end to end on a perturbed 3-layer WavLM tiny teacher (3 steps, fixed to half
    the parameters, one final distillation step), then `speechssl export --format onnx` of the
    result (the exporter checks onnxruntime against PyTorch at other shapes)."""
    config = _zoo("wavlm_tiny", num_layers=3)
    save_checkpoint(perturb_(build_model(config), scale=0.05), config, tmp_path / "teacher")
    data = make_data_dir(tmp_path, num_speakers=2, utts_per_speaker=2)
    (tmp_path / "prune.yaml").write_text(
        "target_sparsity: 0.5\ndistill_layers: [1, 3]\n"
        "data: {max_batch_seconds: 4.0, max_seconds: 1.0, num_buckets: 2}\n"
        "trainer: {max_steps: 100, lr: 0.002, save_every: 100, log_every: 1}\n"
    )
    args = ["--teacher", str(tmp_path / "teacher"), "--train", str(data.path), "--max-steps", "3"]
    prune_args = ["--config", str(tmp_path / "prune.yaml"), "--final-distill-steps", "1"]
    assert main(["prune", *args, *prune_args, "--out", str(tmp_path / "exp")]) == 0
    summary = json.loads((tmp_path / "exp" / "prune_summary.json").read_text())
    final = load_upstream(tmp_path / "exp" / "final")
    enc = final.config.encoder
    assert summary["layer_head_index"] == enc.layer_head_index and len(enc.layer_head_index) == 3
    assert [len(kept) for kept in enc.layer_head_index] == enc.layer_num_heads == summary["layer_num_heads"]
    assert sum(p.numel() for p in final.parameters()) == summary["pruned_params"]
    out = tmp_path / "final.onnx"
    assert (
        main(["export", "--upstream", str(tmp_path / "exp" / "final"), "--format", "onnx", "--out", str(out)])
        == 0
    )
