"""Run `speechssl` commands and recipe scripts from tests, their arguments written flat."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from speechssl.cli.main import main


def run_cli(*argv: object) -> int:
    """`speechssl ARGV...` in this process (each argument through str(), e.g. a Path); its exit status."""
    return main([str(a) for a in argv])


def run_data_sh(egs: Path, *args: object, timeout: float = 60) -> subprocess.CompletedProcess:
    """`bash local/data.sh ARGS...` in the recipe dir `egs`, with this interpreter's bin dir first on PATH
    (so `speechssl` is the one under test); output captured as text, `timeout` seconds at most."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        ["bash", "local/data.sh", *(str(a) for a in args)],
        cwd=egs,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def dump_features(data: Path, out: Path, *extra: object, feature: str = "mfcc") -> int:
    """`speechssl features --data DATA --feature FEATURE --out OUT EXTRA...`; its exit status."""
    return run_cli("features", "--data", data, "--feature", feature, "--out", out, *extra)


def kmeans_fit(feats: Path, num_clusters: int | str, out: Path, *extra: object) -> int:
    """`speechssl kmeans fit --feats FEATS --num-clusters K --out OUT EXTRA...`; its exit status."""
    return run_cli("kmeans", "fit", "--feats", feats, "--num-clusters", num_clusters, "--out", out, *extra)


def kmeans_label(feats: Path, model: Path, out: Path, *extra: object) -> int:
    """`speechssl kmeans label --feats FEATS --model MODEL --out OUT EXTRA...`; its exit status."""
    return run_cli("kmeans", "label", "--feats", feats, "--model", model, "--out", out, *extra)


def downstream_train(data: Path, out: Path, *extra: object, task: str = "ks", upstream: str = "fbank") -> int:
    """`speechssl downstream train --task TASK --upstream UPSTREAM --data DATA --out OUT EXTRA...`; its
    exit status."""
    return run_cli(
        "downstream", "train", "--task", task, "--upstream", upstream, "--data", data, "--out", out, *extra
    )


def finetune_train(data: Path, out: Path, upstream: Path | str, *extra: object, task: str = "asr") -> int:
    """`speechssl finetune train --task TASK --upstream UPSTREAM --data DATA --out OUT EXTRA...`; its
    exit status."""
    return run_cli(
        "finetune", "train", "--task", task, "--upstream", upstream, "--data", data, "--out", out, *extra
    )
