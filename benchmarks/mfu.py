"""Model-FLOPs utilisation of our HuBERT: analytic FLOPs / measured time / measured matmul peak.

The peak is what this machine reaches on a large fp32 matmul in this run (not a datasheet
number), so MFU here says how much of the reachable matmul speed the model turns into work.
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import model_config, padded_batch, seeded_model, waves
from benchmarks.harness import Row, Settings, make_row, time_interleaved
from benchmarks.pretrain import pretrain_step
from speechssl.data.audio import SAMPLE_RATE
from speechssl.models import ModelConfig

GROUP = "mfu"


def forward_flops(config: ModelConfig, seconds: float, sample_rate: int = SAMPLE_RATE) -> float:
    """Forward FLOPs (2 per multiply-add) of one utterance of `seconds` through the conv frontend
    and the transformer encoder; norms, activations, softmax and biases are left out (< 1 %).

    conv layer i (C_{i-1} -> C_i channels, kernel k_i, T_i output frames):  2 C_{i-1} C_i k_i T_i
    feature projection (C -> D) over T frames:                            2 C D T
    positional conv (kernel K, G groups):                                  2 D (D / G) K T
    each of L layers: q, k, v, out projections 8 D^2 T; scores and
    weighted sum 4 T^2 D; feed-forward (D -> F -> D) 4 D F T.
    """
    fe, enc = config.frontend, config.encoder
    length = round(seconds * sample_rate)
    flops, channels = 0.0, 1
    for dim, k, s in zip(fe.conv_dim, fe.conv_kernel, fe.conv_stride):
        length = (length - k) // s + 1
        flops += 2 * channels * dim * k * length
        channels = dim
    T, D, F = length, enc.embed_dim, enc.ffn_dim
    flops += 2 * channels * D * T
    flops += 2 * D * (D // enc.pos_conv_groups) * enc.pos_conv_kernel * T
    flops += enc.num_layers * (8 * D * D * T + 4 * T * T * D + 4 * D * F * T)
    return float(flops)


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n fp32 matmul on this machine (best of `repeats` after a warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def run(settings: Settings) -> list[Row]:
    if settings.tiny:
        preset, infer_s, layers, train_secs, n = "hubert_tiny", 0.5, None, [0.5, 0.45], 256
    elif settings.quick:
        preset, infer_s, layers, train_secs, n = "hubert_base", 5.0, 2, padded_batch(1.5, 2), 2048
    else:
        preset, infer_s, layers, train_secs, n = "hubert_base", 10.0, None, padded_batch(4.0, 4), 2048
    peak = matmul_peak_flops(n)
    config = model_config(preset)
    model = seeded_model(config).eval()
    wavs, lengths = waves([infer_s])

    def infer() -> None:
        with torch.inference_mode():
            model(wavs, lengths)

    family = config.family
    train = pretrain_step("ours", family, preset, train_secs, layers)
    seconds = time_interleaved(
        {"infer": infer, "train": train},
        warmup=settings.warmup,
        repeats=settings.repeats,
        min_seconds=settings.min_seconds,
    )
    infer_flops = forward_flops(config, infer_s)
    train_flops = 3 * sum(forward_flops(model_config(preset, layers), s) for s in train_secs)  # fwd + 2x bwd
    layer_note = "" if layers is None else f" ({layers} layers)"
    return [
        make_row(
            GROUP, f"fp32 matmul peak ({n}x{n})", peak / 1e9, None, "GFLOP/s", note="measured in this run"
        ),
        make_row(
            GROUP,
            f"{preset} forward FLOPs per audio-second",
            forward_flops(config, 1.0) / 1e9,
            None,
            "GFLOP",
            note="analytic, 1 s utterance (mfu.forward_flops)",
        ),  # fmt: skip
        make_row(
            GROUP,
            f"{preset} inference MFU, 1 x {infer_s:g} s",
            100 * infer_flops / seconds["infer"] / peak,
            None,
            "%",
            note=f"{infer_flops / seconds['infer'] / 1e9:.1f} GFLOP/s achieved",
        ),  # fmt: skip
        make_row(
            GROUP,
            f"{preset}{layer_note} pretraining MFU, batch {train_secs} s",
            100 * train_flops / seconds["train"] / peak,
            None,
            "%",
            note=f"3x forward FLOPs; {train_flops / seconds['train'] / 1e9:.1f} GFLOP/s achieved",
        ),  # fmt: skip
    ]
