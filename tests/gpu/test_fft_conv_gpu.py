"""On CUDA the positional conv runs through the FFT (speechssl.models.fft_conv): it must give the
CPU's conv1d values and gradients, and the dtype conv1d gives under bf16 autocast."""

from __future__ import annotations

import copy

import pytest
import torch

from speechssl.models.encoder import ConvPositionalEmbedding
from tests.gpu._gpu import GPU

pytestmark = GPU


@pytest.mark.parametrize("frames", [301, 3001])  # one FFT block; several (overlap-save)
def test_positional_conv_on_cuda_matches_the_cpu_conv(frames):
    torch.manual_seed(0)
    cpu = ConvPositionalEmbedding(768, 128, 16)  # the Base models' conv, weight norm included
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.randn(2, frames, 768)
    ref = cpu(x.requires_grad_())
    ref.square().sum().backward()
    xg = x.detach().cuda().requires_grad_()
    got = gpu(xg)
    got.square().sum().backward()
    torch.testing.assert_close(got.cpu(), ref.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(xg.grad.cpu(), x.grad, rtol=1e-3, atol=1e-3)
    for (name, p), q in zip(cpu.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(q.grad.cpu(), p.grad, rtol=1e-3, atol=1e-3, msg=name)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert gpu(xg.detach()).dtype == torch.bfloat16
