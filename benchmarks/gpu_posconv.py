"""Positional-conv rows on a GPU: `python -m benchmarks.gpu_posconv [--json PATH]`.

The H200 profile of a HuBERT Base bf16 step put cuDNN's legacy implicit-GEMM kernels at 36 of
74 ms: the grouped positional conv (768 channels, 16 groups, kernel 128). This times forward +
backward of that conv alone in several formulations, same weights and batch, and checks each
against conv1d in fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F


def conv1d(x, w, b, groups):
    k = w.shape[-1]
    y = F.conv1d(x.transpose(1, 2), w, b, padding=k // 2, groups=groups)
    return y[:, :, : x.shape[1]].transpose(1, 2)


def conv1d_fp32(x, w, b, groups):
    with torch.autocast("cuda", enabled=False):
        return conv1d(x.float(), w.float(), b.float(), groups)


def unfold_bmm(x, w, b, groups):
    B, T, D = x.shape
    k = w.shape[-1]
    cg = D // groups
    xp = F.pad(x, (0, 0, k // 2, k // 2))[:, : T + k - 1]  # (B, T + k - 1, D)
    cols = xp.unfold(1, k, 1).reshape(B, T, groups, cg, k)  # view (B, T, G, Cg, k)
    cols = cols.permute(2, 0, 1, 3, 4).reshape(groups, B * T, cg * k)
    wg = w.reshape(groups, cg, cg * k).transpose(1, 2)  # (G, Cg_in * k, Cg_out)
    y = torch.bmm(cols, wg.to(cols.dtype))  # (G, B*T, Cg_out)
    return y.reshape(groups, B, T, cg).permute(1, 2, 0, 3).reshape(B, T, D) + b


def fft_conv(x, w, b, groups):
    with torch.autocast("cuda", enabled=False):
        B, T, D = x.shape
        k = w.shape[-1]
        cg = D // groups
        p = k // 2
        n = 1 << (T + k - 1 - 1).bit_length()
        xf = torch.fft.rfft(x.float(), n=n, dim=1)  # (B, F, D)
        vf = torch.fft.rfft(w.float().flip(-1), n=n, dim=-1)  # (D_out, Cg_in, F)
        nf = xf.shape[1]
        xf = xf.reshape(B, nf, groups, cg).permute(1, 2, 0, 3).reshape(nf * groups, B, cg)
        vf = vf.reshape(groups, cg, cg, nf).permute(3, 0, 2, 1).reshape(nf * groups, cg, cg)  # (F*G, in, out)
        yf = torch.bmm(xf, vf).reshape(nf, groups, B, cg).permute(2, 0, 1, 3).reshape(B, nf, D)
        z = torch.fft.irfft(yf, n=n, dim=1)
        return z[:, k - 1 - p : k - 1 - p + T] + b.float()


VARIANTS = {"conv1d bf16": (conv1d, False), "conv1d bf16 cudnn.benchmark": (conv1d, True),
            "conv1d fp32/tf32": (conv1d_fp32, False), "unfold+bmm bf16": (unfold_bmm, False),
            "fft fp32": (fft_conv, False)}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", default=None)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args(argv)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    D, G, K = 768, 16, 128
    w = (torch.randn(D, D // G, K, device=dev) * 0.02).requires_grad_()
    b = torch.randn(D, device=dev).requires_grad_()
    small = torch.randn(2, 101, D, device=dev)
    with torch.no_grad():
        ref = conv1d_fp32(small, w, b, G)
        diffs = {n: ((f(small, w, b, G).float() - ref).norm() / ref.norm()).item() for n, (f, _) in VARIANTS.items()
                 if "bf16" not in n}  # fmt: skip
        diffs["unfold+bmm fp32"] = ((unfold_bmm(small, w, b, G) - ref).norm() / ref.norm()).item()
    print("relative difference to conv1d fp32:", diffs, flush=True)
    if dev == "cpu":
        return 0 if max(diffs.values()) < 1e-4 else 1
    x = torch.randn(8, 750, D, device=dev, requires_grad=True)
    rows = []
    for name, (fn, bench) in VARIANTS.items():
        torch.backends.cudnn.benchmark = bench
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            for i in range(3 + args.steps):
                if i == 3:
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                fn(x, w, b, G).float().pow(2).mean().backward()
            torch.cuda.synchronize()
        row = {"variant": name, "ms": round((time.perf_counter() - t0) / args.steps * 1e3, 3),
               "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}  # fmt: skip
        rows.append(row)
        print(row, flush=True)
    torch.backends.cudnn.benchmark = False
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rel_diff": diffs,
                       "shape": [8, 750, D], "rows": rows}, f, indent=2)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
