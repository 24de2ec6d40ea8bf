"""`make gpu-check` on a machine without CUDA: it says so and exits 0, having run nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_gpu_check_without_cuda_says_so_and_writes_nothing(tmp_path):
    before = {p: p.stat().st_mtime_ns for p in (ROOT / "benchmarks").glob("gpu-*")}
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path / "out")}
    done = subprocess.run(
        ["bash", "tools/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA: GPU check skipped" in done.stdout
    assert not (tmp_path / "out").exists()
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "benchmarks").glob("gpu-*")} == before


def test_gpu_check_rejects_an_unknown_option():
    done = subprocess.run(
        ["bash", "tools/gpu_check.sh", "--fast"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "usage: tools/gpu_check.sh [--quick]" in done.stderr
