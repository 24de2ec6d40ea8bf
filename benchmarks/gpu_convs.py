"""The GPU rows of the two conv stacks of a wav2vec 2.0 / HuBERT step, each timed alone
(forward + backward, same weights and input), ours against the formulations we did not take.

- The positional conv (768 channels, 16 groups, kernel 128): ours runs it through an fp32 FFT on
  CUDA (speechssl.models.fft_conv); cuDNN's conv1d in bf16 and in fp32 are the references.
- The waveform frontend (7 strided convs): ours is cuDNN's conv1d; the references are the same
  stack with its norms in the activation dtype (not in fp32, as CUDA's autocast runs them), as
  unfold + one matmul per layer (im2col), which runs on the tensor-core GEMMs, and as
  conv2d on channels-last (time-major) memory, which cuDNN's bf16 kernels take without the layout
  transposes around each conv1d (nchwToNhwc / nhwcToNchw: 4.0 of the 34.9 ms of kernels in the
  HuBERT Base step of run F), and time-major throughout with every conv as tensor-core GEMMs over
  blocks of `stride` frames read in place (`time_major_frontend`: no transposes, no im2col copy).
Used by benchmarks.gpu (its --quick shrinks the shapes).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from benchmarks.harness import Row, make_row
from speechssl.models.config import ConvFrontendConfig
from speechssl.models.encoder import ConvPositionalEmbedding
from speechssl.models.frontends import ConvFeatureEncoder, build_conv_frontend, scale_grad

GROUP = "gpu"


def im2col_frontend(encoder: ConvFeatureEncoder, wavs: torch.Tensor) -> torch.Tensor:
    """The encoder's features (B, T, C) with every conv as a time-major unfold + matmul."""
    x = wavs[:, :, None]  # (B, S, 1)
    for layer, k, s in zip(encoder.conv_layers, encoder.kernels, encoder.strides):
        w = layer.conv.weight  # (C_out, C_in, k)
        cols = x.unfold(1, k, s).transpose(2, 3)  # (B, T', k, C_in)
        x = cols.reshape(*cols.shape[:2], -1) @ w.permute(0, 2, 1).reshape(w.shape[0], -1).t()
        if layer.conv.bias is not None:
            x = x + layer.conv.bias
        if layer.has_norm:
            norm = layer.layer_norm
            if isinstance(norm, torch.nn.GroupNorm):  # over time, in fp32 as CUDA's autocast runs it
                x = _time_major_group_norm(x.float(), norm).to(x.dtype)
            else:
                x = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        x = F.gelu(x)
    return x


def activation_dtype_norm_frontend(encoder: ConvFeatureEncoder, wavs: torch.Tensor) -> torch.Tensor:
    """The encoder's features (B, T, C), ours but for the norms: computed in the activation dtype
    (bf16 under autocast, statistics accumulated in fp32) where CUDA's autocast runs GroupNorm and
    LayerNorm in fp32 and so copies the largest activations to fp32 and back (fairseq's
    Fp32GroupNorm also returns the input's dtype). Isolates that lever from the layout ones."""
    x = wavs[:, None, :]  # (B, 1, S)
    for layer in encoder.conv_layers:
        x = layer.conv(x)
        if layer.has_norm:
            norm = layer.layer_norm
            with torch.autocast(x.device.type, enabled=False):
                w, b = norm.weight.to(x.dtype), norm.bias.to(x.dtype)
                if isinstance(norm, torch.nn.GroupNorm):
                    x = F.group_norm(x, norm.num_groups, w, b, norm.eps)
                else:  # over channels
                    x = F.layer_norm(x.transpose(1, 2), norm.normalized_shape, w, b, norm.eps).transpose(1, 2)
        x = F.gelu(x)
    return x.transpose(1, 2)  # (B, T, C)


def channels_last_frontend(encoder: ConvFeatureEncoder, wavs: torch.Tensor) -> torch.Tensor:
    """The encoder's features (B, T, C) with every conv as a conv2d over (B, C, 1, T) held in
    channels-last memory: time-major, the layout of the features it returns (a view, no copy)."""
    x = wavs[:, None, None, :].contiguous(memory_format=torch.channels_last)  # (B, 1, 1, S)
    for layer in encoder.conv_layers:
        conv = layer.conv
        weight = conv.weight[:, :, None, :].contiguous(memory_format=torch.channels_last)
        x = F.conv2d(x, weight, conv.bias, stride=(1, conv.stride[0]))
        if layer.has_norm:
            norm = layer.layer_norm
            if isinstance(norm, torch.nn.GroupNorm):  # one group per channel: normalise over time
                x = F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
            else:  # over channels: the last dim of the memory, so both permutes are views
                x = F.layer_norm(
                    x.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias, norm.eps
                )
                x = x.permute(0, 3, 1, 2)
        x = F.gelu(x)
    return x[:, :, 0, :].transpose(1, 2)  # (B, T, C)


def _blocks(x: torch.Tensor, kernel: int, stride: int, frames: int) -> list[torch.Tensor]:
    """The GEMM operands of a conv over time-major x (B, T, C_in), contiguous: block j holds, for
    each of the `frames` outputs t, the taps j * stride ... of frame t (frames stride * (t + j) ...),
    as a (B, frames, taps * C_in) view of x whose rows are stride * C_in apart (no copy)."""
    B, T, C = x.shape  # batch, frames, channels
    return [
        x.as_strided((B, frames, min(stride, kernel - start) * C), (T * C, stride * C, 1),
                     x.storage_offset() + start * C)
        for start in range(0, kernel, stride)
    ]  # fmt: skip


def _block_weights(weight: torch.Tensor, stride: int) -> list[torch.Tensor]:
    """conv1d's weight (C_out, C_in, k) as the (taps * C_in, C_out) matrix of each block."""
    C_out, C_in, k = weight.shape
    return [weight[:, :, j : j + stride].permute(2, 1, 0).reshape(-1, C_out) for j in range(0, k, stride)]


class BlockConv(torch.autograd.Function):
    """conv1d (no padding or dilation) of a time-major input (B, T, C_in) -> (B, T', C_out), as
    one batched GEMM per block of `stride` input frames: the blocks are views of the input, so
    neither the forward nor the backward copies or transposes an activation (beyond the cast to
    the autocast dtype, under autocast, which conv1d also makes). Eager only, as timed: under
    torch.compile the blocks' storage_offset() breaks the graph (without that break, compile
    refuses the backward's accumulation into as_strided views); in the package it would be a
    torch.library custom op."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride):  # type: ignore[override]
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        ctx.dtypes = x.dtype, weight.dtype, None if bias is None else bias.dtype
        ctx.stride = stride
        if x.shape[1] < weight.shape[2]:
            raise ValueError(f"input of {x.shape[1]} frames is shorter than the kernel ({weight.shape[2]})")
        x, weight = x.to(dtype=dtype, memory_format=torch.contiguous_format), weight.to(dtype)
        frames = (x.shape[1] - weight.shape[2]) // stride + 1
        with torch.autocast(device, enabled=False):
            blocks = _blocks(x, weight.shape[2], stride, frames)
            mats = [w.expand(x.shape[0], *w.shape) for w in _block_weights(weight, stride)]
            out = torch.bmm(blocks[0], mats[0])  # (B, T', C_out)
            for block, mat in zip(blocks[1:], mats[1:]):
                out.baddbmm_(block, mat)
            if bias is not None:
                out += bias.to(dtype)
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        x_dtype, weight_dtype, bias_dtype = ctx.dtypes
        grad = grad.to(x.dtype).contiguous()  # (B, T', C_out)
        B, frames, C_out = grad.shape
        k, stride = weight.shape[2], ctx.stride
        grad_x = grad_weight = grad_bias = None
        accumulate = torch.promote_types(weight_dtype, torch.float32)  # the weight's sums over the batch
        if ctx.needs_input_grad[0]:  # each block's GEMM adds into the input frames it read
            grad_x = torch.zeros_like(x)
            mats = [w.t().expand(B, C_out, w.shape[0]) for w in _block_weights(weight, stride)]
            for block, mat in zip(_blocks(grad_x, k, stride, frames), mats):
                block.baddbmm_(grad, mat)
            grad_x = grad_x.to(x_dtype)
        if ctx.needs_input_grad[1]:  # per block: sum over the batch of block^T @ grad
            grad_weight = torch.empty(weight.shape, dtype=weight_dtype, device=weight.device)
            for j, block in zip(range(0, k, stride), _blocks(x, k, stride, frames)):
                taps = block.shape[2] // weight.shape[1]
                part = torch.bmm(block.transpose(1, 2), grad).sum(0, dtype=accumulate)  # (K, C_out)
                grad_weight[:, :, j : j + taps] = part.view(taps, -1, C_out).permute(2, 1, 0)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 1), dtype=torch.promote_types(bias_dtype, torch.float32)).to(bias_dtype)
        return grad_x, grad_weight, grad_bias, None


def _time_major_group_norm(x: torch.Tensor, norm: torch.nn.GroupNorm) -> torch.Tensor:
    """GroupNorm with one group per channel on time-major x (B, T, C): each channel normalised
    over time, in x's dtype (statistics accumulated in fp32 by var_mean, rounded to x's dtype)."""
    var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)  # (B, 1, C)
    scale = torch.rsqrt(var.float() + norm.eps) * norm.weight
    return torch.addcmul((norm.bias - mean * scale).to(x.dtype), x, scale.to(x.dtype))


def time_major_frontend(encoder: ConvFeatureEncoder, wavs: torch.Tensor) -> torch.Tensor:
    """The encoder's features (B, T, C), time-major from the waveform on: every conv a BlockConv
    (its GEMMs read the previous layer's output in place), the norms over the last dim or, for
    the GroupNorm, over time in the activation dtype."""
    x = wavs[:, :, None]  # (B, S, 1)
    for layer in encoder.conv_layers:
        conv = layer.conv
        x = BlockConv.apply(x, conv.weight, conv.bias, conv.stride[0])
        if layer.has_norm:
            norm = layer.layer_norm
            if isinstance(norm, torch.nn.GroupNorm):
                x = _time_major_group_norm(x, norm)
            else:  # over channels: the last dim
                x = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        x = F.gelu(x)
    return x


@contextmanager
def time_major_frontends() -> Iterator[None]:
    """Every ConvFeatureEncoder computes through time_major_frontend while inside: the whole
    training step with that formulation, the package unchanged (same outputs, tested)."""
    original = ConvFeatureEncoder.forward

    def forward(self: ConvFeatureEncoder, wavs: torch.Tensor, lengths: torch.Tensor):
        if self.feature_grad_mult == 0.0:
            with torch.no_grad():
                return time_major_frontend(self, wavs), self.output_lengths(lengths)
        features = scale_grad(time_major_frontend(self, wavs), self.feature_grad_mult)
        return features, self.output_lengths(lengths)

    ConvFeatureEncoder.forward = forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        ConvFeatureEncoder.forward = original  # type: ignore[method-assign]


def cudnn_positional_conv(
    module: ConvPositionalEmbedding, fp32: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The module's conv as the CPU runs it (ConvPositionalEmbedding.direct: cuDNN's conv1d here),
    in bf16 under the caller's autocast or in fp32."""

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=not fp32):
            return F.gelu(module.direct(x.float() if fp32 else x))

    return run


def time_backward(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, warmup: int, steps: int
) -> float:
    """Seconds per forward + backward of fn(x) in bf16 autocast."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            start = time.perf_counter()
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            y = fn(x)
        y.float().square().mean().backward()
    sync()
    return (time.perf_counter() - start) / steps


@contextmanager
def exact_fp32() -> Iterator[None]:
    """TF32 off for cuDNN and cuBLAS: the correctness checks compare fp32 with fp32."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def rows(quick: bool) -> list[Row]:
    """The rows on the CUDA device: batch 8 x 15 s (quick: 4 x 5 s), as benchmarks.gpu's step."""
    batch, seconds = (4, 5.0) if quick else (8, 15.0)
    return measure(batch, seconds, *((2, 5) if quick else (3, 10)), device="cuda")


def measure(batch: int, seconds: float, warmup: int, steps: int, device: str) -> list[Row]:
    """The rows for `batch` utterances of `seconds` (a CPU smoke test runs them tiny)."""
    timing = f"forward + backward in bf16 autocast, {warmup} warm-up + {steps} timed"
    torch.manual_seed(0)
    out: list[Row] = []

    pos = ConvPositionalEmbedding(768, 128, 16).to(device)
    frames = int(seconds * 50)
    x = torch.randn(batch, frames, 768, device=device, requires_grad=True)
    with torch.no_grad(), exact_fp32():
        check = relative_error(
            pos(x[:2, : min(frames, 101)]), cudnn_positional_conv(pos, fp32=True)(x[:2, : min(frames, 101)])
        )
    ours = time_backward(pos, x, warmup, steps)
    name = f"positional conv (768 ch, 16 groups, kernel 128), {batch} x {frames} frames"
    for label, fp32 in (("cuDNN conv1d bf16", False), ("cuDNN conv1d fp32 (TF32, torch's default)", True)):
        ref = time_backward(cudnn_positional_conv(pos, fp32), x, warmup, steps)
        note = f"{timing}; FFT vs fp32 conv1d: relative difference {check:.1e}"
        out.append(make_row(GROUP, f"{name}: ours (fp32 FFT) vs {label}", 1e3 * ours, 1e3 * ref, "ms",
                            higher_is_better=False, note=note))  # fmt: skip
    del pos, x

    encoder = build_conv_frontend(ConvFrontendConfig()).to(device)
    wavs = torch.randn(batch, int(seconds * 16000), device=device)
    lengths = torch.full((batch,), wavs.shape[1], device=device)
    ours = time_backward(lambda w: encoder(w, lengths)[0], wavs, warmup, steps)
    name = f"waveform frontend (7 convs, 512 ch), {batch} x {seconds:g} s: ours (cuDNN conv1d)"
    clip = wavs[:2, : min(wavs.shape[1], 48000)]
    formulations = (("norms in the activation dtype", activation_dtype_norm_frontend),
                    ("im2col", im2col_frontend), ("channels-last conv2d", channels_last_frontend),
                    ("time-major block GEMMs", time_major_frontend))  # fmt: skip
    for label, formulation in formulations:
        try:
            with torch.no_grad(), exact_fp32():
                check = relative_error(formulation(encoder, clip), encoder(clip, lengths[:2])[0])
            ref = time_backward(lambda w: formulation(encoder, w), wavs, warmup, steps)  # noqa: B023
        except Exception as err:  # a formulation that fails on this device must not cost the others
            print(f"[gpu] frontend {label} failed: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        note = f"{timing}; {label} vs conv1d in fp32: relative difference {check:.1e}"
        out.append(make_row(GROUP, f"{name} vs {label}", 1e3 * ours, 1e3 * ref, "ms", higher_is_better=False,
                            note=note))  # fmt: skip
    return out
