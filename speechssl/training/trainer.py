"""The training loop: DDP or FSDP, AMP, accumulation, clipping, schedules, NaN skipping,
exact resume.

Generic over any model whose `forward(batch)` returns `(loss, metrics)`
(`loss` a scalar mean over the micro-batch, `metrics` a dict of scalar
tensors), any map-style dataset + collate, and any batch sampler with
`set_epoch`, `state_dict`, `load_state_dict` (and `__len__`) that already
shards batches by rank.

Loss normalisation: each micro-batch loss is a mean; an update averages the
`accum_steps` micro-batches of a rank and DDP averages over ranks, so
`world_size x accum_steps` micro-batches weigh equally whatever the split:
1 process x accum 2 == 2 processes x accum 1 on the same micro-batches.

Host syncs: none per update except on log steps (and at checkpoints). A
NaN/inf loss or gradient is detected on the device and handed to the fused
AdamW kernel as `found_inf`, which skips the update there.

`strategy: fsdp` (speechssl.training.fsdp) shards the model in place; the same loop runs on
DTensor parameters: the fused AdamW takes them (CPU and CUDA), `clip_grad_norm_` returns the
global norm as a replicated DTensor, read here through its local value. Gradients are
reduce-scattered after every micro-batch and the shards accumulate (no full-size gradient is
kept, which is what FSDP is for), where DDP accumulates locally and syncs once.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from speechssl.config import save_config as write_config_yaml
from speechssl.config import to_dict
from speechssl.errors import SpeechSSLError
from speechssl.training import checkpoints as ckpt
from speechssl.training import fsdp
from speechssl.training.config import CUDA_GRAPH_MODES, TrainerConfig
from speechssl.training.distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    distributed,
)
from speechssl.training.logging import TrainLogger, format_duration, memory_stats
from speechssl.training.optim import build_optimizer
from speechssl.training.schedules import build_schedule, set_lr

log = logging.getLogger("speechssl.training")

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class BadStepsError(SpeechSSLError, RuntimeError):
    """Too many consecutive updates with a NaN/inf loss or gradient."""


class NonFiniteWeightsError(SpeechSSLError):
    """The weights went NaN/inf; the run stops before it would save them."""


@dataclass(frozen=True)
class TrainResult:
    step: int
    epoch: int
    skipped_steps: int
    best_valid_loss: float | None
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    wall_seconds: float
    audio_seconds: float  # this rank's audio, all epochs of this session
    stopped_early: bool = False  # `on_checkpoint` stopped the run before max_steps
    warnings: tuple[str, ...] = ()  # the valid_monitor's warnings, the first of each kind, for the summary
    # the whole run, every session up to this one (a resumed run's earlier ones as its checkpoint
    # recorded them): training time, and the audio of all ranks
    run_wall_seconds: float = 0.0
    run_audio_seconds: float = 0.0


def default_batch_lengths(batch: Any) -> torch.Tensor | None:
    """Valid samples per utterance: the batch's `wav_lens` (speechssl.data.dataset.Batch, the
    batch of every speechssl training loop); None for a batch without them (pass `batch_lengths`)."""
    value = getattr(batch, "wav_lens", None)
    return value if isinstance(value, torch.Tensor) and value.ndim == 1 else None


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Tensors, dicts/lists of them, or any batch object with `.to(device, non_blocking=)`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    if callable(getattr(batch, "to", None)):
        return batch.to(device, non_blocking=non_blocking)
    return batch


class _SkipBatches:
    """A batch sampler minus its first `skip` batches (the ones consumed before a resume)."""

    def __init__(self, batch_sampler: Any, skip: int) -> None:
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self) -> Iterator[list[int]]:
        it = iter(self.batch_sampler)
        for _ in range(self.skip):
            if next(it, None) is None:
                return
        yield from it

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.skip, 0)


def sampler_tracks_position(batch_sampler: Any) -> bool:
    """True for samplers whose `state_dict(batches_consumed=...)` records the in-epoch
    position and whose `load_state_dict` resumes there (DurationBucketSampler)."""
    state_dict = getattr(batch_sampler, "state_dict", None)
    return state_dict is not None and "batches_consumed" in inspect.signature(state_dict).parameters


def epoch_loader(
    dataset: Any,
    collate: Any,
    batch_sampler: Any,
    config: TrainerConfig,
    info: DistInfo,
    epoch: int,
    *,
    skip: int = 0,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """The training DataLoader the trainer opens for `epoch`, not yet iterated: sampler and dataset
    set to that epoch, its first `skip` batches left out (a resume). Public for benchmarks.loader,
    which times exactly this loader. prefetch_factor: None is torch's default (2 with workers)."""
    if hasattr(batch_sampler, "set_epoch"):
        batch_sampler.set_epoch(epoch)
    if hasattr(dataset, "set_epoch"):  # new random crop windows (the workers copy it below)
        dataset.set_epoch(epoch)
    # Own generator: worker seeds must not consume the global torch RNG (exact resume).
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    extra = {} if prefetch_factor is None else {"prefetch_factor": prefetch_factor}
    return DataLoader(
        dataset,
        batch_sampler=_SkipBatches(batch_sampler, skip),
        collate_fn=collate,
        num_workers=config.num_workers,
        generator=generator,
        pin_memory=config.pin_memory and info.device.type == "cuda",
        **extra,
    )


class MicroBatchStream:
    """Endless micro-batches across epochs; knows (epoch, batches consumed in it).

    The trainer counts consumed batches itself: with DataLoader prefetching, a
    sampler has already yielded batches that were never trained on. On resume
    the sampler gets `load_state_dict` + `set_epoch(epoch)`; a sampler that
    tracks its position (`state_dict(batches_consumed=n)`) restarts there by
    itself, for any other the first `skip` batches of the epoch are dropped
    here (indices only, no I/O)."""

    def __init__(
        self,
        dataset,
        collate,
        batch_sampler,
        config: TrainerConfig,
        info: DistInfo,
        epoch: int = 0,
        batches_done: int = 0,
        skip: int = 0,
    ) -> None:
        self.dataset, self.collate, self.batch_sampler = dataset, collate, batch_sampler
        self.config, self.info = config, info
        self.epoch, self.batches_done = epoch, batches_done
        self._skip = skip  # only for the first epoch opened
        self._it: Iterator | None = None

    def _open_epoch(self) -> None:
        loader = epoch_loader(
            self.dataset,
            self.collate,
            self.batch_sampler,
            self.config,
            self.info,
            self.epoch,
            skip=self._skip,
        )
        if self.info.world_size > 1 and hasattr(self.batch_sampler, "__len__"):
            lengths = all_gather_object(len(self.batch_sampler))
            if len(set(lengths)) > 1:
                raise ValueError(
                    f"the batch sampler gives ranks different numbers of batches in epoch {self.epoch} "
                    f"({lengths}); DDP would hang at the end of the epoch. Use a sampler that gives every "
                    "rank the same number of batches (DurationBucketSampler does)"
                )
        self._it = iter(loader)
        self._skip = 0

    def next(self) -> Any:
        for _ in range(3):  # an epoch may be exhausted right at a resume point
            if self._it is None:
                self._open_epoch()
            try:
                batch = next(self._it)
            except StopIteration:
                if self.batches_done == 0:
                    raise ValueError(f"the batch sampler yielded no batches in epoch {self.epoch}") from None
                self._it = None
                self.epoch += 1
                self.batches_done = 0
                continue
            self.batches_done += 1
            return batch
        raise AssertionError("unreachable: two empty epochs in a row")


def _uses_layerdrop(model: nn.Module) -> bool:
    return any(
        float(getattr(m, name, 0.0) or 0.0) > 0
        for m in model.modules()
        for name in ("layerdrop", "layer_drop")
    )


class _Interval:
    """Per-update statistics summed on the device between two log steps (no host syncs)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        z = torch.zeros((), device=self.device)
        self.loss, self.grad_norm, self.good, self.bad = z.clone(), z.clone(), z.clone(), z.clone()
        self.metrics: dict[str, torch.Tensor] = {}
        self.audio_seconds = 0.0  # python floats: lengths live on the CPU before transfer
        self.padded_seconds = 0.0
        self.start = time.monotonic()
        self.paused = 0.0  # validation and checkpoint time, excluded from throughput


class Trainer:
    """One training run; see `train` for the arguments."""

    def __init__(
        self,
        model: nn.Module,
        train_dataset,
        collate: Callable,
        batch_sampler,
        config: TrainerConfig,
        out_dir: str | Path,
        info: DistInfo,
        *,
        valid_dataset=None,
        valid_sampler=None,
        valid_collate: Callable | None = None,
        resume: bool | str | Path = False,
        save_config: Callable[[Path], None] | Any | None = None,
        batch_lengths: Callable[[Any], torch.Tensor | None] = default_batch_lengths,
        on_checkpoint: Callable[[int, Path | None], bool] | None = None,
        valid_monitor: Any | None = None,
    ) -> None:
        self.config, self.info = config, info
        self.valid_monitor, self.warnings = valid_monitor, {}
        self.earlier_seconds, self.earlier_audio = 0.0, 0.0  # the earlier sessions' (run_* in the state)
        self.session_start, self.total_audio = time.monotonic(), 0.0
        self.on_checkpoint = on_checkpoint
        self.out_dir = Path(out_dir)
        self.ckpt_root = self.out_dir / "checkpoints"
        self.device = info.device
        self.batch_sampler = batch_sampler
        self.valid_dataset, self.valid_sampler = valid_dataset, valid_sampler
        self.collate = collate
        self.valid_collate = collate if valid_collate is None else valid_collate
        self.batch_lengths = batch_lengths
        if save_config is not None and not callable(save_config):
            config_obj = save_config
            save_config = lambda path: write_config_yaml(config_obj, path)  # noqa: E731
        self.save_config = save_config

        self.module = model.to(self.device)
        self.sharded = config.strategy == "fsdp"
        if self.sharded:
            if not torch.distributed.is_initialized():
                raise RuntimeError("trainer.strategy fsdp needs a process group: train through train()")
            fsdp.shard(self.module, config.precision, self.device)  # before the optimizer sees the params
        self.optimizer = build_optimizer(self.module, config)
        self.fused = bool(getattr(self.optimizer, "_step_supports_amp_scaling", False))
        self.schedule = build_schedule(config)
        self.scaler = torch.amp.GradScaler(
            self.device.type, init_scale=config.fp16_init_scale, enabled=config.precision == "fp16"
        )
        self.step, self.best_valid_loss = 0, math.inf
        self.skipped_total = torch.zeros((), device=self.device)
        self.consecutive_bad = torch.zeros((), device=self.device)
        self.max_consecutive_bad = torch.zeros((), device=self.device)
        epoch, batches_done, rng_state = 0, 0, None
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            ckpt.clean_temporary(self.ckpt_root)
        if not resume and ckpt.step_dirs(self.ckpt_root):
            # a fresh run must not mix with an earlier one's step dirs, `best` and pruning order
            raise ValueError(
                f"{self.ckpt_root} holds checkpoints of an earlier run: resume it (--resume) "
                "or train into another output dir"
            )
        source = self._resume_source(resume)
        self.resumed_from = source
        if source is not None:
            epoch, batches_done, rng_state = self._load(source)
        else:
            ckpt.seed_everything(config.seed + info.rank)
        self.tracks_position = sampler_tracks_position(batch_sampler)
        skip = 0 if self.tracks_position else batches_done
        self.stream = MicroBatchStream(
            train_dataset, collate, batch_sampler, config, info, epoch, batches_done, skip
        )
        self.start_step = self.step
        self.model: nn.Module = self.module
        if info.world_size > 1 and not self.sharded:
            find_unused = config.find_unused_parameters
            if find_unused is None:
                find_unused = _uses_layerdrop(self.module)
            self.model = DistributedDataParallel(
                self.module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=find_unused,
            )
        self.ddp = self.model if isinstance(self.model, DistributedDataParallel) else None
        if config.compile:
            # dynamic: every bucket has its own (batch, samples), so one graph must serve them all
            # (CUDA graphs are still recorded per shape: data.static_shapes bounds how many)
            mode = None if config.compile_mode == "default" else config.compile_mode
            self.model = torch.compile(self.model, dynamic=True, mode=mode)
        self.logger = TrainLogger(
            self.out_dir, enabled=info.is_main, max_steps=config.max_steps, start_step=self.step
        )
        if rng_state is not None:  # last: nothing above may move the generators
            ckpt.restore_rng(rng_state)

    # --- resume ------------------------------------------------------------------------
    def _resume_source(self, resume: bool | str | Path) -> Path | None:
        if resume is False or resume is None:
            return None
        if resume is True:
            last = ckpt.latest(self.ckpt_root)
            if last is None:
                log.info("resume: no checkpoint under %s; starting from scratch", self.ckpt_root)
            return last
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"resume checkpoint {path} does not exist")
        return path

    def _load(self, path: Path) -> tuple[int, int, dict | None]:
        if self.sharded:
            state = ckpt.load_trainer_state(path)
        else:
            model_state, state = ckpt.load_checkpoint(path)
        written_by = state.get("strategy", "ddp")
        if written_by != self.config.strategy:
            raise ckpt.CheckpointError(
                f"checkpoint {path} was written with trainer.strategy {written_by}; resume it with "
                f"{written_by}, not {self.config.strategy}"
            )
        if self.sharded:
            if not (path / fsdp.DCP_METADATA).is_file():
                raise ckpt.CheckpointError(f"checkpoint {path} is incomplete: its FSDP shards are missing")
            fsdp.load_shards(path, self.module, self.optimizer)
        else:
            self._load_full(path, model_state, state)
        return self._load_rest(path, state)

    def _load_full(self, path: Path, model_state: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        try:
            missing, unexpected = self.module.load_state_dict(model_state, strict=False)
        except RuntimeError as err:  # shapes differ: torch lists every tensor over many lines
            sizes = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
            shown = "; ".join(sizes[:3]) + (f"; and {len(sizes) - 3} more" if len(sizes) > 3 else "")
            raise ckpt.CheckpointError(f"checkpoint {path} does not fit the model: {shown or err}") from None
        if missing or unexpected:
            raise ckpt.CheckpointError(
                f"checkpoint {path} does not fit the model: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        self.optimizer.load_state_dict(state["optimizer"])

    def _load_rest(self, path: Path, state: dict[str, Any]) -> tuple[int, int, dict | None]:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        batches_done = int(state["batches_done"])
        if hasattr(self.batch_sampler, "load_state_dict") and state.get("sampler") is not None:
            self.batch_sampler.load_state_dict(state["sampler"])
            if sampler_tracks_position(self.batch_sampler):  # on another number of ranks it moves
                batches_done = int(self.batch_sampler.state_dict()["batches_yielded"])
        self.step = int(state["step"])
        self._set_num_updates()
        self.best_valid_loss = float(state.get("best_valid_loss", math.inf))
        if state.get("best") and self.info.is_main:
            self._repoint_best(path)
        self.skipped_total.fill_(float(state.get("skipped_steps", 0)))
        self.earlier_seconds = float(state.get("run_seconds", 0.0))
        self.earlier_audio = float(state.get("run_audio_seconds", 0.0))
        self.warnings.update(state.get("warnings") or {})  # each kind's first, maybe before this session
        rngs = state["rng"]
        rng_state = None
        if len(rngs) == self.info.world_size:
            rng_state = rngs[self.info.rank]
        else:
            log.warning(
                "checkpoint was written by %d ranks, now %d: RNG streams are reseeded, "
                "so the run continues but not bit-exactly",
                len(rngs),
                self.info.world_size,
            )
            ckpt.seed_everything(self.config.seed + self.info.rank + 7919 * self.step)
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d of the epoch)",
            path,
            self.step,
            state["epoch"],
            batches_done,
        )
        return int(state["epoch"]), batches_done, rng_state

    # --- one update --------------------------------------------------------------------
    def _autocast(self):
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AMP_DTYPES[self.config.precision])

    def _update(self, interval: _Interval) -> None:
        cfg = self.config
        self.model.train()
        step_loss = torch.zeros((), device=self.device)
        step_metrics: dict[str, torch.Tensor] = {}
        for micro in range(cfg.accum_steps):
            batch = self.stream.next()
            lengths = self.batch_lengths(batch)
            if lengths is not None and lengths.device.type == "cpu" and len(lengths):
                interval.audio_seconds += float(lengths.sum()) / cfg.sample_rate
                self.total_audio += float(lengths.sum()) / cfg.sample_rate
                wavs = getattr(batch, "wavs", None)  # static shapes pad past the longest utterance
                width = (
                    wavs.shape[1]
                    if isinstance(wavs, torch.Tensor) and wavs.dim() == 2
                    else float(lengths.max())
                )
                interval.padded_seconds += width * len(lengths) / cfg.sample_rate
            batch = to_device(batch, self.device, non_blocking=cfg.pin_memory)
            last_micro = micro == cfg.accum_steps - 1
            sync = contextlib.nullcontext() if last_micro or self.ddp is None else self.ddp.no_sync()
            with sync:
                if cfg.compile_mode in CUDA_GRAPH_MODES:
                    # a new step for CUDA graphs: this forward may overwrite the last one's outputs
                    torch.compiler.cudagraph_mark_step_begin()
                with self._autocast():
                    loss, metrics = self.model(batch)
                self.scaler.scale(loss.float() / cfg.accum_steps).backward()
            step_loss += loss.detach().float()
            for key, value in metrics.items():
                value = torch.as_tensor(value, device=self.device).detach().float()
                step_metrics[key] = step_metrics.get(key, 0) + value
        self.scaler.unscale_(self.optimizer)  # no-op unless fp16
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if cfg.clip_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        grad_norm = fsdp.local_value(grad_norm)  # fsdp: the global norm, replicated on every rank
        step_loss /= cfg.accum_steps
        bad = (~torch.isfinite(grad_norm) | ~torch.isfinite(step_loss)).float()
        bad = all_reduce_max(bad)  # a loss that is inf on one rank only must skip everywhere
        set_lr(self.optimizer, cfg.lr, self.schedule, self.step)
        if self.fused:  # skipped inside the kernel: no host sync
            self.optimizer.grad_scale, self.optimizer.found_inf = None, bad
            self.optimizer.step()
        elif not bad.item():
            self.optimizer.step()
        if self.scaler.is_enabled():
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self._set_num_updates()
        good = 1.0 - bad
        interval.good += good
        interval.bad += bad
        interval.loss += torch.where(bad > 0, 0.0, step_loss)
        interval.grad_norm += torch.where(bad > 0, 0.0, grad_norm.float())
        for key, value in step_metrics.items():
            value = torch.where(bad > 0, 0.0, value / cfg.accum_steps)
            interval.metrics[key] = interval.metrics.get(key, 0) + value
        self.skipped_total += bad
        self.consecutive_bad = (self.consecutive_bad + 1) * bad
        self.max_consecutive_bad = torch.maximum(self.max_consecutive_bad, self.consecutive_bad)

    def _check_bad_steps(self) -> None:
        """Called every min(log_every, max_bad_steps) updates: the only sync for NaN checks."""
        worst = int(self.max_consecutive_bad.item())
        self.max_consecutive_bad.zero_()
        if worst >= self.config.max_bad_steps:
            raise BadStepsError(
                f"stopping at step {self.step}: {worst} consecutive updates had a NaN/inf loss or gradient "
                f"(max_bad_steps={self.config.max_bad_steps}; {int(self.skipped_total.item())} skipped in "
                f"total). Try: a lower lr (now {self.config.lr:g}) or a longer warmup, precision fp32 or "
                f"bf16 instead of fp16, clip_norm (now {self.config.clip_norm:g}), and check the data for "
                "empty, silent or corrupt utterances and label/frame mismatches"
            )

    def _log(self, interval: _Interval) -> None:
        keys = sorted(interval.metrics)
        all_keys = all_gather_object(keys)
        if any(k != keys for k in all_keys):
            raise RuntimeError(f"ranks report different metrics: {all_keys}")
        packed = torch.stack(
            [
                interval.loss,
                interval.grad_norm,
                interval.good,
                interval.bad,
                *(interval.metrics[k] for k in keys),
                torch.tensor(interval.audio_seconds, device=self.device),
                torch.tensor(interval.padded_seconds, device=self.device),
            ]
        )
        values = all_reduce_sum(packed.double()).tolist()  # the log-step sync
        loss, gnorm, good, bad, *rest = values
        metrics, (audio, padded) = rest[: len(keys)], rest[len(keys) :]
        elapsed = max(time.monotonic() - interval.start - interval.paused, 1e-9)
        out = {
            "train/lr": self.config.lr * self.schedule(self.step - 1),
            "train/skipped_steps": float(self.skipped_total.item()),
        }
        if good > 0:
            out["train/loss"] = loss / good
            out["train/grad_norm"] = gnorm / good
            out.update({f"train/{k}": v / good for k, v in zip(keys, metrics)})
        if audio > 0:
            out["train/audio_seconds_per_second"] = audio / elapsed
            out["train/padding_efficiency"] = audio / padded
        if self.scaler.is_enabled():
            out["train/loss_scale"] = float(self.scaler.get_scale())
        out.update(memory_stats(self.device))
        self.logger.scalars(self.step, out)
        self.logger.progress(self.step, self.stream.epoch, out)
        interval.reset()

    def _heartbeat(self, interval: _Interval) -> None:
        """A console line between two log steps (the first update, then every few seconds) from the
        main rank's own sums: no collective, so the other ranks neither wait nor take part; the
        TensorBoard points and the interval's averages stay those of the log steps."""
        values = {"train/lr": self.config.lr * self.schedule(self.step - 1)}
        good = float(interval.good)  # the only host sync, every few seconds
        if good > 0:
            values["train/loss"] = float(interval.loss) / good
        elapsed = time.monotonic() - interval.start - interval.paused
        if interval.audio_seconds > 0 and elapsed > 0 and self.info.world_size == 1:
            values["train/audio_seconds_per_second"] = interval.audio_seconds / elapsed
        self.logger.progress(self.step, self.stream.epoch, values)

    # --- validation and checkpoints ----------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean loss/metrics over the validation batches of all ranks. Uses a fixed seed
        (same masks every time, so losses are comparable) and restores the training RNG."""
        saved = ckpt.capture_rng()
        ckpt.seed_everything(self.config.seed)
        self.module.eval()
        sums: dict[str, torch.Tensor] = {}
        count = 0
        if hasattr(self.valid_sampler, "set_epoch"):
            self.valid_sampler.set_epoch(0)
        if self.valid_monitor is not None:
            self.valid_monitor.reset()
        if self.sharded and self.info.world_size > 1 and hasattr(self.valid_sampler, "__len__"):
            counts = all_gather_object(len(self.valid_sampler))
            if len(set(counts)) > 1:  # every forward gathers weights from all ranks
                raise ValueError(
                    f"the validation sampler gives ranks different numbers of batches ({counts}); "
                    "trainer.strategy fsdp needs the same number on every rank"
                )
        loader = DataLoader(
            self.valid_dataset,
            batch_sampler=self.valid_sampler,
            collate_fn=self.valid_collate,
            num_workers=self.config.num_workers,
        )
        total_batches = len(self.valid_sampler) if hasattr(self.valid_sampler, "__len__") else None
        for batch in loader:
            with self._autocast():
                batch = to_device(batch, self.device)
                loss, metrics = self.module(batch)
                if self.valid_monitor is not None:
                    self._monitor_update(batch)
            for key, value in {"loss": loss, **metrics}.items():
                sums[key] = sums.get(key, 0) + torch.as_tensor(value, device=self.device).detach().double()
            count += 1
            self.logger.heartbeat(
                "validating at step %d: batch %d%s",
                self.step,
                count,
                f"/{total_batches}" if total_batches else "",
            )
        if self.valid_monitor is not None:  # e.g. RankMe: computed per rank, averaged over ranks below
            sums.update({k: torch.tensor(v * count, device=self.device, dtype=torch.float64)
                         for k, v in self.valid_monitor.compute().items()})  # fmt: skip
        keys = sorted(set().union(*all_gather_object(sorted(sums))))
        packed = torch.stack(
            [torch.as_tensor(sums.get(k, 0.0), device=self.device, dtype=torch.float64) for k in keys]
            + [torch.tensor(float(count), device=self.device, dtype=torch.float64)]
        )
        values = all_reduce_sum(packed).tolist()
        self.module.train()
        ckpt.restore_rng(saved)
        total = values[-1]
        if total == 0:
            raise ValueError("the validation sampler yielded no batches on any rank")
        return {f"valid/{k}": v / total for k, v in zip(keys, values[:-1])}

    def _monitor_update(self, batch: Any) -> None:
        """The monitor runs a submodule itself; under fsdp the root's weights (all but the layers,
        which gather their own) are gathered around it."""
        if not self.sharded:
            self.valid_monitor.update(batch)
            return
        self.module.unshard()
        try:
            self.valid_monitor.update(batch)
        finally:
            self.module.reshard()

    def _sampler_state(self) -> dict | None:
        if self.tracks_position:
            return self.batch_sampler.state_dict(batches_consumed=self.stream.batches_done)
        return self.batch_sampler.state_dict() if hasattr(self.batch_sampler, "state_dict") else None

    def _check_finite_weights(self) -> None:
        """A checkpoint never holds NaN/inf weights: `last` must stay a model worth resuming."""
        finite, names = fsdp.all_finite(self.module)  # each rank its replica or shards; all learn the verdict
        if finite:
            return
        bad = sorted({n for names_of_rank in all_gather_object(names) for n in names_of_rank})
        last = ckpt.resolve(self.ckpt_root, "last")
        raise NonFiniteWeightsError(
            f"step {self.step}: the model's weights hold NaN/inf ({', '.join(bad[:5])}"
            f"{f' and {len(bad) - 5} more' if len(bad) > 5 else ''}); no checkpoint is written"
            f" (the last good one is {last or 'none'}). Try a lower lr (now {self.config.lr:g}) or a longer"
            f" warmup, or clip_norm (now {self.config.clip_norm:g})"
        )

    def save(self, valid_loss: float | None) -> Path | None:
        self._check_finite_weights()
        rngs = all_gather_object(ckpt.capture_rng())
        run_audio = self.earlier_audio + sum(all_gather_object(self.total_audio))
        path = None
        best = valid_loss is not None and valid_loss < self.best_valid_loss
        if self.sharded:  # every rank writes its shards; rank 0 the gathered weights and the rest
            full = fsdp.full_state_dict(self.module)
            state = (
                self._trainer_state(rngs, valid_loss, run_audio, best, optimizer=None)
                if self.info.is_main
                else None
            )
            path = ckpt.save_sharded_checkpoint(
                self.ckpt_root,
                self.step,
                lambda tmp: fsdp.save_shards(tmp, self.module, self.optimizer),
                full if self.info.is_main else None,
                state,
                self.save_config,
                best=best,
            )
            del full
            if not self.info.is_main:
                path = None
        elif self.info.is_main:
            state = self._trainer_state(
                rngs, valid_loss, run_audio, best, optimizer=self.optimizer.state_dict()
            )
            path = ckpt.save_checkpoint(
                self.ckpt_root, self.step, self.module.state_dict(), state, self.save_config, best=best
            )
        if self.info.is_main:
            assert path is not None
            ckpt.prune(self.ckpt_root, self.config.keep_last)
        if valid_loss is not None:
            self.best_valid_loss = min(self.best_valid_loss, valid_loss)
        barrier()
        return path

    def _repoint_best(self, path: Path) -> None:
        """Point `best` at `path`, the checkpoint resumed from, which was the best when saved: a run
        stopped between writing it and pointing `best` there left `best` on an older checkpoint (or
        none), which the resumed run would never move again, since no later loss beats this one's."""
        if path.resolve().parent != self.ckpt_root.resolve():
            return  # a checkpoint of another experiment (--resume PATH)
        if ckpt.resolve(self.ckpt_root, "best") != path.resolve():
            log.warning("resume: %s was the best checkpoint when saved; %s/best now points at it", path,
                        self.ckpt_root)  # fmt: skip
            ckpt.point(self.ckpt_root, "best", path)

    def _trainer_state(
        self,
        rngs: list[dict[str, Any]],
        valid_loss: float | None,
        run_audio: float,
        best: bool,
        *,
        optimizer: dict | None,
    ) -> dict[str, Any]:
        """trainer_state.pt: everything but the weights (and, under fsdp, the optimizer: in the shards)."""
        return {
            "step": self.step,
            "epoch": self.stream.epoch,
            "batches_done": self.stream.batches_done,
            "optimizer": optimizer,
            "strategy": self.config.strategy,
            "scheduler": {"name": self.config.schedule, "step": self.step},
            "scaler": self.scaler.state_dict(),
            "sampler": self._sampler_state(),
            "rng": rngs,
            "world_size": self.info.world_size,
            "best_valid_loss": min(self.best_valid_loss, valid_loss if valid_loss is not None else math.inf),
            "best": best,  # `best` points here
            "skipped_steps": int(self.skipped_total.item()),
            "trainer_config": to_dict(self.config),
            "run_seconds": self.earlier_seconds + time.monotonic() - self.session_start,
            "run_audio_seconds": run_audio,
            "warnings": dict(self.warnings),
        }

    def _set_num_updates(self) -> None:
        """Step-dependent model state (wav2vec 2.0's Gumbel temperature), as fairseq's set_num_updates."""
        if hasattr(self.module, "set_num_updates"):
            self.module.set_num_updates(self.step)

    def _ask_stop(self, path: Path | None) -> bool:
        """The caller's early stopping (`on_checkpoint`, e.g. patience on a dev metric), asked on
        every rank with the training RNG put back afterwards, so a run that goes on continues
        exactly as one resumed from `path` would; True on any rank stops every rank."""
        if self.on_checkpoint is None:
            return False
        saved = ckpt.capture_rng()
        stop = bool(self.on_checkpoint(self.step, path if self.info.is_main else None))
        ckpt.restore_rng(saved)
        return bool(all_reduce_max(torch.tensor(float(stop), device=self.device)).item())

    # --- the loop ----------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg = self.config
        start = self.session_start = time.monotonic()
        self.total_audio = 0.0
        interval = _Interval(self.device)
        check_every = min(cfg.log_every, cfg.max_bad_steps)
        has_valid = self.valid_dataset is not None and self.valid_sampler is not None
        # a run killed between a checkpoint and its early-stopping decision decides on resume
        stopped = (
            self.resumed_from is not None and self.step < cfg.max_steps and self._ask_stop(self.resumed_from)
        )
        if self.info.is_main and not stopped and self.step < cfg.max_steps:
            log.info(
                "training: updates %d to %d; a console line every %d updates and at least every %.0f s",
                self.step + 1, cfg.max_steps, cfg.log_every, self.logger.heartbeat_seconds,
            )  # fmt: skip
        try:
            while self.step < cfg.max_steps and not stopped:
                self._update(interval)
                final = self.step == cfg.max_steps
                if self.step % check_every == 0 or final or not self.fused:
                    self._check_bad_steps()
                if self.step % cfg.log_every == 0 or final:
                    self._log(interval)
                elif self.logger.due(self.step):
                    self._heartbeat(interval)
                is_save = self.step % cfg.save_every == 0 or final
                is_valid = has_valid and (is_save or (cfg.valid_every and self.step % cfg.valid_every == 0))
                paused_from = time.monotonic()
                valid_loss = None
                if is_valid:
                    values = self.validate()
                    valid_loss = values["valid/loss"]
                    self.logger.valid(self.step, values)
                    for key, message in (
                        self.valid_monitor.check(values) if self.valid_monitor else {}
                    ).items():
                        log.warning("step %d: %s", self.step, message)
                        self.warnings.setdefault(key, f"first at step {self.step}: {message}")
                if is_save:
                    path = self.save(valid_loss)
                    stopped = self._ask_stop(path) and not final
                interval.paused += time.monotonic() - paused_from
        finally:
            self.logger.close()
        wall = time.monotonic() - start
        run_audio = self.earlier_audio + sum(all_gather_object(self.total_audio))
        result = TrainResult(
            step=self.step,
            epoch=self.stream.epoch,
            skipped_steps=int(self.skipped_total.item()),
            best_valid_loss=self.best_valid_loss if math.isfinite(self.best_valid_loss) else None,
            last_checkpoint=ckpt.resolve(self.ckpt_root, "last"),
            best_checkpoint=ckpt.resolve(self.ckpt_root, "best"),
            wall_seconds=wall,
            audio_seconds=self.total_audio,
            stopped_early=stopped,
            warnings=tuple(self.warnings.values()),
            run_wall_seconds=self.earlier_seconds + wall,
            run_audio_seconds=run_audio,
        )
        earlier = format_duration(result.run_wall_seconds) if self.earlier_seconds else ""
        lines = {
            "updates": f"{self.step} ({self.step - self.start_step} in this session, "
            f"{result.skipped_steps} skipped for NaN/inf"
            f"{'; stopped early by on_checkpoint' if stopped else ''})",
            "wall time": format_duration(wall) + (earlier and f" ({earlier} over all sessions)"),
            "audio seen": f"{self.total_audio * self.info.world_size / 3600:.2f} h "
            f"(~{self.total_audio * self.info.world_size / max(wall, 1e-9):.0f} audio-s/s, "
            f"all ranks)",
            "last checkpoint": str(result.last_checkpoint),
        }
        if result.best_valid_loss is not None:
            lines["best valid loss"] = f"{result.best_valid_loss:.4g} ({result.best_checkpoint})"
        lines["tensorboard"] = str(self.out_dir / "tensorboard")
        for i, message in enumerate(result.warnings):
            lines[f"warning {i + 1}"] = message
        self.logger.summary(lines)
        return result


def train(
    model: nn.Module,
    train_dataset,
    collate: Callable,
    batch_sampler,
    config: TrainerConfig,
    out_dir: str | Path,
    *,
    valid_dataset=None,
    valid_sampler=None,
    valid_collate: Callable | None = None,
    resume: bool | str | Path = False,
    save_config: Callable[[Path], None] | Any | None = None,
    batch_lengths: Callable[[Any], torch.Tensor | None] = default_batch_lengths,
    on_checkpoint: Callable[[int, Path | None], bool] | None = None,
    valid_monitor: Any | None = None,
) -> TrainResult:
    """Train `model` for `config.max_steps` updates, writing `out_dir/checkpoints/` and
    `out_dir/tensorboard/`. Under torchrun joins (and leaves) the process group.

    valid_collate: the validation batches' collate (None: `collate`; the training one may pad
    to static shapes). resume: False (fresh), True (from `checkpoints/last`, or fresh if there is none) or a
    checkpoint dir. save_config: a dataclass (written as config.yaml) or `fn(path)`.
    batch_lengths: batch -> valid samples per utterance (CPU), for audio-seconds and padding
    efficiency. on_checkpoint(step, checkpoint dir on the main rank, else None): called on every
    rank after each checkpoint and once after resuming from one; True stops the run there (early
    stopping). valid_monitor: extra validation metrics (speechssl.analysis.monitor.RankMeMonitor:
    `reset`, `update(batch)`, `compute()`, `check(values)` -> {key: warning} for the log and the summary).
    The model is trained in place; under `strategy: fsdp` it is left sharded (DTensor parameters
    of a process group that may be gone): read the trained weights from the last checkpoint's
    model.safetensors."""
    with distributed(group_of_one=config.strategy == "fsdp") as info:
        trainer = Trainer(
            model,
            train_dataset,
            collate,
            batch_sampler,
            config,
            out_dir,
            info,
            valid_dataset=valid_dataset,
            valid_sampler=valid_sampler,
            valid_collate=valid_collate,
            resume=resume,
            save_config=save_config,
            batch_lengths=batch_lengths,
            on_checkpoint=on_checkpoint,
            valid_monitor=valid_monitor,
        )
        return trainer.fit()


def train_on_loaders(
    model: nn.Module,
    train_loader: torch.utils.data.DataLoader,
    config: TrainerConfig,
    out_dir: str | Path,
    *,
    valid_loader: torch.utils.data.DataLoader | None = None,
    **kwargs: Any,
) -> TrainResult:
    """`train` on loaders of `speechssl.data.batching.build_loader`, as every command builds them:
    the trainer takes their dataset, collate function and batch sampler and opens its own
    DataLoaders each epoch (workers from `config.num_workers`), so a resumed run continues the
    sampler where it stopped."""
    return train(
        model,
        train_loader.dataset,
        train_loader.collate_fn,
        train_loader.batch_sampler,
        config,
        out_dir,
        valid_dataset=None if valid_loader is None else valid_loader.dataset,
        valid_sampler=None if valid_loader is None else valid_loader.batch_sampler,
        valid_collate=None if valid_loader is None else valid_loader.collate_fn,
        **kwargs,
    )
