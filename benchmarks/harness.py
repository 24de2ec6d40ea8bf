"""Measurement primitives shared by every benchmark group.

Method (issue 8): contenders run interleaved in one process (A, B, A, B, ...) after a
warm-up, and the median over repeats is kept, so drift of the machine (thermal, other
load) hits every contender alike. Peak memory is measured in a fresh subprocess per
contender (`benchmarks.memprobe`), see `peak_memory_mib`.

A contender is described by a `Spec` (module, factory, JSON-able kwargs) rather than a
live object, so the same description builds it for timing here and for the memory probe.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

Step = Callable[[], Any]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """How hard to measure. `quick` shrinks sizes; `threads` is set for every contender."""

    quick: bool = False
    warmup: int = 2
    repeats: int = 3
    min_seconds: float = 0.0  # per contender and case: fast calls are repeated until then
    threads: int = 2
    memory: bool = True  # peak memory rows (one subprocess per contender and group)
    tiny: bool = False  # smoke-test sizes: well-formed rows in seconds, numbers meaningless


@dataclass(frozen=True, kw_only=True)
class Spec:
    """How to build one contender: `module.factory(**kwargs)` returns a zero-argument step."""

    module: str
    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Step:
        return getattr(importlib.import_module(self.module), self.factory)(**self.kwargs)


@dataclass(frozen=True, kw_only=True)
class Row:
    """One line of the results table. `ratio` > 1 means we are better (None: no reference)."""

    group: str
    name: str
    ours: float | None
    reference: float | None
    unit: str
    ratio: float | None
    higher_is_better: bool = True
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_row(
    group: str, name: str, ours: float | None, reference: float | None, unit: str, *,
    higher_is_better: bool = True, note: str = "",
) -> Row:  # fmt: skip
    """Row with the ratio oriented so that > 1 is better for us (throughput ours/ref, cost ref/ours)."""
    ratio = None
    if ours is not None and reference is not None and ours > 0 and reference > 0:
        ratio = ours / reference if higher_is_better else reference / ours
    return Row(
        group=group, name=name, ours=ours, reference=reference, unit=unit, ratio=ratio,
        higher_is_better=higher_is_better, note=note,
    )  # fmt: skip


def time_interleaved(
    steps: dict[str, Step], *, warmup: int, repeats: int, min_seconds: float = 0.0, max_repeats: int = 25
) -> dict[str, float]:
    """Median seconds per call of each step, calling them round-robin (A, B, A, B, ...).

    At least `repeats` rounds, more (up to `max_repeats`) until each contender has run for
    about `min_seconds`, so a fast call gets enough samples for its median to beat the noise."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    rounds = repeats
    done = 0
    while done < rounds:
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            samples[name].append(time.perf_counter() - t0)
        done += 1
        if done == 1 and min_seconds > 0:
            slowest = max(values[0] for values in samples.values())
            rounds = max(repeats, min(max_repeats, math.ceil(min_seconds / max(slowest, 1e-9))))
    return {name: statistics.median(values) for name, values in samples.items()}


def peak_memory_mib(specs: Sequence[Spec], *, threads: int, timeout: float = 600.0) -> list[float | None]:
    """Peak resident-memory growth (MiB) of one call of each step, all specs of one contender
    measured in one fresh subprocess (see benchmarks/memprobe.py). None where the probe failed."""
    if not specs:
        return []
    job = {"threads": threads, "specs": [asdict(s) for s in specs]}
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent), *sys.path])
    )
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.memprobe", json.dumps(job)],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        print(f"memory probe failed for {specs[0].module}.{specs[0].factory}: {tail[0]}", file=sys.stderr)
        return [None] * len(specs)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_info(threads: int) -> dict[str, Any]:
    """Date, CPU model (/proc/cpuinfo), core count, torch version, threads, GPU if any."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torchaudio
    import transformers

    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "torchaudio": torchaudio.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none (GPU rows not measured)",
    }


def _fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def to_markdown(rows: Sequence[Row], meta: dict[str, Any]) -> str:
    """The results table with its machine header."""
    lines = [
        f"Measured {meta['date']} on {meta['cpu']} ({meta['cpu_count']} cores, "
        f"{meta['threads']} torch threads), "
        f"torch {meta['torch']}, torchaudio {meta['torchaudio']}, transformers {meta['transformers']}; "
        f"GPU: {meta['gpu']}. Mode: {meta['mode']}; `{meta['command']}` took {meta.get('wall_s', 0):.0f} s.",
        "",
        "ratio > 1 means speechssl is better (throughput ours/ref; time and memory ref/ours).",
        "",
        "| group | benchmark | ours | reference | unit | ratio | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.2f}x"
        lines.append(
            f"| {r.group} | {r.name} | {_fmt(r.ours)} | {_fmt(r.reference)} | {r.unit} | {ratio} | {r.note} |"
        )
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, kw_only=True)
class Case:
    """One workload run by several contenders; `work` units per call (e.g. audio seconds)."""

    name: str
    work: float
    unit: str  # throughput unit, e.g. "audio-s/s"
    contenders: dict[str, Spec]  # label -> spec; the label "ours" is compared with every other


def run_cases(group: str, cases: Sequence[Case], settings: Settings, *, note: str = "") -> list[Row]:
    """Throughput rows (interleaved timing per case) and, with `settings.memory`, peak-memory
    rows (one probe subprocess per contender label, covering all cases) for ours vs each other."""
    rows: list[Row] = []
    timings: list[dict[str, float]] = []
    for case in cases:
        steps = {label: spec.build() for label, spec in case.contenders.items()}
        timings.append(
            time_interleaved(
                steps, warmup=settings.warmup, repeats=settings.repeats, min_seconds=settings.min_seconds
            )
        )
        del steps
    memory: dict[str, list[float | None]] = {}
    if settings.memory:
        labels = dict.fromkeys(label for case in cases for label in case.contenders)
        for label in labels:
            specs = [case.contenders[label] for case in cases if label in case.contenders]
            values = iter(peak_memory_mib(specs, threads=settings.threads))
            memory[label] = [next(values) if label in case.contenders else None for case in cases]
    for i, (case, seconds) in enumerate(zip(cases, timings)):
        for label in case.contenders:
            if label == "ours":
                continue
            rows.append(make_row(
                group, f"{case.name}: throughput vs {label}", case.work / seconds["ours"],
                case.work / seconds[label], case.unit, note=note,
            ))  # fmt: skip
            if settings.memory:
                rows.append(make_row(
                    group, f"{case.name}: peak memory vs {label}", memory["ours"][i], memory[label][i], "MiB",
                    higher_is_better=False, note="peak RSS growth during one steady-state call (memprobe)",
                ))  # fmt: skip
    return rows
