"""recipes/utils/job_pool.sh: --cmd local and --cmd slurm (a fake `sbatch` on PATH that runs the job
script here and records its command line), each job's log, a failed job stopping the recipe."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.recipes.test_ssl_recipe import REPO, copy_recipe

POOL = REPO / "recipes" / "utils" / "job_pool.sh"
FAKE_SBATCH = """#!/usr/bin/env bash
# A stand-in for Slurm's sbatch: records its arguments, then runs the job script (the last argument)
# here, its output to the --output file, and exits with its status (as `sbatch --wait` does).
printf '%s\\n' "$*" >> "${FAKE_SBATCH_CALLS}"
out=""; args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do [ "${args[i]}" = --output ] && out=${args[i + 1]}; done
echo "Submitted batch job $$"
SLURM_JOB_ID=$$ bash "${args[-1]}" > "${out}" 2>&1
"""


def fake_slurm(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH has the fake sbatch first (and this venv's speechssl)."""
    bin_dir = tmp_path / "slurm_bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    calls = tmp_path / "sbatch_calls.txt"
    path = f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    return dict(os.environ, PATH=path, FAKE_SBATCH_CALLS=str(calls), OMP_NUM_THREADS="1")


def sbatch_calls(env: dict[str, str]) -> list[list[str]]:
    calls = Path(env["FAKE_SBATCH_CALLS"])
    return [line.split() for line in calls.read_text().splitlines()] if calls.exists() else []


def run_pool(cwd: Path, body: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A recipe-like script: `set -euo pipefail`, the pool sourced, then BODY."""
    script = f"set -euo pipefail\n. {shlex.quote(str(POOL))}\n{body}\necho finished\n"
    return subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
    )


JOBS = """
pool_run log/a.log echo "hello a"
pool_run log/b.log bash -c 'echo "b is here"; exit 3'
pool_run log/c.log echo "hello c"
pool_wait
"""


@pytest.mark.parametrize("backend", ["local", "slurm"])
def test_each_job_has_its_log_and_a_success_goes_on(tmp_path, backend):
    env = fake_slurm(tmp_path)
    body = f'pool_init 2 {backend} "--partition cpu --time 5"\npool_run log/a.log echo "hello a"\n'
    body += "pool_run 'log/two words.log' printf '%s\\n' \"it's\" '$HOME'\npool_wait"
    result = run_pool(tmp_path, body, env)
    assert result.returncode == 0 and "finished" in result.stdout, result.stderr
    log = (tmp_path / "log/a.log").read_text().splitlines()
    assert log[0] == "# echo hello\\ a" and log[1].startswith("# Started at ")
    assert log[2] == "hello a" and log[3].startswith("# Ended (code 0) at ")
    # arguments reach the job as they were given: quotes, spaces and $ survive the job script
    assert (tmp_path / "log/two words.log").read_text().splitlines()[2:4] == ["it's", "$HOME"]
    calls = sbatch_calls(env)
    if backend == "local":
        assert calls == []
        return
    assert len(calls) == 2
    for call, name in zip(calls, ("a", "two words")):
        # --wait: the pool's slot stays taken until the job ends; the log is the job's --output
        assert call[:3] == ["--wait", "--job-name", name.split()[0]]
        assert " ".join(call).startswith(f"--wait --job-name {name} --output {tmp_path}/log/{name}.log")
        assert " ".join(call).endswith(f"--partition cpu --time 5 {tmp_path}/log/q/{name}.sh")
    script = (tmp_path / "log/q/a.sh").read_text()
    assert f"cd {tmp_path}" in script and "echo hello\\ a && rc=0" in script
    assert (tmp_path / "log/q/a.sbatch.log").read_text().startswith("Submitted batch job")


@pytest.mark.parametrize("backend", ["local", "slurm"])
def test_a_failed_job_stops_the_recipe_with_the_end_of_its_log(tmp_path, backend):
    env = fake_slurm(tmp_path)
    result = run_pool(tmp_path, f"pool_init 1 {backend}\n{JOBS}", env)
    assert result.returncode == 1 and "finished" not in result.stdout
    assert "Error: job failed (log: log/b.log); its last lines:" in result.stderr
    assert "b is here" in result.stderr and "# Ended (code 3) at" in result.stderr
    # with one slot, the job after the failed one never starts
    assert (tmp_path / "log/a.log").is_file() and not (tmp_path / "log/c.log").exists()
    assert len(sbatch_calls(env)) == (2 if backend == "slurm" else 0)


def test_slurm_without_sbatch_and_an_unknown_backend_exit_2(tmp_path):
    env = dict(os.environ, PATH="/usr/bin:/bin")
    result = run_pool(tmp_path, "pool_init 2 slurm", env)
    assert result.returncode == 2 and "--cmd slurm needs sbatch on PATH" in result.stderr
    result = run_pool(tmp_path, "pool_init 2 pbs", env)
    assert result.returncode == 2 and "--cmd must be local or slurm, got 'pbs'" in result.stderr


def test_the_recipes_check_cmd_before_any_stage(tmp_path):
    cwd = copy_recipe(tmp_path / "ssl1")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin")
    result = subprocess.run(["./run.sh", "--cmd", "slurm"], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "--cmd slurm needs sbatch on PATH" in result.stderr
    assert "Stage 1" not in result.stdout and not (cwd / "data").exists()


@pytest.mark.slow
def test_ssl_recipe_runs_feature_shards_and_kmeans_labels_as_slurm_jobs(tmp_path):
    env = fake_slurm(tmp_path)
    cwd = copy_recipe(tmp_path / "ssl1")
    args = ["--stop_stage", "5", "--local_data_opts", "--hours 0.02 --nj 2", "--n_clusters", "4",
            "--pretrain_configs", "conf/pretrain_hubert_tiny.yaml",  # one iteration: its stages 1-5
            "--cmd", "slurm", "--slurm_opts", "--partition cpu"]  # fmt: skip
    result = subprocess.run(
        ["./run.sh", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = {call[2]: call for call in sbatch_calls(env)}
    shards = [f"features.read_{s}.{r}" for s in ("train", "dev") for r in (0, 1)]
    assert sorted(jobs) == sorted([*shards, "units_mfcc_k4.read_train", "units_mfcc_k4.read_dev"])
    for name, call in jobs.items():
        assert call[-3:-1] == ["--partition", "cpu"]
        log = (cwd / "dump/mfcc/log" / f"{name}.log").read_text()
        assert log.startswith("# speechssl ") and "# Ended (code 0)" in log
    assert "--nshard 2 --rank 1" in (cwd / "dump/mfcc/log/q/features.read_dev.1.sh").read_text()
    for dset in ("train", "dev"):
        assert (cwd / f"data/read/{dset}/units_mfcc_k4/labels").is_file()
        assert (cwd / f"data/read/{dset}/units_mfcc_k4/.done").is_file()


def test_a_shared_script_dir_names_jobs_by_their_log_dir(tmp_path):
    """superb.sh keeps every job script in exp/q: evaluate.log of two experiments must not collide."""
    env = fake_slurm(tmp_path)
    body = "pool_init 2 slurm '' exp/q\n"
    body += "pool_run exp/ks_a/evaluate.log echo a\npool_run exp/ks_b/evaluate.log echo b\n"
    body += "pool_run exp/ks_a.train.log echo c\n"
    body += "pool_run exp/a/log/x.log echo d\npool_run exp/b/log/x.log echo e\npool_wait"  # same basename
    result = run_pool(tmp_path, body, env)
    assert result.returncode == 0, result.stderr
    assert sorted(call[2] for call in sbatch_calls(env)) == [
        "a_log_x", "b_log_x", "ks_a.train", "ks_a_evaluate", "ks_b_evaluate"
    ]  # fmt: skip
    assert (tmp_path / "exp/q/ks_a.train.sh").is_file()
    for name in ("a", "b"):
        assert (tmp_path / f"exp/q/ks_{name}_evaluate.sh").is_file()
        assert (tmp_path / f"exp/ks_{name}/evaluate.log").read_text().splitlines()[2] == name
        assert not (tmp_path / f"exp/ks_{name}/q").exists()
