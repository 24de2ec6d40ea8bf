"""Grouped 1-D convolution through the FFT, for the long positional conv on GPUs.

wav2vec 2.0 / HuBERT / WavLM's positional conv has kernel 128 and 16 groups. cuDNN (9.19, H200)
runs it on its legacy implicit-GEMM kernels: forward and backward took 15.6 ms in bf16 (8.6 ms in
fp32 with TF32, torch's default) beside a 58 ms HuBERT Base step (batch 8 x 15 s). The same
convolution through an fp32 FFT took 2.9 ms (`python -m benchmarks.gpu`, rows from
benchmarks/gpu_convs.py, run D in benchmarks/RESULTS.md). On a CPU the FFT loses at inference
lengths (51 vs 5 ms for one 1 s utterance, 2 cores): only CUDA takes this path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK = 1024  # FFT length: one block up to T + k - 1 <= 1024 (15 s crops); longer inputs go by blocks


def fft_grouped_conv(x: Tensor, weight: Tensor, bias: Tensor | None, groups: int) -> Tensor:
    """conv1d(x, weight, bias, padding=k // 2, groups) over time, first T frames, time-major.

    x: (B, T, C) with C = groups * C_in; weight: (C_out, C_in, k) as nn.Conv1d keeps it.
    Returns (B, T, C_out): y[t] = sum_j weight[..., j] x[t + j - k // 2] (zero outside 0..T-1),
    which for an even k is the conv's output with its extra last frame dropped (fairseq SamePad).
    Overlap-save in FFT blocks of BLOCK frames (more for a kernel over BLOCK / 2), so the weight's
    spectrum (C_out x C_in x BLOCK / 2 complex numbers: 151 MB for the Base models) does not grow
    with the input. Computed
    in fp32 (fp64 for fp64 input), also under autocast, and returned in the dtype conv1d gives.
    """
    B, T, C = x.shape  # batch, frames, channels
    C_out, C_in, k = weight.shape
    pad = k // 2
    device = x.device.type
    autocast = torch.is_autocast_enabled(device) and x.dtype != torch.float64  # autocast leaves fp64 alone
    out_dtype = torch.get_autocast_dtype(device) if autocast else x.dtype
    real = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.autocast(device, enabled=False):
        # one FFT length per kernel, whatever T: under torch.compile(dynamic=True) T stays symbolic
        # (a length computed from T would recompile for every new batch length)
        n = max(BLOCK, 1 << (2 * k - 2).bit_length())  # a block holds a kernel and as many outputs
        hop = n - k + 1  # outputs per block (overlap-save: the first k - 1 of a block wrap around)
        blocks = -(-T // hop)
        # y[t] = z[t + k - 1] for z the linear convolution of the padded input with the flipped kernel
        xp = F.pad(x.to(real), (0, 0, pad, (blocks - 1) * hop + n - T - pad))  # (B, (blocks - 1) hop + n, C)
        segments = xp.unfold(1, n, hop)  # (B, blocks, C, n)
        xf = torch.fft.rfft(segments, dim=-1)  # (B, blocks, C, F)
        wf = torch.fft.rfft(weight.to(real).flip(-1), n=n, dim=-1)  # (C_out, C_in, F)
        F_ = xf.shape[-1]
        o = C_out // groups
        xf = (
            xf.reshape(B * blocks, groups, C_in, F_)
            .permute(3, 1, 0, 2)
            .reshape(F_ * groups, B * blocks, C_in)
        )
        wf = wf.reshape(groups, o, C_in, F_).permute(3, 0, 2, 1).reshape(F_ * groups, C_in, o)
        yf = torch.bmm(xf, wf).reshape(F_, groups, B * blocks, o).permute(2, 1, 3, 0)  # (B blocks, G, o, F)
        z = torch.fft.irfft(yf.reshape(B, blocks, C_out, F_), n=n, dim=-1)[
            ..., k - 1 :
        ]  # (B, blocks, C_out, hop)
        y = z.transpose(2, 3).reshape(B, blocks * hop, C_out)[:, :T]  # (B, T, C_out)
        if bias is not None:
            y = y + bias.to(real)
    return y.to(out_dtype)
