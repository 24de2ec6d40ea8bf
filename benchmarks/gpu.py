"""GPU rows (issue 18): `python -m benchmarks.gpu [--quick] [--json PATH] [--md PATH]`.

One HuBERT Base pretraining step (forward, backward, AdamW step) in bf16 autocast on one CUDA
device: ours vs torchaudio's HuBERTPretrainModel on the same weights and padded batch, each with
its own recipe's optimizer (benchmarks.pretrain._optimizer). Per contender: step time, throughput
in audio-seconds per second, peak allocated memory; for ours also MFU against a large bf16
matmul measured in the same run and against the datasheet's dense bf16 peak (both reported), and
MFU of our padding-free step on the same batch repeated 4 times (does a larger batch fill the GPU?).
Timing: CUDA-synchronised wall clock over `steps` steps after `warmup` steps; contenders run one
after the other, each freed before the next; ours also padding-free and, for HuBERT, with the
frontend formulation benchmarks.gpu_convs times alone (not in the package). Last, our step with
CUDA graphs (compile reduce-overhead) on the batch and on an unpadded batch of as many utterances
as the batch repeated 4 times. With --profile: where our eager step's GPU time goes and,
profiled as it was timed, the CUDA-graphs step's on the unpadded batch (rows: kernel time by kind,
GPU busy, launches per step).
Without CUDA it writes nothing and says so (exit 0): CPU numbers are `python -m benchmarks`.
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import re
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import torch

from benchmarks import gpu_convs, upstream
from benchmarks.common import padded_batch
from benchmarks.harness import Row, machine_info, make_row, to_markdown
from benchmarks.mfu import forward_flops
from benchmarks.pretrain import pretrain_config, pretrain_step
from speechssl.io import atomic_write_text

GROUP = "gpu"
T = TypeVar("T")
DEVICE = "cuda"  # every row runs on the current CUDA device
PRESETS = {"hubert": "hubert_base", "wav2vec2": "wav2vec2_base"}
# Dense (no 2:4 sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s; first match
# of the device name wins. The measured matmul is the other, reachable, reference.
DATASHEET_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                         ("A100", 312.0))  # fmt: skip


def datasheet_peak(name: str) -> float | None:
    """The datasheet's dense bf16 FLOP/s of a device named `name`, None if not in the table."""
    return next((tf * 1e12 for key, tf in DATASHEET_BF16_TFLOPS if key in name), None)


def matmul_peak_bf16(n: int = 8192, repeats: int = 10) -> float:
    """FLOP/s of an n x n bf16 matmul on the current CUDA device (best of `repeats`, CUDA events)."""
    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
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


def measure(
    build: Callable[[], Callable[[], object]], warmup: int, steps: int,
    inspect: Callable[[Callable[[], object]], object] | None = None,
) -> tuple[float, float]:  # fmt: skip
    """(seconds per call, peak allocated GiB) of one contender, built, timed, handed to `inspect`
    (a profile of the same warm step, compiled graphs and all) and freed."""
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    step = build()
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    per_step = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30
    if inspect is not None:
        inspect(step)
    del step
    return per_step, peak


def training_step(
    family: str, contender: str, seconds: list[float], time_major: bool = False, **options
) -> Callable[[], None]:
    """A bf16 pretraining step (benchmarks.pretrain.pretrain_step) on the GPU; `time_major`: ours
    with the waveform frontend as benchmarks.gpu_convs.time_major_frontend computes it."""
    preset = PRESETS[family]
    step = pretrain_step(contender, family, preset, seconds, device=DEVICE, amp=torch.bfloat16, **options)
    if not time_major:
        return step

    def time_major_step() -> None:
        with gpu_convs.time_major_frontends():
            step()

    return time_major_step


def inference_step(contender: str, seconds: list[float]) -> Callable[[], None]:
    """Upstream inference of hubert_base in bf16 autocast on the GPU, the weights of
    benchmarks.upstream (ours; torchaudio and transformers loaded with them)."""
    model = copy.deepcopy(upstream.build(contender, PRESETS["hubert"])).to(DEVICE)
    run = upstream.runner(contender, model, seconds, DEVICE)

    def step() -> None:
        with torch.inference_mode(), torch.autocast(DEVICE, dtype=torch.bfloat16):
            run()

    return step


def _kernel_time_us(event) -> float:
    return float(
        getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)
    )


KERNEL_KINDS = (  # first match wins: cuDNN's implicit-GEMM convolutions also say "gemm"; inductor
    # names its fused kernels after the ops they fuse ("triton_poi_fused_convolution_gelu_3")
    ("fused by inductor (triton)", re.compile(r"^triton_")),
    ("convolution", re.compile(r"conv|fprop|dgrad|wgrad|implicit_convolve|winograd", re.I)),
    ("attention", re.compile(r"flash|fmha|attention|efficient_attention", re.I)),
    ("matmul", re.compile(r"gemm|nvjet|cutlass|xmma|cublas", re.I)),
    ("normalisation", re.compile(r"norm", re.I)),
    ("optimizer", re.compile(r"adam|foreach|multi_tensor", re.I)),
)


def profile_step(family: str, seconds: list[float], **options) -> dict | None:
    """profile_calls of our `family` step (`options`: pretrain_step's), built and warmed up here."""
    step = training_step(family, "ours", seconds, **options)
    for _ in range(3):
        step()
    return profile_calls(step, f"our {PRESETS[family]} bf16 step {options or ''}")


def profile_calls(step: Callable[[], object], label: str, steps: int = 3, top: int = 25) -> dict | None:
    """Where the GPU time of `steps` calls of a warm `step` goes: kernel time by kind, the share of
    the wall time the GPU is busy, kernel launches per step, and the top kernels (printed; the
    summary is also returned, for the table; None if the profiler saw no kernel). Kernels
    replayed in CUDA graphs count as launched."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        wall_us = (time.perf_counter() - t0) * 1e6
    kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
    total = sum(_kernel_time_us(e) for e in kernels)
    if not total:  # e.g. a profiler that does not see the kernels CUDA graphs replay: no rows of zeros
        print(f"[profile] {label}: the profiler recorded no kernel time; no rows", file=sys.stderr)
        return None
    kinds: dict[str, float] = {}
    for event in kernels:
        kind = next(
            (name for name, pattern in KERNEL_KINDS if pattern.search(event.key)), "elementwise/other"
        )
        kinds[kind] = kinds.get(kind, 0.0) + _kernel_time_us(event)

    def ms(us: float) -> float:
        return us / steps / 1e3

    launches = sum(e.count for e in kernels) / steps
    label = f"{label}, {steps} steps"
    print(f"[profile] {label}: wall {ms(wall_us):.1f} ms/step, kernels {ms(total):.1f} ms/step "
          f"(GPU busy {100 * total / wall_us:.0f} %), {launches:.0f} kernel launches/step")  # fmt: skip
    for kind, us in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"[profile]   {kind:18s} {ms(us):8.2f} ms/step  {100 * us / max(total, 1e-9):5.1f} %")
    print(f"[profile] top {top} kernels (ms per step, calls per step):")
    for event in sorted(kernels, key=lambda e: -_kernel_time_us(e))[:top]:
        print(f"[profile]   {ms(_kernel_time_us(event)):8.3f}  {event.count / steps:6.1f}  {event.key[:100]}")
    print("[profile] top CPU ops by self CPU time (ms per step):")
    for event in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]:
        print(
            f"[profile]   {ms(event.self_cpu_time_total):8.3f}  {event.count / steps:6.1f}  {event.key[:100]}"
        )
    return {
        "wall_ms": ms(wall_us),
        "kernel_ms": ms(total),
        "busy_pct": 100 * total / wall_us,
        "launches": launches,
        "kinds_ms": {k: ms(v) for k, v in kinds.items()},
    }


def profile_rows(family: str, label: str, summary: dict) -> list[Row]:
    """A profile's summary as rows of the table (the full profile is in the log)."""
    name = f"{PRESETS[family]} bf16 step, {label}, profiled"
    kinds = "torch.profiler, 3 steps; " + ", ".join(
        f"{kind} {value:.1f}" for kind, value in sorted(summary["kinds_ms"].items(), key=lambda kv: -kv[1])
    )
    return [
        make_row(GROUP, f"{name}: {what}", summary[key], None, unit, note=note)
        for what, key, unit, note in (
            ("kernel time per step", "kernel_ms", "ms", kinds),
            ("wall time per step", "wall_ms", "ms", "under torch.profiler, its overhead included"),
            ("GPU busy", "busy_pct", "%", "kernel time / wall time under the profiler"),
            ("kernel launches per step", "launches", "launches", "device events: kernels, memcpys, memsets"),
        )
    ]


def cuda_info() -> dict:
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(),
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }


def _try(name: str, fn: Callable[[], T]) -> T | None:
    try:
        return fn()
    except Exception as err:  # a contender that breaks must not lose the other rows
        print(f"[gpu] {name} failed: {type(err).__name__}: {err}", file=sys.stderr)
        return None


# (label, family, contender, options); the first contender of a family is the reference of the others
TRAINING = (
    ("ours", "hubert", "ours", {}),
    ("torchaudio HuBERTPretrainModel", "hubert", "torchaudio", {}),
    ("ours, padding-free (data.padding_free)", "hubert", "ours", {"padding_free": True}),
    # the frontend formulation the conv rows time alone, in the whole step (not in the package yet)
    ("ours, time-major frontend (benchmarks.gpu_convs)", "hubert", "ours", {"time_major": True}),
    ("ours", "wav2vec2", "ours", {}),
    ("transformers Wav2Vec2ForPreTraining", "wav2vec2", "transformers", {}),
    ("ours, padding-free (data.padding_free)", "wav2vec2", "ours", {"padding_free": True}),
)
TRAINING_OF = {family: [entry for entry in TRAINING if entry[1] == family] for family in PRESETS}
# after the eager rows: in one run every eager row measured after a compiled one came out 20-30 % slower
COMPILED = ("ours, torch.compile", "hubert", "ours", {"compile": True})
# the padding-free HuBERT step on the batch above repeated this many times: MFU that grows with the
# batch says the step is bound by launches and host work, MFU that stays says the kernels are slow
# (x2 measured 2.28x and 1.91x of the batch once in runs E and F, between 1x and x4's 2.5-2.6x: dropped)
SCALING = (4,)
# (family, label, options) of the profiled eager steps. wav2vec 2.0's two profiles (kernels 37.5 /
# 31.1 ms per step padded / padding-free in run E, 37.4 / 31.0 in run F) and HuBERT's padding-free
# one (28.5 ms in both; 0.31x of the padded step via jagged SDPA in run C, 1.23x calling flash in
# run D) made room for the profile of the compiled step replayed as CUDA graphs (below)
PROFILES = (("hubert", "padded", {}),)
# after everything else, and saved apart: CUDA graphs replay the whole step with no launch cost,
# an upper bound on what static (bucketed) batch shapes would buy a host-bound step
CUDA_GRAPHS = ("ours, torch.compile mode reduce-overhead (CUDA graphs)", {"compile": "reduce-overhead"})


def run(
    quick: bool, profile: bool = False, save: Callable[[list[Row]], object] = lambda rows: None
) -> list[Row]:
    """The rows; `save(rows)` gets those measured so far after each stage, so a check cut short by
    its time limit still leaves them."""
    # full: ~78 audio-s per step, near fairseq's HuBERT Base batch per GPU (max_tokens 1.4M = 87.5 s)
    seconds = padded_batch(5.0, 4) if quick else padded_batch(15.0, 8)
    warmup, steps = (2, 5) if quick else (3, 20)
    peak = matmul_peak_bf16()
    rows = [
        make_row(
            GROUP, "bf16 matmul peak (8192x8192)", peak / 1e12, None, "TFLOP/s", note="measured in this run"
        )
    ]
    # the conv stacks alone (first: no compiled graph has run yet)
    rows += _try("conv rows", lambda: gpu_convs.rows(quick)) or []
    audio = sum(seconds)
    batch = f"batch {len(seconds)} x <= {max(seconds):g} s"
    timing = f"{warmup} warm-up + {steps} timed steps"
    sheet = datasheet_peak(torch.cuda.get_device_name())

    def mfu(name: str, family: str, batch_seconds: list[float], per_step: float, note: str = "") -> list[Row]:
        """MFU rows of a `family` step on `batch_seconds` taking `per_step` s: 3x the analytic
        forward FLOPs of the valid audio, of the measured matmul peak and of the datasheet's."""
        model = pretrain_config(family, PRESETS[family], None).model
        achieved = 3 * sum(forward_flops(model, s) for s in batch_seconds) / per_step
        note = f"{note}3x analytic forward FLOPs of the valid audio; {achieved / 1e12:.1f} TFLOP/s"
        out = [make_row(GROUP, f"{name}: MFU", 100 * achieved / peak, None, "%", note=note)]
        if sheet is not None:
            out.append(make_row(GROUP, f"{name}: MFU vs datasheet", 100 * achieved / sheet, None, "%",
                                note=f"dense bf16 peak {sheet / 1e12:.0f} TFLOP/s (datasheet)"))  # fmt: skip
        return out

    save(rows)  # the matmul peak and the conv rows, before the long (compiled) contenders
    results = {}

    def train(entries: tuple, batch_seconds: list[float]) -> None:
        for label, family, contender, options in entries:
            build = functools.partial(training_step, family, contender, batch_seconds, **options)
            results[family, label] = result = _try(
                f"{family} {label}", functools.partial(measure, build, warmup, steps)
            )
            if result:  # printed as measured: a run cut short still tells
                print(f"[gpu] {family} {label}: {sum(batch_seconds) / result[0]:.0f} audio-s/s, "
                      f"{result[1]:.2f} GiB", flush=True)  # fmt: skip

    train(TRAINING, seconds)
    for family in PRESETS:
        entries = [(label, results[family, label]) for label, _, _, _ in TRAINING_OF[family]]
        ours = entries[0][1]
        name = f"{PRESETS[family]} bf16 pretraining step, {batch}"
        for label, ref in entries[1:]:
            if label.startswith("ours"):  # a variant of ours: the reference is our default
                rows.append(make_row(GROUP, f"{name}: {label} vs default, throughput", ref and audio / ref[0],
                                     ours and audio / ours[0], "audio-s/s", note=timing))  # fmt: skip
                continue
            note = f"{timing}; ours vs {label}"
            rate, ref_rate = ours and audio / ours[0], ref and audio / ref[0]
            rows.append(make_row(GROUP, f"{name}: throughput", rate, ref_rate, "audio-s/s", note=note))
            step_ms, ref_ms = ours and 1e3 * ours[0], ref and 1e3 * ref[0]
            rows.append(make_row(GROUP, f"{name}: step time", step_ms, ref_ms, "ms", higher_is_better=False,
                                 note=note))  # fmt: skip
            memory_note = "torch.cuda.max_memory_allocated: weights, optimizer, activations"
            rows.append(make_row(GROUP, f"{name}: peak allocated memory", ours and ours[1], ref and ref[1],
                                 "GiB", higher_is_better=False, note=memory_note))  # fmt: skip
        # the package's own steps only: the time-major row times a formulation it does not have yet
        package = [results[family, label] for label, _, contender, options in TRAINING_OF[family]
                   if contender == "ours" and "time_major" not in options]  # fmt: skip
        best = min((r for r in package if r), default=None)
        if best:
            rows += mfu(name, family, seconds, best[0], note="best of ours, eager; ")
    save(rows)  # before the longer contenders: a run cut short keeps these
    free = results["hubert", "ours, padding-free (data.padding_free)"]
    for times in SCALING:
        label = f"ours, padding-free, batch x{times}"
        train(((label, "hubert", "ours", {"padding_free": True}),), seconds * times)
        result = results["hubert", label]
        name = f"{PRESETS['hubert']} bf16 pretraining step, padding-free, {batch} repeated x{times}"
        rate, base_rate = result and times * audio / result[0], free and audio / free[0]
        rows.append(make_row(GROUP, f"{name}: throughput vs the batch once", rate, base_rate, "audio-s/s",
                             note=f"{timing}; {len(seconds) * times} utterances"))  # fmt: skip
        rows.append(make_row(GROUP, f"{name}: peak allocated memory", result and result[1], None, "GiB"))
        if result:
            rows += mfu(name, "hubert", seconds * times, result[0])
        save(rows)
    label, family, _, _ = COMPILED
    train((COMPILED,), seconds)
    compiled, eager = results[family, label], results[family, "ours"]
    name = f"{PRESETS[family]} bf16 pretraining step, {batch}"
    rows.append(make_row(GROUP, f"{name}: {label} vs default, throughput", compiled and audio / compiled[0],
                         eager and audio / eager[0], "audio-s/s", note=timing))  # fmt: skip
    if compiled:
        rows += mfu(f"{name}: {label}", family, seconds, compiled[0])
    save(rows)
    inference = {}
    for contender in upstream.CONTENDERS:
        build = functools.partial(inference_step, contender, seconds)
        inference[contender] = _try(
            f"inference {contender}", functools.partial(measure, build, warmup, steps)
        )
    name = f"{PRESETS['hubert']} bf16 inference, {batch}"
    ours = inference["ours"]
    for contender in upstream.CONTENDERS[1:]:
        ref = inference[contender]
        rate, ref_rate = ours and audio / ours[0], ref and audio / ref[0]
        rows.append(make_row(GROUP, f"{name}: throughput vs {contender}", rate, ref_rate, "audio-s/s",
                             note=f"{timing}; inference_mode"))  # fmt: skip
        rows.append(make_row(GROUP, f"{name}: peak allocated memory vs {contender}", ours and ours[1],
                             ref and ref[1], "GiB", higher_is_better=False))  # fmt: skip
    save(rows)
    if profile:
        for family, label, options in PROFILES:
            profiled = functools.partial(profile_step, family, seconds, **options)
            summary = _try(f"profile {family} {label}", profiled)
            rows += profile_rows(family, label, summary) if summary else []
        save(rows)
    label, options = CUDA_GRAPHS
    from torch._dynamo.utils import counters

    # new masks every step, as in training: HuBERT's loss runs over every frame, so no shape
    # depends on the mask and the graphs replay. On the benchmark's batch (35 % padding), and on as
    # many utterances as the batch repeated, all of the longest length, unpadded, as
    # data.static_shapes batches 15 s crops (2-3 % padding), where launches no longer bound the
    # step (the batch repeated x4 itself, padded: 0.98x of padding-free eager in run F, dropped)
    big = SCALING[-1]
    static = [max(seconds)] * (len(seconds) * big)
    free_big = results["hubert", f"ours, padding-free, batch x{big}"]
    cases = (
        (batch, seconds,
         [(results["hubert", "ours"], "eager"), (results["hubert", COMPILED[0]], "default compile")]),
        (f"batch {len(static)} x {max(seconds):g} s, unpadded", static,
         [(free_big, f"padding-free eager on the batch x{big}")]),
    )  # fmt: skip
    profiles: dict[str, dict | None] = {}

    def profile_graphs(what: str, step: Callable[[], object]) -> None:
        profiles[what] = _try(f"profile {what}", lambda: profile_calls(step, what))

    for description, batch_seconds, references in cases:
        build = functools.partial(training_step, "hubert", "ours", batch_seconds, **options)
        skips = counters["inductor"]["cudagraph_skips"]
        # where a compiled step's kernel time goes, replayed as CUDA graphs: the unpadded batch
        what = f"CUDA graphs, {description}"
        inspect = functools.partial(profile_graphs, what) if profile and batch_seconds is static else None
        measured = functools.partial(measure, build, warmup, steps, inspect)
        graphs = _try(f"hubert {label}, {description}", measured)
        skips = counters["inductor"]["cudagraph_skips"] - skips
        name = f"{PRESETS['hubert']} bf16 pretraining step, {description}: {label}"
        note = f"{timing}; the same batch every step, new masks"
        if graphs:
            note += f"; {skips} compiled graph(s) (forward and backward counted apart) not run as CUDA graphs"
        step_audio = sum(batch_seconds)
        rate = graphs and step_audio / graphs[0]
        for reference, ref_label in references:
            ref_rate = reference and step_audio / reference[0]
            rows.append(make_row(GROUP, f"{name} vs {ref_label}, throughput", rate, ref_rate, "audio-s/s",
                                 note=note))  # fmt: skip
        if graphs:
            rows += mfu(name, "hubert", batch_seconds, graphs[0])
            rows.append(make_row(GROUP, f"{name}: peak allocated memory", graphs[1], None, "GiB"))
        if profiles.get(what):
            rows += profile_rows("hubert", what, profiles[what])
        save(rows)
    save(rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller batch and fewer steps (~1 minute)")
    parser.add_argument("--json", help="write {meta, rows} here")
    parser.add_argument("--md", help="write the markdown table here")
    parser.add_argument("--profile", action="store_true", help="also profile where our steps' GPU time goes")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA: GPU benchmark rows not measured (nothing written)")
        return 0
    start = time.perf_counter()
    meta = machine_info(torch.get_num_threads())
    command = "python -m benchmarks.gpu " + " ".join(sys.argv[1:] if argv is None else argv)
    meta.update(cuda_info(), mode="quick" if args.quick else "full", command=command)

    def save(rows: list[Row], complete: bool = False) -> str:
        meta.update(wall_s=time.perf_counter() - start, complete=complete)
        table = (f"GPU {meta['gpu']} ({meta['gpu_memory_gib']} GiB), CUDA {meta['cuda']}, "
                 f"cuDNN {meta['cudnn']}." + ("" if complete else " **Partial: the run was cut short.**")
                 + "\n\n" + to_markdown(rows, meta))  # fmt: skip
        if args.md:  # before the JSON, which gpu_check.sh tests for being new
            atomic_write_text(args.md, table)
        if args.json:
            text = json.dumps({"meta": meta, "rows": [r.as_dict() for r in rows]}, indent=1) + "\n"
            atomic_write_text(args.json, text)
        return table

    print(save(run(args.quick, args.profile, save), complete=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
