"""The time-major frontend that benchmarks.gpu times against ours (benchmarks.gpu_convs.BlockConv:
batched GEMMs on strided views, in-place accumulation into them backward) computes, on CUDA, the
CPU's features and gradients; under bf16 autocast it stays as close to fp32 as ours. Its GPU rows
are only worth reading if this passes."""

from __future__ import annotations

import copy

import pytest
import torch

from benchmarks.gpu_convs import exact_fp32, relative_error, time_major_frontend
from speechssl.models.config import ConvFrontendConfig
from speechssl.models.frontends import build_conv_frontend
from tests.gpu._gpu import GPU

pytestmark = GPU


@pytest.mark.parametrize("mode", ["group_norm", "layer_norm"])
def test_time_major_frontend_on_cuda_matches_the_cpu_and_keeps_bf16_accuracy(mode):
    torch.manual_seed(0)
    cpu = build_conv_frontend(ConvFrontendConfig(mode=mode, conv_bias=mode == "layer_norm"))
    gpu = copy.deepcopy(cpu).cuda()
    wavs = torch.randn(2, 16003)
    lengths = torch.tensor([16003, 16003])

    def features_and_grads(encoder, x, formulation=None):
        x = x.clone().requires_grad_()
        y = encoder(x, lengths.to(x.device))[0] if formulation is None else formulation(encoder, x)
        grads = torch.autograd.grad(y.float().square().sum(), [x, *encoder.parameters()])
        return [y.detach().float().cpu(), *(g.float().cpu() for g in grads)]

    reference = features_and_grads(cpu, wavs)
    with exact_fp32():
        fp32 = features_and_grads(gpu, wavs.cuda(), time_major_frontend)
    assert max(relative_error(a, b) for a, b in zip(fp32, reference)) < 1e-4
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ours = features_and_grads(gpu, wavs.cuda())
        theirs = features_and_grads(gpu, wavs.cuda(), time_major_frontend)
    names = ["features", "input", *(name for name, _ in cpu.named_parameters())]
    for name, a, b, r in zip(names, theirs, ours, reference):
        assert relative_error(a, r) < max(2 * relative_error(b, r), 1e-2), name
