"""Row group `superb`: wall-clock of a mini SUPERB-lite suite with and without cached upstream
features (`downstream train --feature-cache`, speechssl.downstream.feature_cache).

The suite is what `egs/mini_synth/superb1` runs, shrunk: PR, KS, IC and SID, each an lr sweep
(1e-2, 1e-3, 1e-4) of a fixed number of updates (patience off, so both contenders do the same
work; dev scored 4 times per rate), on the demo's mini HuBERT (egs/mini_synth/ssl1's model: fbank
frontend, 4 pre-LN layers x 128; random weights, seed 0: its speed, not its quality, matters
here). Data: the embedded recipe's data dir (`egs/mini_synth/superb1/data`) in full mode when
that recipe's stage 1 has run, else a synthetic corpus built here by the recipe's own
`local/data.sh` (`speechssl synth`; 0.01 h tiny, 0.03 h quick, 0.1 h full). Each contender runs
the whole suite once, in a fresh experiment dir (the cached one in a fresh cache dir, so its
time includes dumping every split it reads), same seeds; the uncached one runs first.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.harness import Row, Settings, make_row
from speechssl.config import from_dict
from speechssl.downstream import DownstreamConfig, HeadConfig
from speechssl.downstream.runner import train_downstream
from speechssl.models.checkpoint import save_checkpoint
from speechssl.models.config import ModelConfig
from speechssl.models.model import build_model

GROUP = "superb"
REPO = Path(__file__).resolve().parent.parent
EGS = REPO / "egs" / "mini_synth" / "superb1"
MODEL_YAML = REPO / "egs" / "mini_synth" / "ssl1" / "conf" / "pretrain_hubert_tiny.yaml"
TASKS = ("pr", "ks", "ic", "sid")
LRS = [1e-2, 1e-3, 1e-4]


def mini_hubert(path: Path) -> Path:
    """The demo's mini HuBERT architecture with seeded random weights, as a speechssl checkpoint."""
    import torch

    config = from_dict(ModelConfig, yaml.safe_load(MODEL_YAML.read_text())["model"], source=str(MODEL_YAML))
    torch.manual_seed(0)
    save_checkpoint(build_model(config).eval(), config, path)
    return path


def task_data(root: Path, hours: float) -> tuple[Path, str]:
    """(dir of <task>/{train,dev,test}, what it is): the embedded recipe's data when prepared
    (full mode), else a corpus of `hours` laid out by the recipe's local/data.sh."""
    embedded = EGS / "data"
    if hours >= 0.1 and all((embedded / t / "train").is_dir() for t in TASKS):
        return embedded, f"the embedded recipe's data ({embedded})"
    out = root / "data"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(
        ["bash", "local/data.sh", "--hours", str(hours), "--nj", "1", str(out)],
        cwd=EGS, env=env, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"local/data.sh failed ({proc.returncode}): {proc.stderr.strip()[-1000:]}")
    return out, f"a {hours:g} h synthetic corpus built by local/data.sh"


def task_config(task: str, max_steps: int, feature_cache: Path | None) -> DownstreamConfig:
    """The egs configs' heads, shrunk (64 units), the lr sweep, a fixed number of updates."""
    return DownstreamConfig(
        head=HeadConfig(hidden_dim=64, lstm_dim=64),
        lr_sweep=LRS,
        max_steps=max_steps,
        eval_every=max(1, max_steps // 4),
        log_every=max(1, max_steps // 4),
        patience=None,
        max_batch_seconds=16.0,
        max_seconds=3.0 if task == "sid" else None,  # as conf/sid.yaml: crops on the cached path too
        feature_cache=None if feature_cache is None else str(feature_cache),
    )


def run_suite(data: Path, upstream: Path, out: Path, max_steps: int, cache: Path | None) -> dict[str, float]:
    """Train every task's sweep; returns task -> best dev metric."""
    best = {}
    for task in TASKS:
        summary = train_downstream(
            task, upstream, data / task, out / task, task_config(task, max_steps, cache), name="mini_hubert"
        )
        best[task] = summary["dev"][summary["metric"]]
    return best


def run(settings: Settings) -> list[Row]:
    hours, max_steps = (0.01, 2) if settings.tiny else (0.03, 40) if settings.quick else (0.1, 200)
    root = Path(tempfile.mkdtemp(prefix="speechssl-bench-superb-"))
    level = logging.getLogger("speechssl").level
    logging.getLogger("speechssl").setLevel(logging.WARNING)  # the runs' own logs: not the table's
    try:
        data, source = task_data(root, hours)
        upstream = mini_hubert(root / "mini_hubert")
        times, dev = {}, {}
        for label, cache in (("uncached", None), ("cached", root / "feature_cache")):
            t0 = time.perf_counter()
            dev[label] = run_suite(data, upstream, root / label, max_steps, cache)
            times[label] = time.perf_counter() - t0
        cache_mib = sum(p.stat().st_size for p in (root / "feature_cache").rglob("*") if p.is_file()) / 2**20
    finally:
        logging.getLogger("speechssl").setLevel(level)
        shutil.rmtree(root, ignore_errors=True)
    same = sum(abs(dev["cached"][t] - dev["uncached"][t]) < 1e-9 for t in TASKS)
    name = f"SUPERB-lite {'/'.join(TASKS)} x {len(LRS)} lrs x {max_steps} updates, mini HuBERT"
    note = (
        f"{source}; cached time includes dumping every split ({cache_mib:.0f} MiB float16); "
        f"best dev metric equal in {same} of {len(TASKS)} tasks; one run each, same seeds"
    )
    return [
        make_row(GROUP, f"{name}: suite wall time, cached vs uncached", times["cached"], times["uncached"],
                 "s", higher_is_better=False, note=note),
    ]  # fmt: skip
