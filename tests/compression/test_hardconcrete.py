"""HardConcrete gates: sampling range, L0 probability, deterministic evaluation values."""

from __future__ import annotations

import pytest
import torch

from speechssl.compression.hardconcrete import HardConcrete


def test_samples_are_clamped_and_keep_prob_matches_monte_carlo():
    torch.manual_seed(0)
    gate = HardConcrete(5)
    with torch.no_grad():
        gate.log_alpha_scaled.copy_(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]))
    samples = torch.stack([gate.sample() for _ in range(20000)])  # (N, 5)
    assert samples.min() == 0.0 and samples.max() == 1.0  # exact zeros and ones occur
    nonzero = (samples > 0).float().mean(0)
    torch.testing.assert_close(nonzero, gate.keep_prob().detach(), atol=0.015, rtol=0)


def test_eval_is_deterministic_and_zeros_match_expected_count():
    gate = HardConcrete(10).eval()
    with torch.no_grad():
        gate.log_alpha_scaled.copy_(torch.linspace(-4, 4, 10))
    a, b = gate(), gate()
    assert torch.equal(a, b)
    expected_zeros = round(10 - gate.l0_norm().item())
    assert int((a == 0).sum()) == expected_zeros
    assert torch.equal((a == 0).nonzero().flatten(), torch.arange(expected_zeros))  # lowest log_alpha first
    assert (a[expected_zeros:] > 0).all()


def test_keep_prob_has_gradient_and_lr_scale_reparametrises():
    gate = HardConcrete(3, lr_scale=50.0, init_keep_prob=0.9)
    torch.testing.assert_close(gate.log_alpha, torch.full((3,), torch.logit(torch.tensor(0.9)).item()))
    gate.l0_norm().backward()
    assert gate.log_alpha_scaled.grad is not None and (gate.log_alpha_scaled.grad > 0).all()


def test_fixed_values_override_the_rule():
    gate = HardConcrete(3).eval()
    gate.fix(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(gate(), torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        gate.fix(torch.ones(4))


def test_bad_arguments():
    with pytest.raises(ValueError, match="init_keep_prob must be in"):
        HardConcrete(3, init_keep_prob=1.0)
    with pytest.raises(ValueError, match="num_units must be > 0"):
        HardConcrete(0)
