"""The FFT positional conv computes the grouped conv1d it replaces on CUDA: values, gradients, dtypes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from speechssl.models.fft_conv import fft_grouped_conv


def same_conv(x, weight, bias, groups):
    """The path the CPU takes: conv1d with k // 2 padding, the first T frames, time-major."""
    y = F.conv1d(x.transpose(1, 2), weight, bias, padding=weight.shape[-1] // 2, groups=groups)
    return y[:, :, : x.shape[1]].transpose(1, 2)


@pytest.mark.parametrize(
    "B, T, C, groups, k",
    [(2, 37, 12, 4, 16), (3, 5, 6, 3, 7), (1, 1, 4, 2, 128), (2, 200, 8, 1, 9), (2, 64, 10, 2, 2)],
)
def test_fft_conv_equals_grouped_conv1d_with_gradients(B, T, C, groups, k):
    g = torch.Generator().manual_seed(T * k)
    x = torch.randn(B, T, C, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(C, C // groups, k, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(C, generator=g, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    ref = same_conv(x, w, b, groups)
    ref_grads = torch.autograd.grad((ref * probe).sum(), (x, w, b))
    got = fft_grouped_conv(x, w, b, groups)
    grads = torch.autograd.grad((got * probe).sum(), (x, w, b))
    assert got.dtype == torch.float64  # fp64 in, fp64 computed and returned
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)


def test_fft_conv_returns_the_autocast_dtype_like_conv1d():
    x = torch.randn(2, 30, 8)
    w, b = torch.randn(8, 2, 6), torch.randn(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fft_grouped_conv(x, w, b, 4)
        ref = same_conv(x, w, b, 4)
    assert got.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), same_conv(x, w, b, 4), rtol=1e-2, atol=1e-2)


def test_fft_conv_compiles_once_for_many_lengths():
    """The trainer compiles with dynamic shapes and bucketed batches vary in length: one graph
    must serve every length (an FFT size computed from T would recompile for each)."""
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = torch.compile(fft_grouped_conv, dynamic=True)
    w, b = torch.randn(8, 4, 5), torch.randn(8)
    for T in (17, 33, 50, 70, 90):
        x = torch.randn(2, T, 8)
        torch.testing.assert_close(compiled(x, w, b, 2), same_conv(x, w, b, 2), rtol=1e-5, atol=1e-5)
    assert counters["stats"]["unique_graphs"] <= 2


@pytest.mark.parametrize("T, k", [(200, 16), (49, 16), (50, 16), (97, 15), (5, 16)])
def test_long_inputs_go_by_blocks_with_the_same_result(monkeypatch, T, k):
    """Overlap-save: with 64-frame blocks (49 outputs each for k = 16) every block boundary, a
    last partial block and an input shorter than a block give conv1d's values, in fp64."""
    import speechssl.models.fft_conv as fft_conv

    monkeypatch.setattr(fft_conv, "BLOCK", 64)
    g = torch.Generator().manual_seed(T + k)
    x = torch.randn(2, T, 8, generator=g, dtype=torch.float64)
    w, b = (
        torch.randn(8, 2, k, generator=g, dtype=torch.float64),
        torch.randn(8, generator=g, dtype=torch.float64),
    )
    got = fft_conv.fft_grouped_conv(x, w, b, 4)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, same_conv(x, w, b, 4), rtol=1e-10, atol=1e-10)  # fp64 stays fp64


def test_the_weight_spectrum_does_not_grow_with_the_input():
    """Base-model sizes: the largest tensor the FFT path makes is bounded by the block, not by T."""
    w, b = torch.randn(768, 48, 128) * 0.02, torch.randn(768)
    peak = {}
    for T in (800, 4000):
        x = torch.randn(1, T, 768)
        with torch.no_grad(), torch.profiler.profile(profile_memory=True) as prof:
            fft_grouped_conv(x, w, b, 16)
        peak[T] = max(e.cpu_memory_usage for e in prof.key_averages())  # the largest op's allocations
    assert peak[4000] < 2 * peak[800]  # per-op allocation: the 5x longer input does not make it 5x


def test_autocast_leaves_fp64_alone_like_conv1d():
    x, w, b = torch.randn(1, 9, 4, dtype=torch.float64), torch.randn(4, 2, 3, dtype=torch.float64), None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fft_grouped_conv(x, w, b, 2).dtype == same_conv(x, w, b, 2).dtype == torch.float64
