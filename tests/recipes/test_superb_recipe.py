"""egs/mini_synth/superb1 end to end on tiny settings: a 0.01 h synthetic corpus, every
task over fbank and a random tiny HuBERT, 2 updates each; then the report's files."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EGS = REPO / "egs" / "mini_synth" / "superb1"
TASKS = ("pr", "ks", "ic", "sid", "asv")


def _recipe_copy(root: Path) -> Path:
    """The egs dir in a scratch folder (data/ and exp/ land there, not in the repo)."""
    work = root / "superb1"
    work.mkdir()
    shutil.copy2(EGS / "run.sh", work / "run.sh")
    shutil.copytree(EGS / "local", work / "local")
    shutil.copytree(EGS / "conf", work / "conf")
    (work / "superb.sh").symlink_to(REPO / "recipes" / "superb.sh")
    (work / "utils").symlink_to(REPO / "recipes" / "utils")
    return work


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return env


def _run(work: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(work / "run.sh"), *args],
        cwd=work,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def work(tmp_path) -> Path:
    return _recipe_copy(tmp_path)


@pytest.mark.slow
def test_mini_superb_recipe_runs_every_task(work, tmp_path):
    import torch

    from speechssl.models.checkpoint import save_checkpoint
    from speechssl.models.model import build_model
    from speechssl.testing.models import tiny_config

    torch.manual_seed(0)
    config = tiny_config()
    hubert = tmp_path / "pretrain" / "hubert_mini" / "checkpoints" / "last"
    save_checkpoint(build_model(config), config, hubert)

    proc = _run(
        work,
        "--local_data_opts",
        "--hours 0.01 --nj 2",
        "--upstreams",
        f"fbank {hubert}",
        "--max_steps",
        "2",
        "--nj",
        "2",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for n in range(1, 6):
        assert f"Stage {n}:" in proc.stdout

    # task layout the runner reads
    data = work / "data"
    for task in TASKS:
        for split in ("train", "dev", "test"):
            assert (data / task / split / "wav.scp").is_file(), (task, split)
    trials = (data / "asv" / "dev" / "trials").read_text().split("\n")
    assert {line.split()[2] for line in trials if line} == {"target", "nontarget"}
    assert (data / "asv" / "test" / "trials").is_file()

    # the report: one column per upstream (named after the run, not 'last'), every task a number
    report = work / "exp" / "superb_report"
    assert (report / "results.md").is_file() and (report / "layer_weights.png").stat().st_size > 0
    table = json.loads((report / "results.json").read_text())
    assert table["upstreams"] == ["fbank", "hubert_mini"]
    assert list(table["tasks"]) == list(TASKS)
    for task, entry in table["tasks"].items():
        for upstream in ("fbank", "hubert_mini"):
            value = entry["values"][upstream]
            assert isinstance(value, float | int) and math.isfinite(value), (task, upstream, value)
    assert "| asv | eer (%) (test) |" in (report / "results.md").read_text()
    # the name is the experiment's own record (`downstream train --name`), not a symlink's name
    assert not (work / "exp" / "upstreams").exists()
    record = (work / "exp" / "ks_hubert_mini" / "downstream.yaml").read_text()
    assert "name: hubert_mini" in record and f"upstream: {hubert}" in record
    # every job of the pool has its own log
    assert (work / "exp" / "ks_hubert_mini.train.log").is_file() and (
        work / "exp" / "ks_fbank" / "evaluate.log"
    ).is_file()
    # the dev trials of `speechssl data trials`: every pair of the combined dev dir
    dev_ids = (data / "asv" / "dev" / "utt2spk").read_text().split("\n")
    assert (
        len([line for line in trials if line])
        == len([x for x in dev_ids if x]) * (len([x for x in dev_ids if x]) - 1) // 2
    )

    # re-running skips finished work (markers) and still reports
    again = _run(work, "--upstreams", f"fbank {hubert}", "--max_steps", "2", "--stage", "3")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Stage 3: train" not in again.stdout and "Stage 4: evaluate" not in again.stdout
    # a training since the evaluation (a --resume rewrites best.json) is evaluated again, alone
    best = work / "exp" / "ks_fbank" / "best.json"
    later = (work / "exp" / "ks_fbank" / "results_test.json").stat().st_mtime + 10
    os.utime(best, (later, later))
    again = _run(work, "--upstreams", f"fbank {hubert}", "--max_steps", "2", "--stage", "4")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("Stage 4: evaluate") == 1 and "Stage 4: evaluate ks on fbank" in again.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "pr xx"], "unknown task 'xx' in --tasks"),
        (["--upstreams", "fbank fbank"], "two upstreams get the same name"),
        (["--upstreams", "fbank x", "--upstream_names", "a"], "--upstream_names has 1 names for 2 upstreams"),
        (["--no_such_option", "1"], "unknown option --no_such_option"),
        (["--stage", "3", "--stop_stage", "3"], "data/pr/train is missing: run stage 1"),
        (
            ["--local_data_opts", "--corpus_dir /nonexistent/corpus"],
            "--corpus_dir /nonexistent/corpus is not a speechssl",
        ),
    ],
)
def test_bad_options_exit_2_with_a_message(work, args, message):
    proc = _run(work, *args, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stdout + proc.stderr


def test_missing_upstream_and_config_are_named(work):
    for task in TASKS:
        (work / "data" / task / "train").mkdir(parents=True)
    proc = _run(work, "--stage", "3", "--upstreams", "/nonexistent/ckpt", timeout=120)
    assert proc.returncode == 2 and "upstream /nonexistent/ckpt does not exist" in proc.stdout + proc.stderr
    (work / "conf" / "ic.yaml").unlink()
    proc = _run(work, "--stage", "3", timeout=120)
    assert proc.returncode == 2 and "downstream config conf/ic.yaml of task ic does not exist" in proc.stdout


def test_a_failed_job_stops_the_recipe_with_the_end_of_its_log(work):
    for split in ("train", "dev", "test"):
        (work / "data" / "ks" / split).mkdir(parents=True)
    # the sweep reaches the config as a YAML list; 1e-2 is read as a float, -1 is refused by the library
    proc = _run(
        work, "--stage", "3", "--stop_stage", "4", "--tasks", "ks", "--lr_sweep", "1e-2  -1", timeout=120
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Error: job failed (log: exp/ks_fbank.train.log)" in proc.stderr
    assert "lr_sweep must hold positive learning rates, found [0.01, -1.0]" in proc.stderr
    assert "Stage 4" not in proc.stdout
