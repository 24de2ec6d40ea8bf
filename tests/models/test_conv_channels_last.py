"""The conv frontend's channels-last path (what runs on CUDA) computes the 1-D path's values and
gradients, for both norm modes, and DPHuBERT's conv channel gates still scale its channels."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from speechssl.compression.config import GatesConfig
from speechssl.compression.prune import GatedModel
from speechssl.models.frontends import build_conv_frontend
from speechssl.models.model import build_model
from speechssl.models.presets import get_preset
from speechssl.testing.models import perturb_, random_waves


def _frontend(mode: str):
    config = replace(get_preset("hubert_tiny").frontend, mode=mode)
    torch.manual_seed(0)
    return perturb_(build_conv_frontend(config), seed=2)


@pytest.mark.parametrize("mode", ["group_norm", "layer_norm"])
def test_channels_last_stack_equals_the_1d_stack(mode):
    frontend = _frontend(mode)
    wavs, _ = random_waves([6011, 4417, 5003], seed=1)
    outputs, grads = [], []
    for channels_last in (False, True):
        x = wavs.clone().requires_grad_()
        y = frontend.stack(x, channels_last=channels_last)
        (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
        outputs.append(y.detach())
        grads.append({n: p.grad.clone() for n, p in frontend.named_parameters()} | {"input": x.grad})
        frontend.zero_grad(set_to_none=True)
    assert outputs[1].shape == outputs[0].shape  # (B, T, C)
    assert torch.allclose(outputs[1], outputs[0], atol=1e-5, rtol=1e-5), float(
        (outputs[1] - outputs[0]).abs().max()
    )
    for name, grad in grads[0].items():
        error = float((grads[1][name] - grad).abs().max() / grad.abs().max().clamp(min=1e-8))
        assert error < 1e-4, f"{name}: relative gradient error {error:.2e}"


def test_pruning_gates_scale_the_channels_last_output():
    config = get_preset("hubert_tiny")
    torch.manual_seed(0)
    model = perturb_(build_model(config), seed=2)
    gated = GatedModel(model, config, GatesConfig())
    z = torch.ones(config.frontend.conv_dim[0])
    z[::2] = 0.0
    dims = config.frontend.conv_dim
    gated._values = {f"conv_{i}": z if i == 0 else torch.ones(dims[i]) for i in range(len(dims) - 1)}
    wavs, _ = random_waves([4001, 3003], seed=1)
    with torch.no_grad():
        plain = model.feature_extractor.stack(wavs, channels_last=False)
        last = model.feature_extractor.stack(wavs, channels_last=True)
        gated._values = None
        ungated = model.feature_extractor.stack(wavs, channels_last=True)
    assert torch.allclose(last, plain, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(last, ungated, atol=1e-3)  # the gates acted
