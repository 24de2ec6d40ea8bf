"""Atomic, verifiable, resumable checkpoints.

Layout (DESIGN.md):

    EXP/checkpoints/step_<N>/model.safetensors   weights of the unwrapped model
                            /config.yaml         written by the caller's `save_config`
                            /trainer_state.pt    optimizer, scheduler, scaler, sampler, step, RNG
                            /manifest.json       size + sha256 of every file; written last
    EXP/checkpoints/last -> step_<N>             relative symlinks, replaced atomically
    EXP/checkpoints/best -> step_<M>             (lowest validation loss)

A checkpoint is built in a temp dir `.step_<N>.<pid>.tmp*` (speechssl.io.atomic_directory)
and renamed into place, so a crash leaves either the old state or the complete new one; a
full disk is a one-line WriteFailedError naming the checkpoint, with the temp dir removed and
`last` still on the previous checkpoint. The manifest makes
later damage (a truncated copy, a full disk during rsync) detectable:
`load_checkpoint` verifies it and names the newest checkpoint that still verifies.
`last`/`best` are symlinks (not pointer files) so that every tool that takes a
checkpoint dir, e.g. `speechssl.load_upstream("exp/x/checkpoints/last")`, can
use them directly; each is swapped by creating a temp link and `os.replace`.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from speechssl.errors import WriteFailedError
from speechssl.io import atomic_directory, remove_stale_temporaries, write_failure
from speechssl.models.checkpoint import (
    CheckpointError,
    check_finite,
    load_safetensors,
    sha256_file,
    verify_manifest,
    write_manifest,
)

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


# --- RNG state: exact resume needs python, numpy, torch CPU and CUDA generators exactly
# where they were, in a form `torch.load(weights_only=True)` reads (no tuples of numpy arrays).
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def capture_rng() -> dict[str, Any]:
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": {"version": version, "state": list(state), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["name"],
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "verify", "sha256_file"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def step_dirs(root: str | Path) -> list[Path]:
    """`step_<N>` dirs under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _model_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies; tied weights are stored once per name (safetensors
    refuses shared storage), which `load_state_dict` re-ties on load."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}


def save_checkpoint(
    root: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    trainer_state: dict[str, Any],
    save_config: Callable[[Path], None] | None = None,
) -> Path:
    """Write `root/step_<step>/` atomically and point `last` at it. Returns the dir.

    A write failure (disk full, quota, read-only file system) raises WriteFailedError naming the
    checkpoint; the temp dir is removed and `last` keeps pointing at the previous checkpoint."""
    root = Path(root)
    final = root / f"step_{step}"
    tensors = _model_tensors(model_state)
    try:
        with atomic_directory(final) as tmp:
            save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "pt"})
            with open(tmp / STATE_FILE, "wb") as f:  # a file object: ENOSPC stays an OSError in the chain
                torch.save(trainer_state, f)
            if save_config is not None:
                save_config(tmp / CONFIG_FILE)
            write_manifest(tmp, {"step": step})
            _fsync_dir(tmp)
        _fsync_dir(root)
        point(root, "last", final)
    except WriteFailedError as err:  # name the checkpoint, not a temp file inside it
        reason = str(err).split(": ", 1)[-1]
        raise WriteFailedError(f"cannot write checkpoint {final}: {reason}") from None
    except Exception as err:
        failure = write_failure(f"checkpoint {final}", err)
        if failure is None:
            raise
        raise failure from None
    return final


def point(root: str | Path, name: str, target: Path) -> None:
    """Atomically make `root/name` a relative symlink to `target`."""
    root = Path(root)
    tmp = root / f".{name}.tmp{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(target.name, tmp)
        os.replace(tmp, root / name)
    finally:
        if tmp.is_symlink():
            tmp.unlink()


def resolve(root: str | Path, name: str) -> Path | None:
    """The dir `root/name` (last/best) points to, or None."""
    link = Path(root) / name
    if not link.is_symlink() and not link.exists():
        return None
    return link.resolve()


def clean_temporary(root: str | Path) -> None:
    """Remove half-written checkpoint dirs left by a killed run (this version's `.step_<N>.<pid>.tmp*`
    of a dead pid, and older versions' `.tmp_step_*` / `.old_step_*`)."""
    root = Path(root)
    if root.is_dir():
        remove_stale_temporaries(root)
        for p in root.iterdir():
            if p.name.startswith((".tmp_step_", ".old_step_")) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)


def prune(root: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` step dirs, never `last` or `best`. Returns the deleted."""
    protected = {p for p in (resolve(root, "last"), resolve(root, "best")) if p is not None}
    dirs = step_dirs(root)
    doomed = [p for p in dirs[: max(len(dirs) - keep_last, 0)] if p.resolve() not in protected]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


def verify(ckpt: str | Path) -> None:
    """Raise CheckpointError (without the fallback hint) unless every manifest entry matches
    (sizes and sha256) and the manifest lists the weights and the trainer state."""
    ckpt = Path(ckpt)
    if not ckpt.is_dir():
        raise CheckpointError(f"checkpoint {ckpt} does not exist")
    if not (ckpt / MANIFEST_FILE).is_file():
        raise CheckpointError(
            f"checkpoint {ckpt} is incomplete: {MANIFEST_FILE} is missing (the run stopped while writing it?)"
        )
    verify_manifest(ckpt, level="sha256", required=(MODEL_FILE, STATE_FILE))


def previous_good(ckpt: Path) -> Path | None:
    """Newest step dir older than `ckpt` that verifies."""
    m = _STEP_DIR.match(ckpt.name)
    limit = int(m.group(1)) if m else None
    for p in reversed(step_dirs(ckpt.parent)):
        if limit is not None and int(p.name.split("_")[1]) >= limit:
            continue
        try:
            verify(p)
            return p
        except CheckpointError:
            continue
    return None


def verify_or_explain(ckpt: str | Path) -> None:
    """`verify`, with an error that names the previous good checkpoint to resume from."""
    ckpt = Path(ckpt).resolve() if Path(ckpt).is_symlink() else Path(ckpt)
    try:
        verify(ckpt)
    except CheckpointError as err:
        good = previous_good(ckpt)
        if good is None:
            hint = "no earlier checkpoint verifies; train into another --out, without --resume"
        else:
            # --resume continues from checkpoints/last: move the bad dir away and point `last` back
            hint = (
                f"the previous good checkpoint is {good}; to continue from it, move {ckpt} out of"
                f" {good.parent} and point last at it (ln -sfn {good.name} {good.parent / 'last'}),"
                " then run the same command with --resume"
            )
        raise CheckpointError(f"{err}; {hint}") from None


def load_checkpoint(
    ckpt: str | Path, *, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verify (sha256), then read (model tensors, trainer state). Never unpickles code; NaN or
    inf weights are an error naming the file and the tensor."""
    ckpt = Path(ckpt)
    verify_or_explain(ckpt)
    model_state = load_safetensors(ckpt / MODEL_FILE, device=str(map_location))
    try:
        check_finite(model_state, ckpt / MODEL_FILE)
    except CheckpointError as err:
        good = previous_good(ckpt.resolve())
        raise CheckpointError(
            f"{err}" + (f"; the previous good checkpoint is {good}" if good else "")
        ) from None
    try:
        trainer_state = torch.load(ckpt / STATE_FILE, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{ckpt / STATE_FILE} holds code or objects that are not training state; refusing "
            f"to load it ({str(err).strip().splitlines()[-1]})"
        ) from None
    return model_state, trainer_state
