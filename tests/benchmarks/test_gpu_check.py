"""`make gpu-check` (tools/gpu_check.sh): without CUDA it says so and exits 0, having run nothing;
with a (fake) CUDA python it hands back only the rows the run itself saved, complete or partial."""

from __future__ import annotations

import os
import re
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


FAKE_PYTHON = """#!/usr/bin/env bash
# a python3 with CUDA whose GPU benchmark finishes (MODE=complete), is cut short after saving
# some rows (partial) or before saving any (nothing); its static-shapes test exits STATIC_RC.
# Each call's arguments go to the file CALLS.
echo "$*" >> "$CALLS"
case "$*" in
  *"-m pytest -m gpu tests/gpu/test_static_shapes_gpu.py"*) exit "${STATIC_RC:-0}" ;;
  *"-m pytest"*) exit 0 ;;
  *"-m benchmarks.gpu"*)
    case "$MODE" in
      complete) echo complete > benchmarks/gpu-latest.md; echo '{}' > benchmarks/gpu-latest.json; exit 0 ;;
      partial) echo Partial > benchmarks/gpu-latest.md; echo '{}' > benchmarks/gpu-latest.json; exit 124 ;;
      nothing) exit 124 ;;
    esac ;;
  *"-m benchmarks"*) echo loader > benchmarks/gpu-loader.md; echo '{}' > benchmarks/gpu-loader.json; exit 0 ;;
  *"-c"*) exit 0 ;;
esac
exit 99
"""


def _run_check(tmp_path, **env_vars) -> tuple[subprocess.CompletedProcess, Path]:
    """tools/gpu_check.sh in a copy of the repo, on FAKE_PYTHON -> (the run, its OUT folder)."""
    repo = tmp_path / "repo"
    (repo / "tools").mkdir(parents=True)
    (repo / "tools" / "gpu_check.sh").write_text((ROOT / "tools" / "gpu_check.sh").read_text())
    (repo / "benchmarks").mkdir()
    for name in ("gpu-latest.json", "gpu-latest.md"):
        stale = repo / "benchmarks" / name
        stale.write_text("an earlier run\n")
        os.utime(stale, (1_000_000_000, 1_000_000_000))
    python = tmp_path / "python3"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    out = tmp_path / "out"
    env = {**os.environ, "PY": str(python), "OUT": str(out), "CALLS": str(tmp_path / "calls"), **env_vars}
    done = subprocess.run(["bash", str(repo / "tools" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    return done, out


@pytest.mark.parametrize(
    ("mode", "copied"), [("complete", "complete"), ("partial", "Partial"), ("nothing", None)]
)
def test_gpu_check_hands_back_the_rows_this_run_saved_and_never_an_earlier_runs(tmp_path, mode, copied):
    """A check cut short by its time limit still returns the rows it saved ("Partial"); a run that
    saved none returns nothing, not the tracked files of an earlier run."""
    done, out = _run_check(tmp_path, MODE=mode)
    assert (done.returncode == 0) == (mode == "complete"), done.stdout + done.stderr
    if copied is None:
        assert not (out / "gpu-latest.md").exists() and not (out / "gpu-latest.json").exists()
    else:
        assert (out / "gpu-latest.md").read_text().strip() == copied
        assert (out / "gpu-latest.json").exists()
    assert (out / "gpu-loader.md").read_text().strip() == "loader"


def test_a_static_shapes_test_cut_short_fails_the_check_but_not_the_rows(tmp_path):
    """The static-shapes test (a long compile) runs apart and last, with what is left of the 8
    minutes: past that the check fails and says so, and the benchmark rows and loader rows, run
    before it, are already back."""
    done, out = _run_check(tmp_path, MODE="complete", STATIC_RC="124")
    assert done.returncode == 1, done.stdout + done.stderr
    limit = re.search(r"the static-shapes test did not finish within its (\d+) s", done.stderr)
    assert limit and 470 <= int(limit.group(1)) <= 480  # the fake stages take no time
    assert "static shapes rc=124" in done.stdout
    assert (out / "gpu-latest.md").read_text().strip() == "complete"
    assert (out / "gpu-loader.md").read_text().strip() == "loader"
    calls = [line for line in (tmp_path / "calls").read_text().splitlines() if line.startswith("-m ")]
    stages = [("tests" if "--deselect" in line else "static") if line.startswith("-m pytest") else
              "rows" if line.startswith("-m benchmarks.gpu") else "loader" for line in calls]  # fmt: skip
    assert stages == ["tests", "rows", "loader", "static"], calls


def test_gpu_rows_are_formed_from_their_measurements(monkeypatch, capsys):
    """benchmarks.gpu.run on a CPU with the GPU's measurements faked (every step 0.1 s, 1 GiB; the
    time-major frontend's 0.05 s): the row-forming code, which only a GPU session runs, names every
    row it promises and computes its throughput from the batch's audio, so a slip there does not
    cost a GPU session its rows. The
    profiles: the eager step, padded, and the CUDA-graphs step on the unpadded batch, profiled as
    it was timed. The eager MFU row is of the package's own steps, not of the time-major row."""
    from benchmarks import gpu, gpu_convs

    summary = {"wall_ms": 10.0, "kernel_ms": 5.0, "busy_pct": 50.0, "launches": 9.0, "kinds_ms": {"mm": 5.0}}
    inspected = []

    def measure(build, warmup, steps, inspect=None):
        if inspect is not None:
            inspect(lambda: None)
            inspected.append(build.args[2])  # the batch's utterance lengths
        return (0.05 if build.keywords.get("time_major") else 0.1), 1.0

    monkeypatch.setattr(gpu, "matmul_peak_bf16", lambda: 800e12)
    monkeypatch.setattr(gpu_convs, "rows", lambda quick: [])
    monkeypatch.setattr(gpu, "measure", measure)
    monkeypatch.setattr(gpu, "profile_step", lambda family, seconds, **options: summary)
    monkeypatch.setattr(gpu, "profile_calls", lambda step, label: summary)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "NVIDIA H200")
    saved = []
    rows = gpu.run(quick=True, profile=True, save=lambda rows: saved.append(len(rows)))
    assert inspected == [[5.0] * 16]
    profiled = {row.name.split(", profiled")[0] for row in rows if ", profiled" in row.name}
    assert profiled == {f"hubert_base bf16 step, {what}" for what in
                        ("padded", "CUDA graphs, batch 16 x 5 s, unpadded")}  # fmt: skip
    names = [row.name for row in rows]
    assert len(set(names)) == len(names) and saved[-1] == len(rows)
    graphs = [row for row in rows if "reduce-overhead" in row.name and row.name.endswith("throughput")]
    batches = {"batch 4 x <= 5 s", "batch 16 x 5 s, unpadded"}
    assert {row.name.split(": ")[0].split(", ", 1)[1] for row in graphs} == batches, [r.name for r in graphs]
    unpadded = next(row for row in graphs if "unpadded" in row.name)
    assert unpadded.ours == pytest.approx(16 * 5.0 / 0.1)  # 16 utterances of 5 s per 0.1 s step
    time_major = next(row for row in rows if "time-major frontend" in row.name)
    assert time_major.ratio == pytest.approx(2.0)  # vs ours, default
    eager_mfu = {row.name: row for row in rows}["hubert_base bf16 pretraining step, batch 4 x <= 5 s: MFU"]
    flops = 3 * sum(gpu.forward_flops(gpu.pretrain_config("hubert", "hubert_base", None).model, s)
                    for s in gpu.padded_batch(5.0, 4))  # fmt: skip
    assert eager_mfu.ours == pytest.approx(100 * flops / 0.1 / 800e12)  # the package's step, 0.1 s
    assert all(row.ours is not None for row in rows) and "failed" not in capsys.readouterr().err


def test_a_profile_that_saw_no_kernels_gives_no_rows(monkeypatch, capsys):
    """A profiler that records no kernel time (a CPU here; on a GPU, one blind to the kernels CUDA
    graphs replay) yields no summary, so the table gets no rows of zeros."""
    from benchmarks import gpu

    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    assert gpu.profile_calls(lambda: torch.ones(64).cumsum(0), "a CPU step", steps=2) is None
    assert "a CPU step: the profiler recorded no kernel time; no rows" in capsys.readouterr().err
