"""DPHuBERT pruning: exact removal (outputs and counts), the Lagrangian reaching the target,
the fixed gates' count at the target, save -> load_upstream."""

from __future__ import annotations

import pytest
import torch

from speechssl import load_upstream
from speechssl.compression import GatedModel, GatesConfig, PruneConfig, build_pruner, prune_model
from speechssl.compression.distill import count_params
from speechssl.data.dataset import Batch
from speechssl.models import build_model, save_checkpoint
from speechssl.testing.models import perturb_, random_waves, tiny_config


def _random_gates(gated: GatedModel, seed: int = 0) -> GatedModel:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in gated.gates.values():
            gate.log_alpha_scaled.copy_(3 * torch.randn(gate.num_units, generator=generator) / gate.lr_scale)
    return gated


def _gated(layer_norm_first: bool = False, num_layers: int = 3, **gates) -> GatedModel:
    config = tiny_config(layer_norm_first=layer_norm_first, num_layers=num_layers)
    torch.manual_seed(0)
    return GatedModel(perturb_(build_model(config)), config, GatesConfig(**gates))


def _max_error(a, b) -> float:
    valid = (~a.padding_mask)[..., None]
    return max(((x - y).abs() * valid).max().item() for x, y in zip(a.hidden_states, b.hidden_states))


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_dense_model_equals_gated_model_in_eval(layer_norm_first):
    gated = _random_gates(_gated(layer_norm_first))
    with torch.no_grad():  # one whole FFN by its units, one attention block by its block gate
        gated.gates["ffn_units_1"].log_alpha_scaled.fill_(-1.0)
        gated.gates["attention_2"].log_alpha_scaled.fill_(-1.0)
    gated.eval()
    wavs, lens = random_waves([8000, 5000, 6400])
    with torch.no_grad():
        expected = gated(wavs, lens)
        model, config = prune_model(gated)
        got = model.eval()(wavs, lens)
    assert _max_error(expected, got) < 1e-5
    assert config.encoder.layer_ffn_dims[1] == 0 and config.encoder.layer_num_heads[2] == 0
    assert model.encoder.layers[1].feed_forward is None and model.encoder.layers[2].attention is None
    assert config.frontend.conv_dim[-1] == 24  # the last conv layer feeds a LayerNorm: never pruned
    assert min(config.frontend.conv_dim[:-1]) < 16  # the others were
    assert count_params(model) == gated.deterministic_params()


def test_counting_formula_equals_removed_parameters_for_many_masks():
    gated = _gated()
    for seed in range(5):
        _random_gates(gated, seed).eval()
        model, _ = prune_model(gated)
        assert count_params(model) == gated.deterministic_params()
    assert gated.fixed_params + gated.prunable_params(gated._ones()) == count_params(gated.model)


def test_fixed_gates_hit_the_target_and_the_dense_count():
    gated = _random_gates(_gated()).eval()
    target = round(0.4 * gated.full_params)
    count = gated.fix_gates(target)
    assert abs(count - target) / target < 0.02
    model, _ = prune_model(gated)
    assert count_params(model) == count == gated.deterministic_params()


def test_lagrangian_drives_expected_sparsity_to_target():
    """The expected count's gradient + dual ascent on the multipliers alone reach the target
    (Adam on log_alpha, as the Trainer; beta1 0 so 400 fast steps damp the oscillation)."""
    config = tiny_config(num_layers=2)
    teacher = build_model(config).eval()
    prune_config = PruneConfig(target_sparsity=0.5, lambda_lr=1.0, gates=GatesConfig(lr_scale=1.0))
    pruner = build_pruner(teacher, config, prune_config).train()
    gates = [p for n, p in pruner.named_parameters() if "log_alpha" in n]
    optimizer = torch.optim.AdamW(gates, lr=0.05, betas=(0.0, 0.98), weight_decay=0.0)
    for step in range(400):
        term, metrics = pruner.lagrangian()
        optimizer.zero_grad()
        term.backward()
        optimizer.step()
        pruner.set_num_updates(step + 1)
    assert abs(float(metrics["expected_sparsity"]) - 0.5) < 0.02
    assert float(metrics["lambda2"]) > 0  # maximised: gap^2 >= 0 only ever raises it
    gated = pruner.student.eval()
    count = gated.fix_gates(pruner.target_params)
    model, _ = prune_model(gated)
    assert count_params(model) == count
    assert abs(count - pruner.target_params) / pruner.target_params < 0.02


def test_joint_step_trains_gates_and_student_but_never_the_teacher():
    config = tiny_config(num_layers=2)
    teacher = perturb_(build_model(config)).eval()
    pruner = build_pruner(teacher, config, PruneConfig(target_sparsity=0.5)).train()
    assert not pruner.teacher.training and pruner.student.training
    before = {k: v.clone() for k, v in pruner.teacher.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in pruner.parameters() if p.requires_grad], lr=1e-2)
    wavs, lens = random_waves([2400, 1600])
    batch = Batch(utt_ids=["a", "b"], wavs=wavs, wav_lens=lens)
    for step in range(3):
        loss, metrics = pruner(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.set_num_updates(step + 1)
    assert all(p.grad is None for p in pruner.teacher.parameters())
    assert all(p.grad is not None for n, p in pruner.named_parameters() if "log_alpha" in n)
    assert all(torch.equal(v, before[k]) for k, v in pruner.teacher.state_dict().items())
    assert float(pruner.lambdas[1]) > 0 and {"distill", "expected_sparsity", "l1_2"} <= set(metrics)
    state = pruner.state_dict()
    assert "lambdas" in state and not any(k.startswith("teacher.") for k in state)
    pruner.load_state_dict(state)  # the teacher is filled in from the live one


def test_pruned_model_round_trips_through_load_upstream(tmp_path):
    gated = _random_gates(_gated()).eval()
    gated.fix_gates(round(0.5 * gated.full_params))
    model, config = prune_model(gated)
    save_checkpoint(model, config, tmp_path / "pruned")
    upstream = load_upstream(tmp_path / "pruned")
    wavs, lens = random_waves([6000, 4000])
    with torch.no_grad():
        a = model.eval()(wavs, lens)
        b = upstream(wavs, lens)
    assert upstream.config.encoder.layer_num_heads == config.encoder.layer_num_heads
    for x, y in zip(a.hidden_states, b.hidden_states):
        torch.testing.assert_close(x, y, atol=0, rtol=0)


def test_layer_norm_frontend_keeps_conv_channels():
    config = tiny_config(mode="layer_norm", conv_bias=True)
    gated = GatedModel(build_model(config), config, GatesConfig())
    assert not any(k.startswith("conv_") for k in gated.gates)
    _random_gates(gated).eval()
    wavs, lens = random_waves([5000, 4000])
    with torch.no_grad():
        assert _max_error(gated(wavs, lens), prune_model(gated)[0].eval()(wavs, lens)) < 1e-5


def test_errors():
    with pytest.raises(ValueError, match="no structure to prune"):
        _gated(conv_channels=False, heads=False, attention=False, ffn_units=False, ffn=False)
    with pytest.raises(ValueError, match="target_sparsity must be in"):
        PruneConfig(target_sparsity=1.0)
    with pytest.raises(ValueError, match=r"distill_layers \[4, 8, 12\] exceed the teacher's 2 layers"):
        PruneConfig(distill_layers=[4, 8, 12]).layers_for(2)
