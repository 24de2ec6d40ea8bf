"""Atomic, verifiable, resumable checkpoints.

Layout (DESIGN.md):

    EXP/checkpoints/step_<N>/model.safetensors   weights of the unwrapped model
                            /config.yaml         written by the caller's `save_config`
                            /trainer_state.pt    optimizer, scheduler, scaler, sampler, step, RNG
                            /manifest.json       size + sha256 of every file; written last
                            /.metadata, __<rank>_0.distcp  trainer.strategy fsdp only: the model and
                                                 optimizer shards (torch.distributed.checkpoint)
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

import json
import os
import pickle
import random
import re
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from speechssl.errors import WriteFailedError
from speechssl.io import atomic_directory, remove_stale_temporaries, temp_tag, write_failure
from speechssl.models.checkpoint import (
    CheckpointError,
    check_finite,
    load_safetensors,
    sha256_file,
    verify_manifest,
    write_manifest,
)
from speechssl.training.distributed import all_gather_object, broadcast_object, env_rank

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.pt"
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
LINKS = ("last", "best")
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


__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "save_sharded_checkpoint",
    "load_checkpoint",
    "latest",
    "load_trainer_state",
    "verify",
    "sha256_file",
]


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
    *,
    best: bool = False,
) -> Path:
    """Write `root/step_<step>/` atomically and point `last` at it (and `best` first, when `best`:
    see `_point_links`). Returns the dir.

    A write failure (disk full, quota, read-only file system) raises WriteFailedError naming the
    checkpoint; the temp dir is removed and `last` keeps pointing at the previous checkpoint."""
    root = Path(root)
    final = root / f"step_{step}"
    tensors = _model_tensors(model_state)
    try:
        with atomic_directory(final) as tmp:
            _write_files(tmp, step, tensors, trainer_state, save_config)
        _fsync_dir(root)
        _point_links(root, final, best)
    except Exception as err:
        raise _named_failure(final, err) from None
    return final


def _point_links(root: Path, final: Path, best: bool) -> None:
    """`best` before `last`: the state `last` resumes from records the best validation loss so far,
    so a run stopped between the two links must not find that loss recorded while `best` still
    points at an older checkpoint (it would never point `best` again, and pruning could delete the
    checkpoint that earned it). Stopped the other way round, the resumed run computes this step
    again and points both."""
    if best:
        point(root, "best", final)
    point(root, "last", final)


def _write_files(
    tmp: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    trainer_state: dict[str, Any],
    save_config: Callable[[Path], None] | None,
) -> None:
    save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "pt"})
    with open(tmp / STATE_FILE, "wb") as f:  # a file object: ENOSPC stays an OSError in the chain
        torch.save(trainer_state, f)
    if save_config is not None:
        save_config(tmp / CONFIG_FILE)
    write_manifest(tmp, {"step": step})  # lists every file in tmp, the DCP shards too
    _fsync_dir(tmp)


def _named_failure(final: Path, err: Exception) -> Exception:
    """A write failure as one line naming the checkpoint (not a temp file inside it); others as they are."""
    if isinstance(err, WriteFailedError):
        reason = str(err).split(": ", 1)[-1]
        return WriteFailedError(f"cannot write checkpoint {final}: {reason}")
    return write_failure(f"checkpoint {final}", err) or err


def save_sharded_checkpoint(
    root: str | Path,
    step: int,
    write_shards: Callable[[Path], None],
    model_state: dict[str, torch.Tensor] | None,
    trainer_state: dict[str, Any] | None,
    save_config: Callable[[Path], None] | None = None,
    *,
    best: bool = False,
) -> Path:
    """`save_checkpoint` for sharded training, called on every rank: rank 0 makes the temp dir,
    every rank writes its shards into it (`write_shards(tmp)`, a collective such as DCP's save),
    then rank 0 adds the gathered `model_state`, `trainer_state`, the config and the manifest and
    renames the dir into place, as `save_checkpoint` does. The dir must be on a file system all
    ranks share. An error on any rank is raised on every rank, and the temp dir is removed."""
    root = Path(root)
    final = root / f"step_{step}"
    error: Exception | None = None
    if env_rank() == 0:
        assert model_state is not None and trainer_state is not None
        sent = False
        try:
            tensors = _model_tensors(model_state)
            with atomic_directory(final) as tmp:
                broadcast_object(str(tmp))
                sent = True
                write_shards(tmp)
                _write_files(tmp, step, tensors, trainer_state, save_config)
            _fsync_dir(root)
            _point_links(root, final, best)
        except Exception as err:  # noqa: BLE001 - shared with the other ranks below
            error = _named_failure(final, err)
        if not sent:
            broadcast_object(None)
    else:
        tmp = broadcast_object(None)
        if tmp is not None:
            try:
                write_shards(Path(tmp))
            except Exception as err:  # noqa: BLE001 - shared with the other ranks below
                error = err
    errors = all_gather_object(error)
    if errors[0] is not None:  # rank 0's account names the checkpoint
        raise errors[0]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return final


def point(root: str | Path, name: str, target: Path) -> None:
    """Atomically make `root/name` a relative symlink to `target`."""
    root = Path(root)
    tmp = root / f".{name}.{temp_tag()}.tmp"  # a temp name: `clean_temporary` removes a killed run's
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(target.name, tmp)
        os.replace(tmp, root / name)
    finally:
        if tmp.is_symlink():
            tmp.unlink()


def resolve(root: str | Path, name: str) -> Path | None:
    """The dir `root/name` (last/best) points to, or None. A copy there instead of a link (an
    experiment copied by a tool that follows links, `cp -rL`) is refused (`check_links`)."""
    link = Path(root) / name
    if link.is_symlink():
        try:
            return link.resolve()
        except (RuntimeError, OSError) as err:  # a loop (RuntimeError before Python 3.13)
            raise CheckpointError(
                f"{link} cannot be followed ({err}); point it at a step_<N> dir: ln -sfn step_<N> "
                f"{shlex.quote(str(link))}"
            ) from None
    if link.exists():
        check_links(root)  # raises here: names every copied link, this one included
    return None


def latest(root: str | Path) -> Path | None:
    """The checkpoint `--resume` continues from: `last`, else the newest step dir, else None.
    A copied `last` or `best` is refused first (`check_links`): either would fail the next save."""
    check_links(root)
    last = resolve(root, "last")
    if last is None:
        dirs = step_dirs(root)
        last = dirs[-1] if dirs else None
    return last


def check_links(root: str | Path) -> None:
    """Refuse, in one line and before any compute, a `last` or `best` under `root` that is not a
    symlink (a `cp -rL` copy): the next checkpoint could not swap it for a link. Names, for each,
    the step dir with the same manifest and the commands (quoted for the shell) that relink it."""
    root = Path(root)
    copied = [root / n for n in LINKS if (root / n).exists() and not (root / n).is_symlink()]
    if copied:
        what = "is not a symlink" if len(copied) == 1 else "are not symlinks"
        moved: dict[str, Path] = {}
        raise CheckpointError(
            f"{' and '.join(map(str, copied))} {what} to a checkpoint (copied with cp -L?); relink: "
            + "; ".join(_relink(root, link, moved) for link in copied)
        )


def _relink(root: Path, link: Path, moved: dict[str, Path]) -> str:
    """The shell commands that make the copy `link` a link again. `moved`: step dir name -> the
    copy that an earlier command renames to it (a copy made without its step dir)."""
    manifest = link / MANIFEST_FILE
    quoted = shlex.quote(str(link))
    if manifest.is_file():
        sources = [(p.name, p) for p in step_dirs(root)] + list(moved.items())
        twin = next((name for name, p in sources if _same_bytes(p / MANIFEST_FILE, manifest)), None)
        if twin is not None:
            return f"{link.name} holds the same files as {twin}: rm -r {quoted} && ln -s {twin} {quoted}"
        step = _manifest_step(manifest)
        name = f"step_{step}"
        if step is not None and name not in moved and not (root / name).exists():
            moved[name] = link
            target = shlex.quote(str(root / name))
            return f"{link.name} is {name} (its manifest): mv {quoted} {target} && ln -s {name} {quoted}"
    return (
        f"move {quoted} out of {shlex.quote(str(root))} and link {link.name} to a step_<N> dir"
        f" (ln -s step_<N> {quoted})"
    )


def _manifest_step(manifest: Path) -> int | None:
    try:
        step = json.loads(manifest.read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return step if isinstance(step, int) and step >= 0 else None


def _same_bytes(a: Path, b: Path) -> bool:
    return a.is_file() and a.read_bytes() == b.read_bytes()


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
        what = "is a file, not a checkpoint dir" if ckpt.exists() else "does not exist"
        raise CheckpointError(f"checkpoint {ckpt} {what}")
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
            last = shlex.quote(str(good.parent / "last"))
            away = (
                f"move {shlex.quote(str(ckpt))} out of {shlex.quote(str(good.parent))} and "
                if ckpt.exists()
                else ""
            )
            hint = (
                f"the previous good checkpoint is {good}; to continue from it, {away}point last at it"
                f" (ln -sfn {good.name} {last}), then run the same command with --resume"
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
    return model_state, _read_state(ckpt, map_location)


def _read_state(ckpt: Path, map_location: str | torch.device) -> dict[str, Any]:
    try:
        return torch.load(ckpt / STATE_FILE, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{ckpt / STATE_FILE} holds code or objects that are not training state; refusing "
            f"to load it ({str(err).strip().splitlines()[-1]})"
        ) from None


def load_trainer_state(ckpt: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify (sha256) and read only the trainer state: a sharded run reads its weights from the
    DCP shards, not from the gathered model.safetensors."""
    ckpt = Path(ckpt)
    verify_or_explain(ckpt)
    return _read_state(ckpt, map_location)
