"""Frontend rows on a GPU: `python -m benchmarks.gpu_frontend [--json PATH] [--steps N]`.

The conv waveform frontend of HuBERT/wav2vec 2.0 Base took 63 % of a bf16 step's kernel time on
an H200 (cuDNN's legacy implicit-GEMM kernels for strided 1-D bf16 convs). This times forward +
backward of that frontend alone, same weights and batch, in three ways: our conv1d stack as is,
the same with cudnn.benchmark (cuDNN tries its algorithms per shape), and an im2col formulation
(time-major unfold + one matmul per layer, which runs on the tensor-core GEMMs). It also checks
that im2col computes the same features (fp32, 1e-4 relative).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

from speechssl.models.config import ConvFrontendConfig
from speechssl.models.frontends import ConvFeatureEncoder, build_conv_frontend


def im2col_forward(encoder: ConvFeatureEncoder, wavs: torch.Tensor) -> torch.Tensor:
    """The encoder's features (batch, frames, channels) with every conv as unfold + matmul."""
    x = wavs[:, :, None]  # (B, S, 1): time-major throughout
    for layer, k, s in zip(encoder.conv_layers, encoder.kernels, encoder.strides):
        w = layer.conv.weight  # (C_out, C_in, k)
        cols = x.unfold(1, k, s).transpose(2, 3)  # (B, T', k, C_in)
        cols = cols.reshape(*cols.shape[:2], -1)  # (B, T', k * C_in)
        x = cols @ w.permute(0, 2, 1).reshape(w.shape[0], -1).t()
        if layer.conv.bias is not None:
            x = x + layer.conv.bias
        if layer.has_norm:
            norm = layer.layer_norm
            if isinstance(norm, torch.nn.GroupNorm):  # one group per channel: normalise over time
                xf = x.float()
                var, mean = torch.var_mean(xf, dim=1, keepdim=True, correction=0)
                x = ((xf - mean) * torch.rsqrt(var + norm.eps) * norm.weight + norm.bias).to(x.dtype)
            else:
                x = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        x = F.gelu(x)
    return x


def time_variant(fn, wavs: torch.Tensor, warmup: int, steps: int) -> tuple[float, float]:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        fn(wavs).float().pow(2).mean().backward()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn(wavs).float().pow(2).mean().backward()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps, torch.cuda.max_memory_allocated() / 2**30


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA: frontend rows skipped")
        return 0
    torch.manual_seed(0)
    encoder = build_conv_frontend(ConvFrontendConfig()).cuda()
    wavs = torch.randn(args.batch, int(args.seconds * 16000), device="cuda")
    lengths = torch.full((args.batch,), wavs.shape[1], device="cuda")

    with torch.no_grad():  # the same features, fp32
        ref = encoder(wavs[:2, :48000], lengths[:2].clamp(max=48000))[0]
        got = im2col_forward(encoder, wavs[:2, :48000])
        rel = ((got - ref).norm() / ref.norm()).item()
    print(f"im2col vs conv1d, fp32: relative difference {rel:.2e}", flush=True)

    def conv(w: torch.Tensor) -> torch.Tensor:
        return encoder(w, lengths)[0]

    def cols(w: torch.Tensor) -> torch.Tensor:
        return im2col_forward(encoder, w)

    rows = []
    audio = args.batch * args.seconds
    for name, fn, bench in (("conv1d", conv, False), ("conv1d cudnn.benchmark", conv, True),
                            ("im2col matmul", cols, False)):  # fmt: skip
        torch.backends.cudnn.benchmark = bench
        with torch.autocast("cuda", dtype=torch.bfloat16):
            sec, mem = time_variant(fn, wavs, warmup=3, steps=args.steps)
        row = {"variant": name, "ms": round(sec * 1e3, 2), "audio_s_per_s": round(audio / sec), "peak_gib": round(mem, 2)}
        rows.append(row)
        print(row, flush=True)
    torch.backends.cudnn.benchmark = False
    if args.json:
        meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rel_diff_fp32": rel,
                "batch": args.batch, "seconds": args.seconds}  # fmt: skip
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
    return 0 if rel < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
