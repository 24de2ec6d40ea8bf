"""Train and evaluate a task head on an upstream (SUPERB protocol), with the shared trainer.

Experiment layout (EXP = out_dir):
    EXP/downstream.yaml      task, upstream, data dir and the resolved DownstreamConfig
    EXP/task/                vocabularies (tokens.txt, classes.txt, spm.model, ...)
    EXP/[lr_<lr>/]checkpoints/step_<N>/   head (+ tuned upstream) weights every eval_every updates
    EXP/[lr_<lr>/]dev_scores.json         dev metric of every checkpoint
    EXP/best.json            the chosen run and checkpoint (best dev metric over steps and lrs)
    EXP/results_<split>.json written by evaluate_downstream (results.json: the test split's, as before)

Before any compute `train_downstream` checks, in this order and in seconds: EXP follows the
output rule (new, empty, or this command's own experiment; a finished one needs --resume),
every split of the data (`Task.check_split`: non-empty, targets cover the utterances, dev/test
labels known, ASV trials sound), then it takes the experiment lock (`EXP/.lock`) for the run.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from speechssl.config import from_dict, to_dict
from speechssl.data.batching import build_loader
from speechssl.data.dataset import Batch
from speechssl.downstream.config import DownstreamConfig
from speechssl.downstream.featurizers import build_featurizer
from speechssl.downstream.model import DownstreamModel
from speechssl.downstream.tasks import SPLITS, DataCheckError, Task, build_task
from speechssl.errors import OutputExistsError
from speechssl.interop.upstream import UpstreamModel, load_upstream, upstream_name
from speechssl.io import atomic_write_text
from speechssl.outputs import ExperimentLock, check_output, read_marker, write_marker
from speechssl.training import TrainerConfig
from speechssl.training.checkpoints import load_checkpoint, step_dirs
from speechssl.training.distributed import env_rank, env_world_size
from speechssl.training.trainer import train_on_loaders

log = logging.getLogger(__name__)

EXP_FILE = "downstream.yaml"
BEST_FILE = "best.json"
RESULTS_FILE = "results.json"  # the test split's results (what `report` reads by default)
TRAIN_COMMAND = "downstream train"


def results_file(split: str) -> str:
    return f"results_{split}.json"


# --- efficient tuning plug-in -----------------------------------------------------------
# A tuning method is `fn(upstream, **options) -> upstream` (speechssl.tuning's methods are
# reached through its `apply_tuning`): it receives the upstream with every parameter
# frozen and returns it (or a wrapper with the same interface) with its own
# trainable parameters (requires_grad=True). Those join the optimizer and the checkpoints;
# the frozen upstream weights are never saved by the runner.
TuningMethod = Callable[..., nn.Module]
_TUNING_METHODS: dict[str, TuningMethod] = {}


def register_tuning(name: str, method: TuningMethod) -> None:
    """Make a tuning method available to `DownstreamConfig.tuning` by name."""
    _TUNING_METHODS[name] = method


def _library_methods() -> dict[str, Any]:
    try:
        from speechssl.tuning import METHODS
    except ImportError:
        return {}
    return dict(METHODS)


def apply_tuning_by_name(upstream: nn.Module, name: str, options: dict[str, Any]) -> nn.Module:
    """Methods registered here first, then speechssl.tuning's (adapter, lora, bitfit, prefix, full)."""
    if name in _TUNING_METHODS:
        return _TUNING_METHODS[name](upstream, **options)
    if name not in _library_methods():
        valid = sorted(set(_TUNING_METHODS) | set(_library_methods()))
        raise ValueError(f"unknown tuning method '{name}'; valid methods: {', '.join(valid) or '(none)'}")
    from speechssl.tuning import apply_tuning, tuning_config

    report = apply_tuning(upstream, tuning_config(name, options, source="tuning_options"))
    log.info("tuning %s", report)
    return upstream


# --- building blocks ---------------------------------------------------------------------
def prepare_upstream(spec: str | Path, config: DownstreamConfig) -> UpstreamModel:
    upstream = load_upstream(spec)
    upstream.requires_grad_(config.upstream_trainable)
    if config.tuning:
        upstream = apply_tuning_by_name(upstream, config.tuning, dict(config.tuning_options))
    return upstream


def build_model(task: Task, upstream: UpstreamModel, config: DownstreamConfig) -> DownstreamModel:
    featurizer = build_featurizer(config.featurizer, upstream.num_layers + 1, upstream.hidden_dim)
    head = task.build_head(featurizer.output_dim)
    return DownstreamModel(upstream, featurizer, head, task)


def eval_batches(task: Task, split: str, config: DownstreamConfig, device: torch.device) -> Iterator[Batch]:
    """Every utterance of a split once, in duration order (little padding)."""
    dataset = task.dataset(split, train=False)
    if not dataset.durations:
        raise DataCheckError(f"task {task.name}: {task.data_dir / split} has no usable utterances")
    loader = build_loader(
        dataset, config.batching(), train=False, seed=config.seed, num_workers=config.num_workers
    )
    for batch in loader:
        yield batch.to(device)


@torch.no_grad()
def score_split(model: DownstreamModel, split: str, config: DownstreamConfig) -> dict[str, float]:
    device = next(model.parameters()).device
    model.eval()
    return model.task.evaluate(
        model.features, model.head, eval_batches(model.task, split, config, device), split
    )


def _device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def _load_weights(model: DownstreamModel, checkpoint: Path) -> None:
    state, _ = load_checkpoint(checkpoint)
    model.load_state_dict(state)


# --- training ----------------------------------------------------------------------------
def _trainer_config(config: DownstreamConfig, lr: float) -> TrainerConfig:
    saves = math.ceil(config.max_steps / config.eval_every)
    return TrainerConfig(
        max_steps=config.max_steps,
        lr=lr,
        schedule=config.schedule,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        clip_norm=config.clip_norm,
        precision=config.precision,
        save_every=config.eval_every,
        keep_last=saves + 1,
        log_every=min(config.log_every, config.max_steps),
        seed=config.seed,
        num_workers=config.num_workers,
    )


def _select_checkpoint(
    task: Task, upstream_spec: str, run_dir: Path, config: DownstreamConfig
) -> dict[str, Any]:
    """Score every checkpoint of a run on dev (cached in dev_scores.json); the best one wins."""
    ckpts = step_dirs(run_dir / "checkpoints")
    if not ckpts:
        raise FileNotFoundError(f"no checkpoints under {run_dir / 'checkpoints'}")
    cache_path = run_dir / "dev_scores.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    model = None
    for ckpt in ckpts:
        if ckpt.name in cache:
            continue
        if model is None:
            model = build_model(task, prepare_upstream(upstream_spec, config), config).to(_device())
        _load_weights(model, ckpt)
        cache[ckpt.name] = score_split(model, "dev", config)
        log.info("%s: dev %s", ckpt, cache[ckpt.name])
        _write_json(cache_path, cache)
    best = None
    for ckpt in ckpts:
        value = cache[ckpt.name][task.metric]
        if best is None or task.better(value, best[1]):
            best = (ckpt, value)
    assert best is not None
    return {
        "step": int(best[0].name.split("_")[1]),
        "checkpoint": str(best[0].relative_to(run_dir)),
        "dev": cache[best[0].name],
    }


def _train_run(
    task: Task, upstream_spec: str, run_dir: Path, config: DownstreamConfig, lr: float, resume: bool
) -> dict[str, Any]:
    done = run_dir / "selection.json"
    if resume and done.is_file():
        selection = json.loads(done.read_text())
        if selection.get("max_steps") == config.max_steps:
            log.info("%s: already trained and scored; skipping", run_dir)
            return selection
    model = build_model(task, prepare_upstream(upstream_spec, config), config)
    trainable, total = model.num_parameters()
    log.info(
        "task %s, upstream %s, lr %g: %d trainable / %d parameters",
        task.name,
        upstream_spec,
        lr,
        trainable,
        total,
    )
    loader = build_loader(
        task.dataset("train", train=True),
        config.batching(),
        train=True,
        seed=config.seed,
        rank=env_rank(),
        world_size=env_world_size(),
    )
    train_on_loaders(
        model,
        loader,
        _trainer_config(config, lr),
        run_dir,
        resume=resume,
        save_config=lambda path: atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False)),
    )
    if env_rank() != 0:
        return {}
    selection = {
        "lr": lr,
        "max_steps": config.max_steps,
        **_select_checkpoint(task, upstream_spec, run_dir, config),
    }
    _write_json(done, selection)
    return selection


def check_task_data(task: Task, splits: tuple[str, ...] = SPLITS) -> None:
    """Every split checked in seconds (`Task.check_split`): dev chooses the checkpoint and the
    learning rate, so it is required like train and test."""
    for split in splits:
        task.check_split(split)


def _check_experiment_out(
    out_dir: Path, task: str, upstream_spec: str, resume: bool, inputs: tuple[Path, ...]
) -> None:
    """The output rule for EXP: new, empty, or this command's own experiment (a finished one
    only with --resume, and only for the same task and upstream); an unmarked experiment of an
    older speechssl with its downstream.yaml is resumed as its own."""
    exp_path = out_dir / EXP_FILE
    if not (resume and exp_path.is_file() and read_marker(out_dir) is None):
        check_output(out_dir, TRAIN_COMMAND, inputs=inputs)
    if not exp_path.is_file():
        return
    if not resume:
        raise OutputExistsError(
            f"{out_dir} holds an earlier downstream run ({EXP_FILE}): continue it with "
            "--resume, or train into another --out"
        )
    previous = yaml.safe_load(exp_path.read_text()) or {}
    if {k: previous.get(k) for k in ("task", "upstream")} != {"task": task, "upstream": upstream_spec}:
        raise ValueError(
            f"{exp_path}: cannot resume task {task} / upstream {upstream_spec} in an experiment "
            f"of task {previous.get('task')} / upstream {previous.get('upstream')}"
        )


def train_downstream(
    task: str,
    upstream_spec: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    config: DownstreamConfig | None = None,
    *,
    max_steps: int | None = None,
    resume: bool = False,
    name: str | None = None,
) -> dict[str, Any]:
    """Train `task` on `data_dir/{train,dev,test}` over `upstream_spec` ("fbank" or any
    load_upstream source) into `out_dir`; returns (and writes to best.json) the chosen run.
    `name` names the upstream in results and reports (default: `default_upstream_name`; a
    resumed run keeps its recorded name).

    With `config.lr_sweep` one run per lr goes to `out_dir/lr_<lr>/` and the best dev metric wins.
    Every input is checked before anything is written (see the module docstring)."""
    if name is not None and (not name.strip() or any(c in name for c in "|\n\r")):
        raise ValueError(f"upstream name {name!r} must be non-empty text without '|' or line breaks")
    config = config or DownstreamConfig()
    if max_steps is not None:
        config = replace(config, max_steps=max_steps, eval_every=min(config.eval_every, max_steps))
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"data dir {data_dir} does not exist (expected {data_dir}/{{train,dev,test}})"
        )
    task_obj = build_task(task, data_dir, out_dir, config)  # reads nothing yet
    main = env_rank() == 0
    if main:
        inputs = (data_dir, *([Path(upstream_spec)] if Path(upstream_spec).exists() else []))
        _check_experiment_out(out_dir, task, str(upstream_spec), resume, inputs)
    check_task_data(task_obj)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_marker(out_dir, TRAIN_COMMAND, experiment=True)
    with ExperimentLock(out_dir, TRAIN_COMMAND) if main else nullcontext():
        return _train_locked(task_obj, str(upstream_spec), data_dir, out_dir, config, resume, name)


def _train_locked(
    task_obj: Task,
    upstream_spec: str,
    data_dir: Path,
    out_dir: Path,
    config: DownstreamConfig,
    resume: bool,
    name: str | None = None,
) -> dict[str, Any]:
    task = task_obj.name
    exp_path = out_dir / EXP_FILE
    if name is None and resume and exp_path.is_file():
        name = (yaml.safe_load(exp_path.read_text()) or {}).get("name")
    exp = {
        "task": task,
        "upstream": upstream_spec,
        "name": name or upstream_name(upstream_spec),
        "data_dir": str(data_dir.resolve()),
        "config": to_dict(config),
    }
    if env_rank() == 0:
        atomic_write_text(exp_path, yaml.safe_dump(exp, sort_keys=False))
        task_obj.save()
    runs = []
    for lr in config.lr_sweep or [config.lr]:
        run_dir = out_dir / f"lr_{lr:g}" if config.lr_sweep else out_dir
        selection = _train_run(task_obj, upstream_spec, run_dir, config, lr, resume)
        runs.append({"run_dir": str(run_dir.relative_to(out_dir)), **selection})
    if env_rank() != 0:
        return {}
    best = runs[0]
    for run in runs[1:]:
        if run["dev"] is not None and (
            best["dev"] is None or task_obj.better(run["dev"][task_obj.metric], best["dev"][task_obj.metric])
        ):
            best = run
    summary = {**best, "metric": task_obj.metric, "runs": runs}
    _write_json(out_dir / BEST_FILE, summary)
    log.info("best: %s", {k: v for k, v in summary.items() if k != "runs"})
    return summary


# --- evaluation --------------------------------------------------------------------------
def load_experiment(out_dir: str | Path) -> tuple[dict[str, Any], DownstreamConfig]:
    path = Path(out_dir) / EXP_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: train the experiment first (speechssl downstream train)"
        )
    exp = yaml.safe_load(path.read_text())
    return exp, from_dict(DownstreamConfig, exp["config"], source=str(path), section="config")


def evaluate_downstream(out_dir: str | Path, split: str = "test") -> dict[str, Any]:
    """Score the best checkpoint of an experiment on `split`; writes out_dir/results_<split>.json
    (and results.json for the test split, so a dev score never replaces the test score).
    The split is checked before the upstream is loaded."""
    out_dir = Path(out_dir)
    exp, config = load_experiment(out_dir)
    best_path = out_dir / BEST_FILE
    if not best_path.is_file():
        raise FileNotFoundError(f"{best_path} does not exist: training of {out_dir} did not finish")
    best = json.loads(best_path.read_text())
    config = replace(config, lr=best["lr"])
    task = build_task(exp["task"], exp["data_dir"], out_dir, config)
    if not task.has_split(split):
        raise FileNotFoundError(f"task {task.name}: no usable '{split}' split under {exp['data_dir']}")
    task.check_split(split)
    model = build_model(task, prepare_upstream(exp["upstream"], config), config).to(_device())
    checkpoint = out_dir / best["run_dir"] / best["checkpoint"]
    _load_weights(model, checkpoint)
    values = score_split(model, split, config)
    trainable, total = model.num_parameters()
    results = {
        "task": task.name,
        "metric": task.metric,
        "value": values[task.metric],
        "split": split,
        "upstream": exp.get("name") or upstream_name(exp["upstream"]),
        "upstream_source": exp["upstream"],
        "trainable_params": trainable,
        "total_params": total,
        "metrics": values,
        "lr": best["lr"],
        "step": best["step"],
        "checkpoint": str(checkpoint),
        "featurizer": config.featurizer.name,
        "layer_weights": model.layer_weights(),
    }
    _write_json(out_dir / results_file(split), results)
    if split == "test":
        _write_json(out_dir / RESULTS_FILE, results)
    return results
