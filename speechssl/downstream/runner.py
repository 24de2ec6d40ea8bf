"""Train and evaluate a task head on an upstream (SUPERB protocol), with the shared trainer.

Experiment layout (EXP = out_dir):
    EXP/downstream.yaml      task, upstream (and its weights fingerprint), data dir and the resolved
                             DownstreamConfig
    EXP/task/                vocabularies (tokens.txt, classes.txt, spm.model, ...); fbank_cmvn.npz: the
                             train split's mean/std for "fbank_global_cmvn" (computed once, used by
                             train, dev/test scoring, evaluate and --resume)
    EXP/[lr_<lr>/]checkpoints/step_<N>/   head (+ tuned upstream) weights every eval_every updates, all
                                          kept (none is pruned, whatever a resume's eval_every)
    EXP/[lr_<lr>/]dev_scores.json         dev metric of every checkpoint, scored as it is written
    EXP/[lr_<lr>/]selection.json          a finished run: its best checkpoint, dev curve, why it stopped
    EXP/best.json            the chosen run and checkpoint (best dev metric over steps and lrs)
    EXP/results_<split>.json written by evaluate_downstream (results.json: the test split's, as before)
    EXP/upstream/            a trained upstream (tuning.method full) of the chosen checkpoint: a speechssl
                             checkpoint (load_upstream, export); EXP/tuned.safetensors for other methods

`speechssl downstream train` and `speechssl finetune train` (CTC fine-tuning: `config.finetune`
set, speechssl.downstream.finetune) are both this runner; EXP's marker names the command.

Convergence: every checkpoint is scored on dev with the task metric as soon as it is written;
a run stops when that metric has not improved (strictly) for `config.patience` evaluations in a
row, or at max_steps. The patience state is a function of dev_scores.json and the checkpoints,
so a resumed run (also one killed between a checkpoint and its score) decides exactly as an
uninterrupted one.

Before any compute `train_downstream` checks, in this order and in seconds: the task's settings
(`Task.check_config`: no max_seconds for the CTC tasks, whose transcripts cannot be cropped), EXP
follows the output rule (new, empty, or this command's own experiment; a finished one needs
--resume, with the same task, upstream and data dir; a fresh run refuses a task/, dev scores or
trained upstream it did not write), every split of the data (`Task.check_split`: non-empty,
targets cover the utterances, dev/test labels known, ASV trials sound), on --resume that
EXP/task/ holds the vocabularies of the training data and each run's last checkpoint verifies
and was trained with the same config (up to `RESUMABLE`; a fine-tuning run also ignores the
featurizer and head sections it does not use), then it takes the experiment lock
(`EXP/.speechssl_lock`) and checks EXP again (another run may have finished it meanwhile)
before it writes anything. A local --upstream is recorded as an absolute path. The feature cache
and EXP never hold one another, and a cache dir is never an --out.

A fresh run into an EXP that the same command, upstream, data and config started but that holds
nothing trained (no checkpoint, dev score, selection, best.json or results: it failed or was
killed before its first checkpoint) restarts it; any other earlier EXP needs --resume.

The upstream's weights fingerprint (feature_cache.weights_fingerprint of its state dict as loaded,
hashed once, at start-up) is recorded in downstream.yaml; --resume, `evaluate_downstream`
and `load_trained` refuse an upstream replaced in place since (UpstreamChangedError). An EXP
recorded before the fingerprint is used unchecked, with a log line.

A resumed run with a smaller max_steps than an earlier one chooses its checkpoint among the
steps <= max_steps (later checkpoints stay on disk and count again with a longer resume).

With `config.feature_cache` (a dir, shared by runs) a frozen upstream's hidden layers are dumped
once per split used (train and dev here, the scored split in `evaluate_downstream`) and every run
of the sweep trains and is scored from them (speechssl.downstream.feature_cache, which says what
cached training sees exactly); tuned upstreams and fbank_global_cmvn bypass it with a log line,
as does a task that says why it cannot use it (`feature_cache_bypass`: sd reads whole recordings).
Two more optional task hooks: `bind_upstream(upstream)` (prepare_upstream: sd's targets follow the
upstream's frame rate) and `write_predictions(EXP, split)` (evaluate: sd's hypothesis RTTM).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from speechssl.config import from_dict, save_config, to_dict
from speechssl.data.batching import build_loader
from speechssl.downstream.config import DownstreamConfig, run_dir_name
from speechssl.downstream.feature_cache import (
    CACHE_COMMAND,
    CachedSplit,
    FeatureCache,
    bypass_reason,
    cached_loader,
    claim_cache_dir,
    crop_frame_count,
    split_inputs,
    weights_fingerprint,
)
from speechssl.downstream.featurizers import build_featurizer
from speechssl.downstream.finetune import (
    UNUSED_BY_FINETUNE,
    build_finetune_model,
    check_finetune_task,
    configure_upstream,
    scale_run,
)
from speechssl.downstream.model import DownstreamModel
from speechssl.downstream.tasks import (
    SPLITS,
    DataCheckError,
    Task,
    build_task,
    check_batch_frames,
    min_input_samples,
)
from speechssl.errors import OutputExistsError, SpeechSSLError
from speechssl.interop.upstream import BUILTIN_UPSTREAMS, UpstreamModel, load_upstream, upstream_name
from speechssl.io import atomic_file, atomic_write_json, atomic_write_text
from speechssl.models.checkpoint import save_checkpoint
from speechssl.models.token_upstream import TOKENS_PREFIX
from speechssl.outputs import ExperimentLock, check_output, read_marker, write_marker
from speechssl.training.checkpoints import (
    CheckpointError,
    check_links,
    load_checkpoint,
    seed_everything,
    step_dirs,
)
from speechssl.training.distributed import env_rank, env_world_size
from speechssl.training.experiment import check_resume, remove_killed_temporaries, resume_checkpoint
from speechssl.training.trainer import train_on_loaders
from speechssl.tuning import apply_tuning, save_tuned

log = logging.getLogger(__name__)

EXP_FILE = "downstream.yaml"
BEST_FILE = "best.json"
RESULTS_FILE = "results.json"  # the test split's results (what `report` reads by default)
TRAIN_COMMAND = "downstream train"
TUNED_UPSTREAM = "upstream"  # EXP/upstream/: the fully fine-tuned upstream, a speechssl checkpoint
TUNED_WEIGHTS = "tuned.safetensors"  # EXP/tuned.safetensors: the weights of any other tuning method
# config keys a resumed run may change: its length, logging and loading (and the head-only
# share of a fine-tuning run, which --max-steps scales)
# and where cached features live (the features are the same in any cache dir)
RESUMABLE = frozenset(
    {
        "max_steps", "eval_every", "log_every", "num_workers", "patience", "finetune.freeze_finetune_updates",
        "feature_cache",
    }
)  # fmt: skip
# what the run dirs and EXP/task/ were made with (downstream.yaml's record, checked on every --resume)
EXP_SHAPE_KEYS = ("lr_sweep", "asr_units", "sentencepiece_model", "sentencepiece_vocab_size")
DEV_SCORES = "dev_scores.json"  # per run: checkpoint name -> dev metrics
CMVN_FILE = "fbank_cmvn.npz"  # EXP/task/: the train split's statistics (fbank_global_cmvn)
SELECTION = "selection.json"  # per run: written when the run is trained and scored
SPLIT_NAME = re.compile(r"[A-Za-z0-9_.-]+")
LEGACY_FINETUNE = ("finetune.yaml", "final/ctc_head.safetensors")  # of the top-level `speechssl finetune`
# in downstream.yaml: weights_fingerprint of the upstream as loaded at train time (absent: recorded
# before speechssl kept it; null: an upstream whose weights it cannot see)
FINGERPRINT = "upstream_fingerprint"
RECORDED_CACHE: Any = object()  # evaluate_downstream(feature_cache=...): the cache downstream.yaml records

Loader = Callable[[str | Path], UpstreamModel]


class UpstreamChangedError(SpeechSSLError):
    """The upstream at the recorded path has other weights than the experiment was trained on."""


def results_file(split: str) -> str:
    return f"results_{split}.json"


# --- building blocks ---------------------------------------------------------------------
def prepare_upstream(
    spec: str | Path,
    config: DownstreamConfig,
    task: Task | None = None,
    *,
    compute_stats: bool = True,
    load: Loader | None = None,
) -> UpstreamModel:
    """Load the upstream and apply `config.tuning` (speechssl.tuning: the one registry of tuning
    methods, `METHODS`; "frozen" leaves every weight frozen), then the fine-tuning settings.
    An upstream that needs the train split's statistics ("fbank_global_cmvn") gets them from
    EXP/task/fbank_cmvn.npz, computed there first when missing and `compute_stats`.
    `load`: what loads it (default load_upstream; `_first_load`: one loaded and checked already)."""
    upstream = (load or load_upstream)(spec)
    if task is not None:
        task.bind_upstream(upstream)  # targets at the upstream's frame rate (sd)
    if getattr(upstream, "needs_train_stats", False):
        if task is None:
            raise ValueError(f"upstream '{spec}' needs the train split's statistics: pass the task")
        mean, std = train_cmvn_stats(upstream, task, config, compute=compute_stats)
        upstream.set_global_stats(mean, std)
    report = apply_tuning(upstream, config.tuning)
    if config.tuning.method != "frozen":
        log.info("tuning %s", report)
    if config.finetune is not None:
        configure_upstream(upstream, config.finetune)
    return upstream


def build_model(task: Task, upstream: UpstreamModel, config: DownstreamConfig) -> DownstreamModel:
    if config.finetune is not None:
        return build_finetune_model(task, upstream, config.finetune, config.seed)
    featurizer = build_featurizer(config.featurizer, upstream.num_layers + 1, upstream.hidden_dim)
    head = task.build_head(featurizer.output_dim)
    return DownstreamModel(upstream, featurizer, head, task)


Features = dict[str, CachedSplit]  # split -> its cached upstream features


def eval_batches(
    task: Task, split: str, config: DownstreamConfig, device: torch.device, features: Features | None = None
) -> Iterator[Any]:
    """Every utterance of a split once, in duration order (little padding); its cached features
    instead of its audio when `features` has the split."""
    dataset = task.dataset(split, train=False)
    if not dataset.durations:
        raise DataCheckError(f"task {task.name}: {task.data_dir / split} has no usable utterances")
    loader = build_loader(
        dataset, config.batching(), train=False, seed=config.seed, num_workers=config.num_workers
    )
    if features is not None and split in features:
        loader = cached_loader(loader, features[split])
    for batch in loader:
        yield batch.to(device)


@torch.no_grad()
def score_split(
    model: DownstreamModel, split: str, config: DownstreamConfig, features: Features | None = None
) -> dict[str, float]:
    device = next(model.parameters()).device
    model.eval()
    return model.task.evaluate(
        model.features, model.head, eval_batches(model.task, split, config, device, features), split
    )


def _score(model: DownstreamModel, split: str, config: DownstreamConfig, features: Features | None):
    """score_split, called as before when there are no cached features (tests stand in for it)."""
    if features is None:
        return score_split(model, split, config)
    return score_split(model, split, config, features=features)


def open_features(
    task: Task,
    upstream_spec: str,
    config: DownstreamConfig,
    splits: tuple[str, ...],
    upstream: UpstreamModel | None = None,
    load: Loader | None = None,
) -> Features | None:
    """The cached features of `splits` (dumped first where missing) when `config.feature_cache`
    is set and the run can use them; None otherwise (a log line says why a set cache is not used).
    `upstream`: the prepared upstream, when the caller has one (else `load` loads it)."""
    if config.feature_cache is None:
        return None
    reason = task.feature_cache_bypass or bypass_reason(upstream_spec, None, config)
    if reason is None:
        upstream = (
            upstream if upstream is not None else prepare_upstream(upstream_spec, config, task, load=load)
        )
        reason = bypass_reason(upstream_spec, upstream, config)
    if reason is not None:
        log.info("feature cache %s not used: %s", config.feature_cache, reason)
        return None
    assert upstream is not None
    cache = FeatureCache(
        config.feature_cache, upstream, upstream_spec, batching=config.batching(), device=_device(),
        seed=config.seed,
    )  # fmt: skip
    return {split: cache.split(task.data_dir / split) for split in splits}


def _train_fingerprint(task: Task) -> tuple[int, float, str]:
    """The train split as global CMVN saw it: utterances, total seconds, and its audio files
    (feature_cache.split_inputs: paths, segments, sizes, mtimes, ctimes, inodes) hashed."""
    durations = task.dataset("train", train=False).full_durations
    files = hashlib.sha256(json.dumps(split_inputs(task.data_dir / "train")).encode()).hexdigest()[:32]
    return len(durations), float(sum(durations)), files


@torch.no_grad()
def train_cmvn_stats(
    upstream: UpstreamModel, task: Task, config: DownstreamConfig, *, compute: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (population, float64 sums) of the upstream's features before CMVN
    over every frame of the train split (whole utterances, streamed batch by batch); computed once
    per experiment into EXP/task/fbank_cmvn.npz (atomic) and read back by dev/test scoring,
    `evaluate` and a resumed run, which checks the train split still has the same utterances."""
    path = task.task_dir / CMVN_FILE
    utterances, seconds, files = _train_fingerprint(task)
    if path.is_file():
        with np.load(path) as saved:
            stats = {k: saved[k] for k in saved.files}
        if int(stats["utterances"]) != utterances or not math.isclose(
            float(stats["seconds"]), seconds, rel_tol=1e-9, abs_tol=1e-6
        ):
            raise DataCheckError(
                f"{path} was computed over {int(stats['utterances'])} train utterances "
                f"({float(stats['seconds']):.3f} s), but {task.data_dir / 'train'} has {utterances} "
                f"({seconds:.3f} s): the train data changed; train into a new --out"
            )
        if "files" in stats and str(stats["files"]) != files:  # statistics of older speechssl: no hash
            raise DataCheckError(
                f"{path} was computed over other audio files than {task.data_dir / 'train'} names now "
                "(a path, size, mtime, ctime or inode differs): train into a new --out, or move "
                f"{path} away to compute it again"
            )
        return torch.from_numpy(stats["mean"]), torch.from_numpy(stats["std"])
    if not compute:
        raise FileNotFoundError(f"{path} does not exist: the experiment's global CMVN statistics are missing")
    total = sq = None
    frames = 0
    need = min_input_samples(upstream)
    for batch in eval_batches(task, "train", config, torch.device("cpu")):
        check_batch_frames(batch.utt_ids, batch.wav_lens, need, "fbank_global_cmvn")
        x, lengths = upstream.raw_features(batch.wavs, batch.wav_lens)  # type: ignore[attr-defined]
        x = x.double()
        valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]
        x = x[valid]  # (frames, D)
        total = x.sum(0) if total is None else total + x.sum(0)
        sq = x.pow(2).sum(0) if sq is None else sq + x.pow(2).sum(0)
        frames += x.shape[0]
    if total is None or sq is None or frames == 0:
        raise DataCheckError(f"task {task.name}: {task.data_dir / 'train'} has no frames for global CMVN")
    mean = total / frames
    std = (sq / frames - mean.pow(2)).clamp(min=0.0).sqrt()
    if env_rank() == 0:
        with atomic_file(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(
                    f, mean=mean.numpy(), std=std.numpy(), frames=np.int64(frames),
                    utterances=np.int64(utterances), seconds=np.float64(seconds), files=np.str_(files),
                )  # fmt: skip
        log.info("global CMVN: %d train frames -> %s", frames, path)
    return mean, std


def _device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if torch.cuda.is_available()
        else torch.device("cpu")
    )


def _weights_fingerprint(upstream: UpstreamModel) -> str | None:
    """feature_cache.weights_fingerprint of the upstream's state dict as loaded, before task
    statistics and tuning change it; None where it cannot see the weights (an ONNX graph, a tokens
    dir: the upstreams whose `feature_cache_bypass` says so)."""
    return None if upstream.feature_cache_bypass else weights_fingerprint(upstream.state_dict())


def load_checked_upstream(
    spec: str, out_dir: Path, exp: dict[str, Any] | None
) -> tuple[UpstreamModel, str | None]:
    """load_upstream(spec) and its weights fingerprint, refused (UpstreamChangedError) when `exp`
    (EXP's downstream.yaml; None: a fresh run, nothing to check) recorded another: the upstream was
    replaced in place since EXP was trained. The command then reads and hashes its weights once."""
    upstream = load_upstream(spec)
    current = _weights_fingerprint(upstream)
    if exp is None:
        return upstream, current
    recorded = exp.get(FINGERPRINT)
    if FINGERPRINT not in exp:
        log.info(
            "%s records no upstream fingerprint: cannot check that %s is unchanged", out_dir / EXP_FILE, spec
        )
    elif recorded is None or current is None:
        log.info("upstream %s: its weights have no fingerprint (not torch tensors): not checked", spec)
    elif recorded != current:
        raise UpstreamChangedError(
            f"upstream {spec} changed since {out_dir} was trained (weights fingerprint {recorded} != "
            f"{current}): restore it or train into a new --out"
        )
    return upstream, current


def _first_load(upstream: UpstreamModel | None) -> Loader:
    """load_upstream, but its first call returns `upstream` (loaded and checked already) instead of
    reading the weights again."""
    held = [upstream] if upstream is not None else []
    return lambda spec: held.pop() if held else load_upstream(spec)


def _load_weights(model: DownstreamModel, checkpoint: Path) -> None:
    state, _ = load_checkpoint(checkpoint)
    model.load_state_dict(state)


# --- training ----------------------------------------------------------------------------
def _step(checkpoint_name: str) -> int:
    return int(checkpoint_name.split("_")[1])


def dev_curve(scores: dict[str, dict[str, float]], metric: str, upto: int | None = None) -> list[list[float]]:
    """[[step, dev metric], ...] in step order from a run's dev_scores.json (steps <= `upto`)."""
    curve = sorted([_step(name), values[metric]] for name, values in scores.items())
    return [point for point in curve if upto is None or point[0] <= upto]


def patience_state(
    curve: list[list[float]], better: Callable[[float, float], bool], patience: int | None
) -> tuple[int | None, int, bool]:
    """(best step, evaluations since it, patience exhausted) of a dev curve. Only a strictly
    better value counts as an improvement (`better(new, old)`), so a flat curve keeps its first
    point and stops after `patience` more evaluations."""
    best: list[float] | None = None
    since = 0
    for point in curve:
        if best is None or better(point[1], best[1]):
            best, since = point, 0
        else:
            since += 1
    exhausted = patience is not None and best is not None and since >= patience
    return (None if best is None else int(best[0])), since, exhausted


def _read_scores(path: Path) -> dict[str, dict[str, float]]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _select_checkpoint(
    task: Task,
    upstream_spec: str,
    run_dir: Path,
    config: DownstreamConfig,
    features: Features | None = None,
    load: Loader | None = None,
) -> dict[str, Any]:
    """Score every checkpoint of a run on dev not scored yet (dev_scores.json); the best one
    wins (the earliest of equals). Also returns the run's dev curve."""
    # a resumed run with a smaller --max-steps chooses among the checkpoints of its length
    ckpts = [c for c in step_dirs(run_dir / "checkpoints") if _step(c.name) <= config.max_steps]
    if not ckpts:
        raise FileNotFoundError(
            f"no checkpoints of steps <= {config.max_steps} under {run_dir / 'checkpoints'}"
        )
    cache_path = run_dir / DEV_SCORES
    cache = _read_scores(cache_path)
    model = None
    for ckpt in ckpts:
        if ckpt.name in cache:
            continue
        if model is None:
            upstream = prepare_upstream(upstream_spec, config, task, load=load)
            model = build_model(task, upstream, config).to(_device())
        _load_weights(model, ckpt)
        cache[ckpt.name] = _score(model, "dev", config, features)
        log.info("%s: dev %s", ckpt, cache[ckpt.name])
        atomic_write_json(cache_path, cache)
    best = None
    for ckpt in ckpts:
        value = cache[ckpt.name][task.metric]
        if best is None or task.better(value, best[1]):
            best = (ckpt, value)
    assert best is not None
    kept = {ckpt.name: cache[ckpt.name] for ckpt in ckpts}
    return {
        "step": _step(best[0].name),
        "checkpoint": str(best[0].relative_to(run_dir)),
        "dev": cache[best[0].name],
        "dev_curve": dev_curve(kept, task.metric),
    }


def _patience_hook(
    task: Task,
    model: DownstreamModel,
    run_dir: Path,
    config: DownstreamConfig,
    features: Features | None = None,
) -> Callable[[int, Path | None], bool]:
    """The trainer's `on_checkpoint`: score the new (or resumed-from) checkpoint on dev once,
    record it in dev_scores.json, and stop when patience is exhausted. Only the main rank
    (which gets the path) scores; the trainer shares its decision with every rank."""
    scores_path = run_dir / DEV_SCORES

    def on_checkpoint(step: int, path: Path | None) -> bool:
        if path is None:
            return False
        scores = _read_scores(scores_path)
        if path.name not in scores:
            log.info("%s: scoring on dev", path)  # seconds to minutes on a real dev set
            scores[path.name] = _score(model, "dev", config, features)
            log.info("%s: dev %s", path, scores[path.name])
            atomic_write_json(scores_path, scores)
        curve = dev_curve(scores, task.metric, upto=step)
        best_step, since, exhausted = patience_state(curve, task.better, config.patience)
        if exhausted:
            log.info(
                "%s: dev %s not improved for %d evaluations since step %s (patience %s): stopping at step %d",
                run_dir,
                task.metric,
                since,
                best_step,
                config.patience,
                step,
            )
        return exhausted

    return on_checkpoint


def _train_run(
    task: Task,
    upstream_spec: str,
    run_dir: Path,
    config: DownstreamConfig,
    lr: float,
    resume: bool,
    features: Features | None = None,
    load: Loader | None = None,
) -> dict[str, Any]:
    finished = _finished(run_dir, config, resume)
    if finished is not None:
        log.info("%s: already trained and scored; skipping", run_dir)
        return finished
    # every run (each lr of a sweep, and a rerun in the same process) starts from the same head
    seed_everything(config.seed)
    upstream = prepare_upstream(upstream_spec, config, task, load=load)
    # and again: the head's initial weights must not depend on how many random numbers loading drew
    # (building a network draws them; an ONNX/TorchScript export of the same weights draws none)
    seed_everything(config.seed)
    model = build_model(task, upstream, config)
    trainable, total = model.num_parameters()
    log.info(
        "task %s, upstream %s, lr %g: %d trainable / %d parameters",
        task.name,
        upstream_spec,
        lr,
        trainable,
        total,
    )
    # the task's loader: KS draws its classes balanced (Task.sample_weights), the others as built
    loader = task.train_loader(
        config.batching(), seed=config.seed, rank=env_rank(), world_size=env_world_size()
    )
    if features is not None:  # the same batches, of cached frames (crops: the same windows)
        loader = cached_loader(loader, features["train"], partial(crop_frame_count, model.upstream))
    train_on_loaders(
        model,
        loader,
        config.trainer(lr),
        run_dir,
        resume=resume,
        save_config=lambda path: save_config(config, path),
        on_checkpoint=_patience_hook(task, model, run_dir, config, features),
    )
    if env_rank() != 0:
        return {}
    chosen = _select_checkpoint(task, upstream_spec, run_dir, config, features, load)
    last_step = int(chosen["dev_curve"][-1][0])
    _, since, exhausted = patience_state(chosen["dev_curve"], task.better, config.patience)
    selection = {
        "lr": lr,
        "max_steps": config.max_steps,
        "patience": config.patience,
        **chosen,
        "last_step": last_step,
        # why training ended: patience (the dev metric stalled) or the max_steps cap
        "stopped": "patience" if exhausted and last_step < config.max_steps else "max_steps",
        "evals_since_best": since,
    }
    atomic_write_json(run_dir / SELECTION, selection)
    return selection


def _finished(run_dir: Path, config: DownstreamConfig, resume: bool) -> dict[str, Any] | None:
    """A resumed run's selection.json when it was trained and scored with this length and patience."""
    done = run_dir / SELECTION
    if resume and done.is_file():
        selection = json.loads(done.read_text())
        if selection.get("max_steps") == config.max_steps and selection.get("patience", 0) == config.patience:
            return selection
    return None


def check_task_data(task: Task, splits: tuple[str, ...] = SPLITS) -> None:
    """Every split checked in seconds (`Task.check_split`): dev chooses the checkpoint and the
    learning rate, so it is required like train and test."""
    for split in splits:
        task.check_split(split)


def _check_experiment_out(
    out_dir: Path,
    task: str,
    upstream_spec: str,
    resume: bool,
    inputs: tuple[Path, ...],
    *,
    command: str = TRAIN_COMMAND,
    overwrite: bool = False,
    config: DownstreamConfig | None = None,
    data_dir: Path | None = None,
    name: str | None = None,
) -> bool:
    """The output rule for EXP: new, empty, or this command's own experiment (a finished one
    only with --resume, and only for the same task, upstream and data); an unmarked experiment
    of an older speechssl with its downstream.yaml is resumed as its own. A fresh run refuses
    files it would otherwise read as its own (`_refuse_foreign_files`), except in an experiment
    that the same command and config started and that stopped before its first checkpoint (a
    missing audio file, a bad upstream, ^C): that one it restarts (`_restartable`; returns True)."""
    exp_path = out_dir / EXP_FILE
    if not (resume and exp_path.is_file() and read_marker(out_dir) is None):
        check_output(out_dir, command, inputs=inputs, overwrite=overwrite)
    if not exp_path.is_file():
        if config is not None and out_dir.is_dir():
            _refuse_foreign_files(out_dir, config)
        return False
    previous = yaml.safe_load(exp_path.read_text()) or {}
    if not resume:
        if (
            config is not None
            and data_dir is not None
            and _restartable(out_dir, previous, _record(task, upstream_spec, name, data_dir, config), config)
        ):
            log.info("%s: the same run stopped there before its first checkpoint: restarting it", out_dir)
            return True
        raise OutputExistsError(
            f"{out_dir} holds an earlier downstream run ({EXP_FILE}): continue it with "
            "--resume, or train into another --out"
        )
    recorded = previous.get("upstream")
    same_upstream = recorded == upstream_spec or (
        isinstance(recorded, str) and resolve_upstream(recorded, out_dir) == upstream_spec
    )
    if previous.get("task") != task or not same_upstream:
        raise ValueError(
            f"{exp_path}: cannot resume task {task} / upstream {upstream_spec} in an experiment "
            f"of task {previous.get('task')} / upstream {recorded}"
        )
    recorded_data = previous.get("data_dir")
    if data_dir is not None and recorded_data is not None and Path(recorded_data) != data_dir.resolve():
        raise ValueError(
            f"{exp_path}: cannot resume on --data {data_dir.resolve()}: the experiment was trained on "
            f"{recorded_data} (its dev scores and vocabularies are of that data); resume with it, or "
            "train into another --out"
        )
    recorded_config, now_config = previous.get("config") or {}, to_dict(config) if config is not None else {}
    for key in EXP_SHAPE_KEYS if config is not None else ():
        # checked here, not only against a checkpoint: with the sweep added or dropped no run dir of
        # the new shape has one, and a run stopped before its first keeps EXP/task/'s model
        now = now_config[key]
        if key in recorded_config and recorded_config[key] != now:
            raise ValueError(
                f"{exp_path}: cannot resume with {key} {now}: the experiment was trained with "
                f"{key} {recorded_config[key]}; resume with it, or train into another --out"
            )
    return False


def _restartable(
    out_dir: Path, previous: dict[str, Any], record: dict[str, Any], config: DownstreamConfig
) -> bool:
    """EXP was started by this very run (the same task, upstream, name, data and config) and holds
    nothing trained: no checkpoint, dev score or selection of any of its runs, no best.json, no
    results, no trained upstream. A fresh run then writes downstream.yaml again and reuses task/,
    checked against the data (a vocabulary of other data is refused); nothing is deleted."""
    same = yaml.safe_load(yaml.safe_dump(record, sort_keys=False))
    if {key: previous.get(key) for key in same} != same:
        return False
    runs = [run_dir for _, run_dir in _run_dirs(out_dir, config)]
    trained = [
        *(run_dir / name for run_dir in runs for name in (DEV_SCORES, SELECTION)),
        *(out_dir / name for name in (BEST_FILE, TUNED_UPSTREAM, TUNED_WEIGHTS)),
        *out_dir.glob("results*.json"),
    ]
    if any(path.exists() or path.is_symlink() for path in trained):
        return False
    return not any(step_dirs(run_dir / "checkpoints") for run_dir in runs)


def _refuse_foreign_files(out_dir: Path, config: DownstreamConfig) -> None:
    """A fresh run writes EXP/task/, the dev scores and the trained upstream itself: one that is
    already there was not written by this run (an earlier run's EXP is refused without
    --resume), so it is never read as the run's own, nor deleted."""
    runs = _run_dirs(out_dir, config)
    run_files = [run_dir / name for _, run_dir in runs for name in (DEV_SCORES, SELECTION)]
    task_dir = out_dir / "task"
    candidates = [
        *(sorted(task_dir.iterdir()) if task_dir.is_dir() else []),
        *run_files,
        out_dir / BEST_FILE,
        out_dir / TUNED_UPSTREAM,
        out_dir / TUNED_WEIGHTS,
    ]
    for path in candidates:
        if path.exists() or path.is_symlink():
            raise OutputExistsError(
                f"{path} exists but was not written by this run (a new run writes it itself): "
                "remove it or train into another --out"
            )


def resolve_upstream(spec: str | Path, base: Path | None = None) -> str:
    """The upstream as recorded in EXP: a local path made absolute (so `evaluate` and `--resume`
    work from any directory and `./up` names the same upstream as `up`); a builtin name ("fbank")
    or any other source stays as typed. `base`: the directory a relative recorded path is tried
    against too (an experiment recorded before paths were resolved)."""
    text = str(spec)
    if text in BUILTIN_UPSTREAMS:
        return text
    if text.startswith(TOKENS_PREFIX):  # tokens:DIR -> tokens:/abs/DIR, like any local path
        return TOKENS_PREFIX + resolve_upstream(text[len(TOKENS_PREFIX) :], base)
    for root in (Path.cwd(), *([base] if base is not None else [])):
        path = Path(text) if Path(text).is_absolute() else root / text
        if path.exists():
            return str(path.resolve())
    return text


def _run_dirs(out_dir: Path, config: DownstreamConfig) -> list[tuple[float, Path]]:
    """(lr, run dir) of every run: one per lr of the sweep (EXP/lr_<lr>/), else EXP itself."""
    return [
        (lr, out_dir / run_dir_name(lr) if config.lr_sweep else out_dir)
        for lr in config.lr_sweep or [config.lr]
    ]


def _keys(value: Any, prefix: str) -> set[str]:
    """The dotted keys of a (nested) config section."""
    if not isinstance(value, dict):
        return {prefix}
    return {key for name, item in value.items() for key in _keys(item, f"{prefix}.{name}")}


# the SD head's sizes (added in place of its lstm_* ones): no other task's head reads them
SD_HEAD_KEYS = frozenset({"head.sd_rnn_layers", "head.sd_hidden_dim"})


def _resumable(source: Path, config: DownstreamConfig, task: str) -> frozenset[str]:
    """`RESUMABLE`; for a task other than sd the SD head's keys; and for a fine-tuning run every
    featurizer/head key (of the checkpoint's config and this one): that run uses neither section,
    so their defaults may change; with `lr_sweep` the top-level `lr`, which no run of a sweep
    reads (the sweep's rates themselves are still compared)."""
    base = RESUMABLE | SD_HEAD_KEYS if task != "sd" else RESUMABLE
    if config.lr_sweep:
        base |= {"lr"}
    if config.finetune is None:
        return base
    saved_path = source / "config.yaml"
    try:
        saved = yaml.safe_load(saved_path.read_text()) if saved_path.is_file() else {}
    except yaml.YAMLError:
        saved = {}  # check_resume names the corrupt file
    now = to_dict(config)
    unused = {
        key
        for section in UNUSED_BY_FINETUNE
        for tree in (saved if isinstance(saved, dict) else {}, now)
        for key in _keys(tree.get(section) or {}, section)
    }
    return base | unused


def _check_resume(out_dir: Path, config: DownstreamConfig, task: str) -> None:
    """Each run's last checkpoint verifies and was trained with this config, up to `_resumable`."""
    copied = []
    for _, run_dir in _run_dirs(out_dir, config):  # an lr sweep copied with cp -rL: every run's links at once
        try:
            check_links(run_dir / "checkpoints")
        except CheckpointError as err:
            copied.append(str(err))
    if copied:
        raise CheckpointError("; ".join(copied))
    for _, run_dir in _run_dirs(out_dir, config):
        source = resume_checkpoint(run_dir, True)
        if source is not None:
            check_resume(source, config, allowed=_resumable(source, config, task))


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
    overwrite: bool = False,
    command: str = TRAIN_COMMAND,
) -> dict[str, Any]:
    """Train `task` on `data_dir/{train,dev,test}` over `upstream_spec` ("fbank" or any
    load_upstream source) into `out_dir`; returns (and writes to best.json) the chosen run.
    `name` names the upstream in results and reports (default: `default_upstream_name`; a
    resumed run keeps its recorded name). `command` is the one recorded in EXP's marker
    (`finetune train` for CTC fine-tuning, i.e. `config.finetune` set).

    With `config.lr_sweep` one run per lr goes to `out_dir/lr_<lr>/` and the best dev metric wins.
    A trained upstream (`config.tuning` other than frozen) of the chosen checkpoint is written
    to EXP/upstream/ (full: a speechssl checkpoint) or EXP/tuned.safetensors (`save_tuned`).
    Every input is checked before anything is written (see the module docstring)."""
    if name is not None and (not name.strip() or any(c in name for c in "|\n\r")):
        raise ValueError(f"upstream name {name!r} must be non-empty text without '|' or line breaks")
    config = scale_run(config or DownstreamConfig(), max_steps)
    if config.feature_cache is not None:  # recorded absolute: evaluate and --resume find it anywhere
        config = replace(config, feature_cache=str(Path(config.feature_cache).absolute()))
    upstream_spec = resolve_upstream(upstream_spec)
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    _check_cache_apart(out_dir, config)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f"data dir {data_dir} does not exist (expected {data_dir}/{{train,dev,test}})"
        )
    if config.finetune is not None and upstream_spec in BUILTIN_UPSTREAMS:
        raise ValueError(
            f"CTC fine-tuning needs an upstream with a transformer encoder; '{upstream_spec}' has none "
            "(score it with `speechssl downstream train`)"
        )
    if config.tuning.method != "frozen" and upstream_spec in BUILTIN_UPSTREAMS:
        raise ValueError(
            f"tuning method '{config.tuning.method}' needs an upstream with a transformer encoder; "
            f"'{upstream_spec}' has none (it runs with tuning.method: frozen)"
        )
    task_obj = build_task(task, data_dir, out_dir, config)  # reads nothing yet
    if config.finetune is not None:
        check_finetune_task(task_obj)
    task_obj.check_config()
    main = env_rank() == 0
    inputs = (data_dir, *([Path(upstream_spec)] if Path(upstream_spec).exists() else []))

    def check_out() -> bool:  # True: restarting a run that stopped before its first checkpoint
        return _check_experiment_out(
            out_dir, task, upstream_spec, resume, inputs, command=command, overwrite=overwrite,
            config=config, data_dir=data_dir, name=name,
        )  # fmt: skip

    def check_resumed(restarting: bool) -> None:
        if restarting:  # its EXP/task/ is read again: of the data as it is now?
            task_obj.check_saved_vocabularies(
                f"the data changed since the run stopped: move {out_dir / 'task'} away, or train into "
                "another --out"
            )
        if resume:
            task_obj.check_saved_vocabularies()
            _check_resume(out_dir, config, task_obj.name)

    restarting = False
    if main:
        restarting = check_out()
        if config.feature_cache is not None and bypass_reason(upstream_spec, None, config) is None:
            claim_cache_dir(config.feature_cache, inputs=inputs)
    if main:  # before the data checks, which read EXP/task/'s vocabularies when it has them
        check_resumed(restarting)
    check_task_data(task_obj)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_marker(out_dir, command, experiment=True)
    with ExperimentLock(out_dir, command) if main else nullcontext():
        if main:  # another run may have written EXP between the checks and the lock: check again
            check_resumed(check_out())
        return _train_locked(task_obj, upstream_spec, data_dir, out_dir, config, resume, name)


def _record(
    task: str, upstream_spec: str, name: str | None, data_dir: Path, config: DownstreamConfig
) -> dict[str, Any]:
    """What EXP/downstream.yaml records of a run (and, after training, the upstream's fingerprint)."""
    return {
        "task": task,
        "upstream": upstream_spec,
        "name": name or default_name(upstream_spec, config),
        "data_dir": str(data_dir.resolve()),
        "config": to_dict(config),
    }


def _check_cache_apart(out_dir: Path, config: DownstreamConfig) -> None:
    """A feature cache is shared by runs and EXP is one run's: neither lives inside the other (EXP's
    output rule would refuse the cache's files, or the cache's marker would take EXP), and a cache
    dir is never an --out of train (not even with --overwrite)."""
    if read_marker(out_dir) == CACHE_COMMAND:
        raise OutputExistsError(
            f"--out {out_dir} is a feature cache (of `downstream train --feature-cache`), never an"
            " experiment dir: train into another --out"
        )
    if config.feature_cache is None:
        return
    cache, out = Path(config.feature_cache).resolve(), out_dir.resolve()
    if cache == out or out in cache.parents or cache in out.parents:
        raise ValueError(
            f"--feature-cache must not be the experiment dir (or inside it, or hold it): "
            f"--feature-cache {config.feature_cache}, --out {out_dir}"
        )


def default_name(upstream_spec: str, config: DownstreamConfig) -> str:
    """The upstream's name (`upstream_name`), and for a fine-tuning run its method, so that
    `downstream report` puts a fine-tuned and a frozen run of one upstream side by side."""
    base = upstream_name(upstream_spec)
    if config.finetune is not None:
        return f"{base} (finetune {config.tuning.method})"
    return base if config.tuning.method == "frozen" else f"{base} ({config.tuning.method})"


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
    previous = (yaml.safe_load(exp_path.read_text()) or {}) if resume and exp_path.is_file() else None
    if name is None and previous is not None:
        name = previous.get("name")
    exp = _record(task, upstream_spec, name, data_dir, config)
    load = None
    if env_rank() == 0:
        # the upstream is read (and hashed) once here: a resumed run refuses one replaced in place
        # before it writes anything, a new one records its fingerprint
        upstream, fingerprint = load_checked_upstream(upstream_spec, out_dir, previous)
        task_obj.check_frames(upstream, upstream_spec)  # every example gives it a frame: before EXP's files
        if previous is None or FINGERPRINT in previous:  # an older EXP without one stays unchecked
            exp[FINGERPRINT] = fingerprint
        # its first use takes it: a frozen one (a tuning method would draw other initial weights
        # from the random numbers that loading it again draws: those runs read it again)
        frozen = config.tuning.method == "frozen" and config.finetune is None
        load = _first_load(upstream if frozen else None)
        del upstream
        remove_killed_temporaries(out_dir)  # every check passed: the run begins writing EXP
        atomic_write_text(exp_path, yaml.safe_dump(exp, sort_keys=False))
        task_obj.save()
    # cached features (once per split, every lr trains from them); a run all of whose lrs are
    # already trained and scored needs none
    pending = [run for _, run in _run_dirs(out_dir, config) if _finished(run, config, resume) is None]
    features = (
        open_features(task_obj, upstream_spec, config, ("train", "dev"), load=load) if pending else None
    )
    runs = []
    for lr, run_dir in _run_dirs(out_dir, config):
        selection = _train_run(task_obj, upstream_spec, run_dir, config, lr, resume, features, load)
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
    if config.tuning.method != "frozen":
        summary["tuned_upstream"] = _save_tuned_upstream(task_obj, upstream_spec, out_dir, config, best)
    atomic_write_json(out_dir / BEST_FILE, summary)
    log.info("best: %s", {k: v for k, v in summary.items() if k != "runs"})
    return summary


def _save_tuned_upstream(
    task: Task, upstream_spec: str, out_dir: Path, config: DownstreamConfig, best: dict[str, Any]
) -> str:
    """The chosen checkpoint's upstream, usable without the head: EXP/upstream/ for full tuning
    (a speechssl checkpoint: `load_upstream`, `speechssl export`), else EXP/tuned.safetensors
    (`load_tuned(load_upstream(<the upstream>), ...)`). Returns its name in EXP."""
    model = build_model(task, prepare_upstream(upstream_spec, config, task), config)
    _load_weights(model, out_dir / best["run_dir"] / best["checkpoint"])
    upstream = model.upstream
    if config.tuning.method == "full":
        save_checkpoint(upstream.model, upstream.config, out_dir / TUNED_UPSTREAM)
        return TUNED_UPSTREAM
    save_tuned(upstream, out_dir / TUNED_WEIGHTS)
    return TUNED_WEIGHTS


# --- evaluation --------------------------------------------------------------------------
def sweep_entry(run: dict[str, Any], metric: str) -> dict[str, Any]:
    """One learning rate's dev result (a run of best.json) as results_<split>.json keeps it."""
    dev = run.get("dev") or {}
    return {
        "lr": run.get("lr"),
        "dev": dev.get(metric),
        "step": run.get("step"),
        "last_step": run.get("last_step"),
        "stopped": run.get("stopped"),
        "dev_curve": run.get("dev_curve"),
    }


def load_experiment(out_dir: str | Path) -> tuple[dict[str, Any], DownstreamConfig]:
    out_dir = Path(out_dir)
    path = out_dir / EXP_FILE
    if not path.is_file():
        legacy = [name for name in LEGACY_FINETUNE if (out_dir / name).is_file()]
        if legacy:
            raise FileNotFoundError(
                f"{out_dir} is an experiment of the old `speechssl finetune` ({legacy[0]}), which this "
                f"version does not read: train it again with `speechssl finetune train --task asr ...`"
                + (" (its final/upstream/ is a speechssl checkpoint that load_upstream reads)"
                   if (out_dir / "final" / "upstream").is_dir() else "")
            )  # fmt: skip
        raise FileNotFoundError(
            f"{path} does not exist: train the experiment first (speechssl downstream train)"
        )
    exp = yaml.safe_load(path.read_text())
    config = _upgrade_config(dict(exp["config"]))
    return exp, from_dict(DownstreamConfig, config, source=str(path), section="config")


def _upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """An experiment recorded before the tuning section: `tuning: <name>` + `tuning_options`,
    or `upstream_trainable: true`, become `tuning: {method: ..., <method>: options}`."""
    if isinstance(config.get("tuning"), dict):
        return config
    trainable = config.pop("upstream_trainable", False)
    options = config.pop("tuning_options", None) or {}
    method = config.pop("tuning", None) or ("full" if trainable else "frozen")
    config["tuning"] = {"method": method, **({method: options} if options else {})}
    return config


def load_trained(out_dir: str | Path, checkpoint: str | Path | None = None) -> DownstreamModel:
    """The model of an experiment (eval mode, on the CPU) with the weights of `checkpoint`
    (default: the one best.json chose): upstream, tuning and head rebuilt from EXP/downstream.yaml.
    An upstream replaced in place since training (another weights fingerprint) is refused."""
    out_dir = Path(out_dir)
    exp, config = load_experiment(out_dir)
    if checkpoint is None:
        best_path = out_dir / BEST_FILE
        if not best_path.is_file():
            raise FileNotFoundError(f"{best_path} does not exist: training of {out_dir} did not finish")
        best = json.loads(best_path.read_text())
        checkpoint = out_dir / best["run_dir"] / best["checkpoint"]
    task = build_task(exp["task"], exp["data_dir"], out_dir, config)
    spec = _recorded_upstream(out_dir, exp, config)
    # the trained copy in EXP/upstream/ (the recorded one is gone) has other weights by design
    loaded = load_checked_upstream(spec, out_dir, exp)[0] if spec == str(exp["upstream"]) else None
    upstream = prepare_upstream(spec, config, task, compute_stats=False, load=_first_load(loaded))
    model = build_model(task, upstream, config)
    try:
        _load_weights(model, Path(checkpoint))
    except RuntimeError as err:
        first = str(err).strip().splitlines()[1:2] or str(err).strip().splitlines()[:1]
        raise ValueError(
            f"{checkpoint} does not fit the model that {out_dir / EXP_FILE} describes "
            f"({first[0].strip() if first else 'state dict mismatch'}): was the config edited?"
        ) from None
    return model.eval()


def _recorded_upstream(out_dir: Path, exp: dict[str, Any], config: DownstreamConfig) -> str:
    """The upstream to rebuild the model on: the recorded one, else (moved or deleted) for full
    tuning the trained copy in EXP/upstream/ (the checkpoint's weights replace it anyway)."""
    spec = str(exp["upstream"])
    tuned = out_dir / TUNED_UPSTREAM
    if (
        spec not in BUILTIN_UPSTREAMS
        and not Path(spec).exists()
        and config.tuning.method == "full"
        and tuned.is_dir()
    ):
        log.info("upstream %s not found: rebuilding on %s", spec, tuned)
        return str(tuned)
    return spec


def check_split_name(split: str) -> str:
    """A split is a plain name (a dir of the data, a file name in EXP): no path separators."""
    if not SPLIT_NAME.fullmatch(split) or split in (".", ".."):
        raise ValueError(f"--split {split!r} must be a plain name ([A-Za-z0-9_.-]+, not '.' or '..')")
    return split


def evaluate_downstream(
    out_dir: str | Path, split: str = "test", *, feature_cache: str | Path | None = RECORDED_CACHE
) -> dict[str, Any]:
    """Score the best checkpoint of an experiment on `split`; writes out_dir/results_<split>.json
    (and results.json for the test split, so a dev score never replaces the test score).
    The split is checked before the upstream is loaded. `feature_cache`: the cache dir to score
    from (None: none) instead of the one EXP/downstream.yaml records (the features are the same)."""
    check_split_name(split)
    out_dir = Path(out_dir)
    exp, config = load_experiment(out_dir)
    recorded_cache = feature_cache is RECORDED_CACHE
    if not recorded_cache:
        config = replace(
            config, feature_cache=None if feature_cache is None else str(Path(feature_cache).absolute())
        )
    best_path = out_dir / BEST_FILE
    if not best_path.is_file():
        raise FileNotFoundError(f"{best_path} does not exist: training of {out_dir} did not finish")
    best = json.loads(best_path.read_text())
    config = replace(config, lr=best["lr"])
    task = build_task(exp["task"], exp["data_dir"], out_dir, config)
    if not task.has_split(split):
        raise FileNotFoundError(f"task {task.name}: no usable '{split}' split under {exp['data_dir']}")
    task.check_split(split)
    checkpoint = out_dir / best["run_dir"] / best["checkpoint"]
    model = load_trained(out_dir, checkpoint).to(_device())
    task.check_frames(model.upstream, str(exp["upstream"]))  # the split's examples, named, before scoring
    try:
        features = open_features(task, str(exp["upstream"]), config, (split,), model.upstream)
    except OutputExistsError as err:  # the recorded cache dir became a file or another command's dir
        if not recorded_cache:
            raise
        raise OutputExistsError(
            f"{err} (recorded in {out_dir / EXP_FILE}: evaluate with --feature-cache none, or another DIR)"
        ) from None
    values = _score(model, split, config, features)
    predictions = model.task.write_predictions(out_dir, split)  # sd: EXP/hyp_<split>.rttm
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
        # convergence of the chosen run, and every rate's dev result (older experiments: absent)
        "stopped": best.get("stopped"),
        "last_step": best.get("last_step"),
        "patience": best.get("patience"),
        "dev_curve": best.get("dev_curve"),
        "sweep": [sweep_entry(run, task.metric) for run in best.get("runs", [])],
        "featurizer": config.featurizer.name if config.finetune is None else "last layer (finetune)",
        "layer_weights": model.layer_weights(),
        **({"predictions": predictions} if predictions is not None else {}),
    }
    atomic_write_json(out_dir / results_file(split), results)
    if split == "test":
        atomic_write_json(out_dir / RESULTS_FILE, results)
    return results
