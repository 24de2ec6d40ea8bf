"""Experiment dirs of the training commands: locked for the whole run, checked before any write.

`speechssl pretrain | distill | prune` share one sequence (`experiment`; `downstream train` and
`finetune train` follow the same rule through the downstream runner):

1. the output rule (`speechssl.outputs.check_output`): a new or empty dir, or this command's own
   earlier experiment; checkpoints of an earlier run need `--resume`;
2. the lock (`EXP/.speechssl_lock`, pid and host): a second run on the same `--out` is refused naming it;
3. on `--resume`: the checkpoint verifies (manifest) and its config matches the new one, except
   for keys that only set the run's length, logging and loading (`RESUMABLE_KEYS`);
4. EXP/config.yaml, which the run writes, holds a config a run wrote: one this command wrote
   there and nobody changed since, this run's, or that of the checkpoint it resumes. Anything else
   is the user's (their own file, or an edit), which a run never reads and would write over, so it
   is refused;
5. the command checks its inputs, then calls `begin()`: the marker is written, temp files of
   killed runs are removed, the resolved config is written as EXP/config.yaml; only then does the
   run write into EXP (tensorboard/, checkpoints, summaries).

So a refused or failed start leaves EXP byte for byte as it was. Under torchrun global rank 0
alone does 1-4 while the other ranks wait, and every rank raises the same one-line error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from speechssl.config import config_yaml, save_config
from speechssl.errors import OutputExistsError, SpeechSSLError
from speechssl.io import remove_stale_temporaries
from speechssl.outputs import (
    LOCK,
    ExperimentLock,
    check_output,
    is_own_file,
    read_marker,
    record_output,
    refuse_inputs,
    write_marker,
)
from speechssl.training import checkpoints as ckpt
from speechssl.training.distributed import all_gather_object, distributed, env_rank, on_main_rank

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"  # EXP/config.yaml: the resolved config of the run

# Config keys a resumed run may change: how long it runs, how often it logs and saves, how it
# loads data. Anything else (the model, the objective, the optimizer) must match the checkpoint.
RESUMABLE_KEYS = frozenset({
    "trainer.max_steps", "trainer.warmup_steps", "trainer.save_every", "trainer.keep_last",
    "trainer.valid_every", "trainer.log_every", "trainer.max_bad_steps", "trainer.num_workers",
    "trainer.pin_memory", "trainer.compile", "trainer.compile_mode", "data.skip_bad", "data.padding_free",
})  # fmt: skip
# Options added after checkpoints of speechssl existed, each with the value that reproduces what a
# run written before it did: absent from a checkpoint's config.yaml, such a key matches at this
# value only. (A new option's default need not be the old behaviour: head.sd_* replaced the SD
# head's lstm_* sizes and `optimizer: adam` replaced AdamW (0.9, 0.98); those stay differences.)
# An absent key also matches null, an option not in use (e.g. model.encoder.layer_head_index).
ADDED_OPTIONS: dict[str, Any] = {
    "trainer.strategy": "ddp",
    "trainer.compile_mode": "default",
    "data.static_shapes": 0,
}


class ConfigMismatchError(SpeechSSLError):
    """A resumed run's config differs from its checkpoint's in keys that must match."""


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def config_differences(
    saved: dict,
    config: Any,
    *,
    allowed: Iterable[str] = RESUMABLE_KEYS,
    added: Mapping[str, Any] = ADDED_OPTIONS,
) -> list[str]:
    """`key (checkpoint A, now B)` for every key of `config` (a dataclass) that differs from the
    `saved` mapping (a checkpoint's config.yaml), leaving out `allowed` keys. A key the checkpoint
    lacks matches null (an option not in use) and, if listed in `added` (and the checkpoint does
    not hold its section as a value), its listed value: the option did not exist when the
    checkpoint was written, and that value is what the run did."""
    now = _flatten(yaml.safe_load(config_yaml(config)))
    before = _flatten(saved)
    allowed = set(allowed)

    def absent_and_as_before(key: str) -> bool:
        parts = key.split(".")
        if key in before or any(".".join(parts[:i]) in before for i in range(1, len(parts))):
            return False
        return key in added and now.get(key) == added[key]

    return [
        f"{key} (checkpoint {before.get(key, '<absent>')!r}, now {now.get(key, '<absent>')!r})"
        for key in sorted(set(now) | set(before))
        if key not in allowed and now.get(key) != before.get(key) and not absent_and_as_before(key)
    ]


def resume_checkpoint(out: Path, resume: bool | str | Path) -> Path | None:
    """The checkpoint a run resumes from: `resume` itself, or EXP/checkpoints/last (or the newest
    step dir); None for a fresh run or when there is none yet (the run starts from scratch)."""
    if resume is False or resume is None:
        return None
    if resume is not True:
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"resume checkpoint {path} does not exist")
        return path
    return ckpt.latest(out / "checkpoints")


def check_resume(source: Path, config: Any, *, allowed: Iterable[str] = RESUMABLE_KEYS) -> None:
    """Raise unless checkpoint `source` verifies and was trained with `config` (up to `allowed`)."""
    ckpt.verify_or_explain(source)
    saved_path = source / ckpt.CONFIG_FILE
    if config is None or not saved_path.is_file():
        return
    try:
        saved = yaml.safe_load(saved_path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ckpt.CheckpointError(
            f"checkpoint {source} is corrupt: {saved_path.name} is not YAML ({err})"
        ) from None
    diffs = config_differences(saved, config, allowed=allowed)
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise ConfigMismatchError(
            f"cannot resume from {source}: the config differs from the checkpoint's in {shown};"
            " resume with the checkpoint's values, or train into another --out"
        )


def check_experiment_out(
    out: Path, command: str, *, resume: bool, overwrite: bool = False, inputs: tuple[str | Path, ...] = ()
) -> None:
    """The output rule for an experiment dir (step 1 above); `inputs`: the data the run reads."""
    refuse_inputs(out, inputs)  # never into the data the run reads, whatever the dir holds
    marker = read_marker(out)
    if out.is_dir() and marker in (None, command) and ckpt.step_dirs(out / "checkpoints"):
        if not resume:
            raise OutputExistsError(
                f"{out / 'checkpoints'} holds checkpoints of an earlier run: resume it (--resume)"
                " or train into another output dir"
            )
        if marker is None:
            return  # an experiment of a speechssl without markers: its own checks follow
    check_output(out, command, overwrite=overwrite)


def check_config_file(out: Path, command: str, text: str, source: Path | None) -> None:
    """Refuse a run whose EXP/config.yaml (`text`) would replace a file that is not a run's config
    as written (step 4 above): the user's own (--overwrite keeps it), or one edited since, perhaps
    in the hope that a resume reads it. One that `command` wrote (`begin`) and nobody changed is
    the run's, whatever it holds (a run stopped before its first checkpoint, then started with
    other settings)."""
    path = out / CONFIG_FILE
    if not (path.exists() or path.is_symlink()) or is_own_file(path, command):
        return
    written = [text.encode()]
    if source is not None and (source / ckpt.CONFIG_FILE).is_file():
        written.append((source / ckpt.CONFIG_FILE).read_bytes())
    if path.is_file() and path.read_bytes() in written:
        return
    raise OutputExistsError(
        f"{path} is not a config that {command} wrote (your own file, or edited since): a run takes its"
        " settings from the command line and, resumed, from the checkpoint, never from this file, and would"
        " write over it; restore it or move it aside, and pass changes with --set"
    )


def remove_killed_temporaries(out: Path) -> None:
    """Temp files and dirs that killed runs left in EXP (the lock holder is the only writer there,
    so any other pid's are stale): called by a run that holds the lock and begins writing."""
    for stale in remove_stale_temporaries(out):
        logger.info("removed %s (a temp file of a killed run)", stale)


def _lock(out: Path, command: str, *, resume: bool, overwrite: bool, inputs: tuple) -> ExperimentLock:
    if (out / LOCK).exists():
        # a live holder is named before anything else is said about the dir; a stale lock
        # (its run was killed) is removed so that the dir is judged on its own files
        probe = ExperimentLock(out, command)
        probe.acquire()
        probe.release()
    check_experiment_out(out, command, resume=resume, overwrite=overwrite, inputs=inputs)
    lock = ExperimentLock(out, command)
    lock.acquire()
    return lock


class Experiment:
    """What `experiment` yields: the checked checkpoint to resume from (or None) and `begin()`."""

    def __init__(
        self, out: Path, command: str, resume_from: Path | None, *, fresh: bool, config: Any = None
    ) -> None:
        self.out, self.command, self.resume_from, self.fresh = out, command, resume_from, fresh
        self.config = config
        self.begun = False

    def begin(self) -> None:
        """Every check passed: mark the dir as this command's experiment, remove killed runs'
        temp files and write the config as EXP/config.yaml (rank 0). Call before the first write
        into EXP."""
        if env_rank() == 0:
            if read_marker(self.out) != self.command:
                write_marker(self.out, self.command, experiment=True)
            remove_killed_temporaries(self.out)
            if self.config is not None:
                save_config(self.config, self.out / CONFIG_FILE)
                record_output(self.out / CONFIG_FILE, self.command)
        self.begun = True


@contextmanager
def experiment(
    out: str | Path, command: str, *, resume: bool | str | Path = False, config: Any = None,
    overwrite: bool = False, inputs: Iterable[str | Path | None] = (),
    allowed: Iterable[str] = RESUMABLE_KEYS,
) -> Iterator[Experiment]:  # fmt: skip
    """Join the process group (`distributed()`, a no-op outside torchrun), then lock and check
    `out` for a run of `command` (see the module docstring); `config`: the run's, written by
    `begin()` as EXP/config.yaml."""
    out = Path(out)
    created = not out.exists()
    read = tuple(p for p in inputs if p is not None)
    locks: list[ExperimentLock] = []

    def start() -> str | None:
        locks.append(_lock(out, command, resume=bool(resume), overwrite=overwrite, inputs=read))
        source = resume_checkpoint(out, resume)
        if source is not None:
            check_resume(source, config, allowed=allowed)
        elif resume:
            logger.info("resume: no checkpoint under %s; starting from scratch", out / "checkpoints")
        if config is not None:
            check_config_file(out, command, config_yaml(config), source)
        return None if source is None else str(source)

    run: Experiment | None = None
    with distributed():
        try:
            source = all_gather_object(on_main_rank(start))[0]  # every rank resumes from rank 0's choice
            run = Experiment(
                out, command, None if source is None else Path(source), fresh=source is None, config=config
            )
            yield run
        finally:
            for lock in locks:
                lock.release()
                if created and not (run is not None and run.begun):
                    _remove_if_empty(out)


def _remove_if_empty(out: Path) -> None:
    """A refused start leaves no empty dir behind that it created itself."""
    try:
        out.rmdir()
    except OSError:
        pass
