"""Subprocess entry point of `harness.peak_memory_mib`: `python -m benchmarks.memprobe JOB_JSON`.

What is measured (CPU): the peak resident set size (Linux VmHWM) during one steady-state
call of a step (after a warm-up call), minus the RSS just before that call: activations,
gradients and temporaries; not the weights or optimizer moments, which exist before the
call and are the same for contenders of the same architecture. glibc is told to serve every
allocation above 64 KiB by mmap and to give freed memory back, so RSS follows what torch
holds (tracemalloc cannot see torch's allocations). On CUDA the probe reports
`torch.cuda.max_memory_allocated` instead. Prints one JSON list of MiB values.
"""

from __future__ import annotations

import ctypes
import gc
import json
import sys
from pathlib import Path

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _tune_malloc() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 64 * 1024)  # fixed: disables glibc's growing threshold
        libc.mallopt(_M_TRIM_THRESHOLD, 64 * 1024)
    except OSError:
        pass  # not glibc: numbers are coarser, still comparable between contenders


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def measure(spec: dict, threads: int) -> float:
    import torch

    from benchmarks.harness import Spec

    torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    step = Spec(**spec).build()
    step()  # warm-up: lazy state (optimizer moments, kernel caches) exists before the measured call
    gc.collect()
    base = torch.cuda.memory_allocated() if cuda else _status_kib("VmRSS") * 1024
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        _reset_peak()
        step()
        peak = _status_kib("VmHWM") * 1024
    del step
    gc.collect()
    return (peak - base) / 2**20


def main(argv: list[str]) -> int:
    _tune_malloc()
    job = json.loads(argv[0])
    print(json.dumps([measure(spec, job["threads"]) for spec in job["specs"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
