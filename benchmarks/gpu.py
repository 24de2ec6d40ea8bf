"""GPU rows (issue 18): `python -m benchmarks.gpu [--quick] [--json PATH] [--md PATH]`.

One HuBERT Base pretraining step (forward, backward, AdamW step) in bf16 autocast on one CUDA
device: ours vs torchaudio's HuBERTPretrainModel on the same weights and padded batch, each with
its own recipe's optimizer (benchmarks.pretrain._optimizer). Per contender: step time, throughput
in audio-seconds per second, peak allocated memory; for ours also MFU against a large bf16
matmul measured in the same run and against the datasheet's dense bf16 peak (both reported).
Timing: CUDA-synchronised wall clock over `steps` steps after `warmup` steps; contenders run one
after the other, each freed before the next. Without CUDA it writes nothing and says so (exit 0):
CPU numbers are `python -m benchmarks`.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.common import padded_batch, waves
from benchmarks.harness import Row, machine_info, make_row, to_markdown
from benchmarks.mfu import forward_flops
from benchmarks.pretrain import _optimizer, pretrain_config
from speechssl.io import atomic_write_text
from speechssl.objectives import build_pretrain_model
from speechssl.testing.references import to_torchaudio_pretrain_state, torchaudio_hubert_pretrain

GROUP = "gpu"
PRESET = "hubert_base"
# Dense (no 2:4 sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s; first match
# of the device name wins. The measured matmul is the other, reachable, reference.
DATASHEET_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                         ("A100", 312.0))  # fmt: skip


def datasheet_peak(name: str) -> float | None:
    """The datasheet's dense bf16 FLOP/s of a device named `name`, None if not in the table."""
    return next((tf * 1e12 for key, tf in DATASHEET_BF16_TFLOPS if key in name), None)


def matmul_peak_bf16(n: int = 8192, repeats: int = 10) -> float:
    """FLOP/s of an n x n bf16 matmul on the current CUDA device (best of `repeats`, CUDA events)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return 2 * n**3 / best


def _step(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], ours: bool) -> Callable[[], None]:
    optimizer = _optimizer(model.train(), "recipe", ours)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def build_step(contender: str, seconds: list[float], num_layers: int | None) -> Callable[[], None]:
    """A bf16 pretraining step of `contender` ("ours" | "torchaudio") on the GPU, same weights and batch."""
    config = pretrain_config("hubert", PRESET, num_layers)
    torch.manual_seed(0)
    ours = build_pretrain_model(config)
    wavs, lengths = waves(seconds)
    frames = ours.hubert.feature_extractor.output_lengths(lengths)
    labels = torch.randint(0, config.hubert.num_classes[0], (len(seconds), int(frames.max())),
                           generator=torch.Generator().manual_seed(1))  # fmt: skip
    wavs, lengths, labels = wavs.cuda(), lengths.cuda(), labels.cuda()
    if contender == "ours":
        model = ours.cuda()
        generator = torch.Generator(device="cuda").manual_seed(1)
        return _step(model, lambda: model(wavs, lengths, labels, generator=generator)[0], ours=True)
    if contender != "torchaudio":
        raise ValueError(f"unknown contender '{contender}'; valid: ours, torchaudio")
    ref = torchaudio_hubert_pretrain(config)
    ref.load_state_dict(to_torchaudio_pretrain_state(ours.state_dict()))
    ref = ref.cuda()
    del ours
    weight = config.hubert.feature_penalty_weight

    def ta_loss() -> torch.Tensor:  # torchaudio's examples/hubert loss, as benchmarks.pretrain
        logit_m, _, penalty = ref(wavs, labels, lengths)
        target = torch.zeros(logit_m.shape[0], dtype=torch.long, device="cuda")
        return F.cross_entropy(logit_m.float(), target, reduction="sum") / logit_m.shape[0] + weight * penalty

    return _step(ref, ta_loss, ours=False)


def measure(contender: str, seconds: list[float], num_layers: int | None, warmup: int, steps: int):
    """(seconds per step, peak allocated GiB) of one contender, built, timed and freed."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    step = build_step(contender, seconds, num_layers)
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    per_step = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30
    del step
    return per_step, peak


def cuda_info() -> dict:
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }


def run(quick: bool) -> list[Row]:
    # full: ~78 audio-s per step, near fairseq's HuBERT Base batch per GPU (max_tokens 1.4M = 87.5 s)
    seconds = padded_batch(5.0, 4) if quick else padded_batch(15.0, 8)
    warmup, steps = (2, 5) if quick else (3, 20)
    layers = None
    peak = matmul_peak_bf16()
    rows = [
        make_row(
            GROUP, "bf16 matmul peak (8192x8192)", peak / 1e12, None, "TFLOP/s", note="measured in this run"
        )
    ]
    results = {}
    for contender in ("ours", "torchaudio"):
        try:
            results[contender] = measure(contender, seconds, layers, warmup, steps)
        except Exception as err:  # a reference that breaks must not lose our row
            print(f"[gpu] {contender} failed: {type(err).__name__}: {err}", file=sys.stderr)
            results[contender] = None
    audio = sum(seconds)
    label = f"{PRESET} bf16 pretraining step, batch {len(seconds)} x <= {max(seconds):g} s"
    ours, ref = results["ours"], results["torchaudio"]
    note = f"{warmup} warm-up + {steps} timed steps; ours vs torchaudio HuBERTPretrainModel"
    rows.append(make_row(GROUP, f"{label}: throughput", ours and audio / ours[0], ref and audio / ref[0],
                         "audio-s/s", note=note))  # fmt: skip
    rows.append(make_row(GROUP, f"{label}: step time", ours and 1e3 * ours[0], ref and 1e3 * ref[0], "ms",
                         higher_is_better=False, note=note))  # fmt: skip
    memory_note = "torch.cuda.max_memory_allocated: weights, optimizer, activations"
    rows.append(make_row(GROUP, f"{label}: peak allocated memory", ours and ours[1], ref and ref[1], "GiB",
                         higher_is_better=False, note=memory_note))  # fmt: skip
    if ours:
        flops = 3 * sum(forward_flops(pretrain_config("hubert", PRESET, layers).model, s) for s in seconds)
        achieved = flops / ours[0]
        mfu_note = f"3x analytic forward FLOPs of the valid audio; {achieved / 1e12:.1f} TFLOP/s achieved"
        rows.append(make_row(GROUP, f"{label}: MFU", 100 * achieved / peak, None, "%", note=mfu_note))
        sheet = datasheet_peak(torch.cuda.get_device_name())
        if sheet is not None:
            rows.append(make_row(GROUP, f"{label}: MFU vs datasheet", 100 * achieved / sheet, None, "%",
                                 note=f"dense bf16 peak {sheet / 1e12:.0f} TFLOP/s (datasheet)"))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller batch and fewer steps (~1 minute)")
    parser.add_argument("--json", help="write {meta, rows} here")
    parser.add_argument("--md", help="write the markdown table here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA: GPU benchmark rows not measured (nothing written)")
        return 0
    start = time.perf_counter()
    meta = machine_info(torch.get_num_threads())
    command = "python -m benchmarks.gpu " + " ".join(sys.argv[1:] if argv is None else argv)
    meta.update(cuda_info(), mode="quick" if args.quick else "full", command=command)
    rows = run(args.quick)
    meta["wall_s"] = time.perf_counter() - start
    if args.json:
        atomic_write_text(
            args.json, json.dumps({"meta": meta, "rows": [r.as_dict() for r in rows]}, indent=1) + "\n"
        )
    table = (f"GPU {meta['gpu']} ({meta['gpu_memory_gib']} GiB), CUDA {meta['cuda']}, "
             f"cuDNN {meta['cudnn']}.\n\n" + to_markdown(rows, meta))  # fmt: skip
    if args.md:
        atomic_write_text(args.md, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
