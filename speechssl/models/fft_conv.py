"""Grouped 1-D convolution through the FFT, for the long positional conv on GPUs.

wav2vec 2.0 / HuBERT / WavLM's positional conv has kernel 128 and 16 groups. cuDNN (9.19, H200)
runs it on its legacy implicit-GEMM kernels: forward and backward took 14.8 ms in bf16 (7.8 ms in
fp32) of a 58 ms HuBERT Base step (batch 8 x 15 s). The same convolution through an fp32 FFT took
1.9 ms (`python -m benchmarks.gpu`, rows from benchmarks/gpu_convs.py). On a CPU the FFT loses at
inference lengths (51 vs 5 ms for one 1 s utterance, 2 cores): only CUDA takes this path.
"""

from __future__ import annotations

import torch
from torch import Tensor


def fft_grouped_conv(x: Tensor, weight: Tensor, bias: Tensor | None, groups: int) -> Tensor:
    """conv1d(x, weight, bias, padding=k // 2, groups) over time, first T frames, time-major.

    x: (B, T, C) with C = groups * C_in; weight: (C_out, C_in, k) as nn.Conv1d keeps it.
    Returns (B, T, C_out): y[t] = sum_j weight[..., j] x[t + j - k // 2] (zero outside 0..T-1),
    which for an even k is the conv's output with its extra last frame dropped (fairseq SamePad).
    Computed in fp32 (complex64), also under autocast, and returned in the dtype the conv would
    have produced there.
    """
    B, T, C = x.shape  # batch, frames, channels
    C_out, C_in, k = weight.shape
    pad = k // 2
    out_dtype = (
        torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    )
    with torch.autocast(x.device.type, enabled=False):
        n = 1 << (T + k - 2).bit_length()  # a power of two >= T + k - 1: the linear conv, no wrap-around
        # correlation = convolution with the flipped kernel; y[t] sits at t + k - 1 - pad
        xf = torch.fft.rfft(x.float(), n=n, dim=1)  # (B, F, C)
        wf = torch.fft.rfft(weight.float().flip(-1), n=n, dim=-1)  # (C_out, C_in, F)
        F_ = xf.shape[1]
        o = C_out // groups
        xf = xf.reshape(B, F_, groups, C_in).permute(1, 2, 0, 3).reshape(F_ * groups, B, C_in)
        wf = wf.reshape(groups, o, C_in, F_).permute(3, 0, 2, 1).reshape(F_ * groups, C_in, o)
        yf = torch.bmm(xf, wf).reshape(F_, groups, B, o).permute(2, 0, 1, 3).reshape(B, F_, C_out)
        y = torch.fft.irfft(yf, n=n, dim=1)[:, k - 1 - pad : k - 1 - pad + T]  # (B, T, C_out)
        if bias is not None:
            y = y + bias.float()
    return y.to(out_dtype)
