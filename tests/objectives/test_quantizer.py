"""Gumbel product quantizer: hard codes, temperature schedule, perplexities, gradients."""

import math

import pytest
import torch

from speechssl.models.quantizer import (
    GumbelVectorQuantizer,
    QuantizerConfig,
    annealed_temperature,
    perplexity,
)


def _quantizer(**kw):
    torch.manual_seed(0)
    cfg = QuantizerConfig(num_groups=2, num_vars=8, codevector_dim=12, **kw)
    return GumbelVectorQuantizer(16, cfg)


def test_training_codes_are_hard_one_hot_with_straight_through_gradient():
    q = _quantizer().train()
    x = torch.randn(3, 20, 16, requires_grad=True)
    out = q(x, generator=torch.Generator().manual_seed(0))
    assert out.codevectors.shape == (3, 20, 12)
    book = q.codevectors.detach().view(2, 8, 6)
    # every frame's group slice is exactly one codebook entry
    for g in range(2):
        piece = out.codevectors.detach().view(-1, 2, 6)[:, g]  # (N, 6)
        dist = (piece[:, None] - book[g][None]).abs().amax(-1)  # (N, 8)
        assert (dist.min(-1).values == 0).all()
    out.codevectors.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # soft gradient reaches the input
    assert q.weight_proj.weight.grad.abs().sum() > 0


def test_eval_takes_argmax_and_is_deterministic():
    q = _quantizer().eval()
    x = torch.randn(2, 10, 16)
    a, b = q(x), q(x)
    assert torch.equal(a.codevectors, b.codevectors)
    codes = q.weight_proj(x).view(2, 10, 2, 8).argmax(-1)
    assert torch.equal(a.codes, codes)
    expected = torch.stack([q.codevectors[0, g * 8 + codes[..., g]] for g in range(2)], dim=-2).flatten(-2)
    assert torch.equal(a.codevectors, expected)


def test_temperature_annealing_matches_fairseq_schedule():
    q = _quantizer(max_temp=2.0, min_temp=0.5, temp_decay=0.9)
    assert q.temperature == 2.0
    for n in (0, 1, 5, 13, 14, 1000):
        q.set_num_updates(n)
        assert q.temperature == max(2.0 * 0.9**n, 0.5)
    assert annealed_temperature(13, 2.0, 0.5, 0.9) == 2.0 * 0.9**13  # 0.508 > min
    assert annealed_temperature(14, 2.0, 0.5, 0.9) == 0.5


def test_perplexity_uniform_and_masked():
    uniform = torch.full((5, 2, 8), 1 / 8)
    assert math.isclose(perplexity(uniform).item(), 16.0, rel_tol=1e-6)
    onehot = torch.zeros(4, 1, 8)
    onehot[torch.arange(4), 0, torch.tensor([0, 1, 2, 2])] = 1
    assert math.isclose(
        perplexity(onehot).item(), math.exp(-(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))), rel_tol=1e-6
    )
    # only weighted frames count
    third = math.exp(-(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3)))  # codes 0, 2, 2
    assert math.isclose(perplexity(onehot, torch.tensor([1, 0, 1, 1])).item(), third, rel_tol=1e-6)
    assert math.isclose(perplexity(onehot, torch.tensor([0, 0, 1, 1])).item(), 1.0)


def test_config_validation():
    with pytest.raises(ValueError, match="not divisible by num_groups"):
        QuantizerConfig(num_groups=3, codevector_dim=256)
    with pytest.raises(ValueError, match="min_temp <= max_temp"):
        QuantizerConfig(min_temp=3.0)
