"""Read fairseq / s3prl `.pt` checkpoints without running code from them.

fairseq pickles its configs (argparse.Namespace in 2020-era files, omegaconf
DictConfig in later ones) and, for HuBERT, its label `Dictionary` objects.
Plain `torch.load` would import and call whatever the pickle names, so we use
`torch.load(weights_only=True)` with an explicit allow-list of the few types
those files hold. fairseq's own classes are not importable here (fairseq is
not a dependency); they are mapped onto inert stand-ins that only receive
attribute state. Any other global in the file is refused, with its name.
"""

from __future__ import annotations

import argparse
import collections
import pickle
import re
import typing
import warnings
from pathlib import Path
from typing import Any

import torch

from speechssl.models.checkpoint import CheckpointError

__all__ = [
    "UnsafeCheckpointError",
    "FairseqDictionary",
    "load_checkpoint",
    "load_state_dict_file",
    "to_plain",
    "allowed_globals",
]


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that names a type or function outside the allow-list (never unpickled)."""


class FairseqDictionary:
    """Stand-in for `fairseq.data.dictionary.Dictionary` (HuBERT label sets).

    Unpickling only fills `__dict__` (symbols, count, indices, ...); no
    fairseq code is imported or run.
    """

    symbols: list[str]

    def __len__(self) -> int:
        return len(getattr(self, "symbols", []))


def _omegaconf_globals() -> list[Any]:
    """omegaconf containers and untyped value nodes, if omegaconf is installed.

    fairseq re-creates its config with `OmegaConf.create(to_container(...))`
    before saving, so every leaf is an AnyNode; typed nodes are allowed too
    because they only hold a primitive value. EnumNode is left out: it would
    need the (fairseq) enum class.
    """
    try:
        from omegaconf import base, dictconfig, listconfig, nodes
    except ImportError:  # pragma: no cover - omegaconf ships with s3prl/hydra
        return []
    found = [dictconfig.DictConfig, listconfig.ListConfig, base.ContainerMetadata, base.Metadata]
    for name in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode"):
        if hasattr(nodes, name):
            found.append(getattr(nodes, name))
    return found


def _numpy_globals() -> list[Any]:
    """numpy scalars: fairseq stores e.g. `extra_state.val_loss` as np.float64."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return []
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    found: list[Any] = [
        np.dtype,
        (scalar, "numpy.core.multiarray.scalar"),  # files written with numpy 1.x
        (scalar, "numpy._core.multiarray.scalar"),  # files written with numpy 2.x
    ]
    dtypes = getattr(np, "dtypes", None)
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType", "BoolDType"):
        if dtypes is not None and hasattr(dtypes, name):
            found.append(getattr(dtypes, name))
    return found


def allowed_globals() -> list[Any]:
    """Everything `load_checkpoint` lets a pickle name, besides torch's own tensor types."""
    return [
        argparse.Namespace,
        collections.defaultdict,
        (typing.Any, "typing.Any"),
        dict,
        list,
        int,
        float,
        str,
        bool,
        (FairseqDictionary, "fairseq.data.dictionary.Dictionary"),
        *_omegaconf_globals(),
        *_numpy_globals(),
    ]


def _allowed_names() -> set[str]:
    names = set()
    for item in allowed_globals():
        if isinstance(item, tuple):
            names.add(item[1])
        else:
            names.add(f"{item.__module__}.{item.__qualname__}")
    return names


def _refused_globals(path: Path, err: Exception) -> list[str]:
    """Names of the globals that made the weights-only unpickler stop."""
    names: list[str] = []
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # legacy (non-zip) files cannot be scanned; fall back to the message
        names = []
    allowed = _allowed_names()
    names = [n for n in names if n not in allowed]
    if not names:
        names = re.findall(r"GLOBAL ([\w.]+)", str(err))
    return names


def _unsafe(path: Path, err: Exception, allowed: str) -> CheckpointError:
    names = _refused_globals(path, err)
    if not names:  # no forbidden type named: the pickle is corrupt or uses instructions torch does not read
        reason = re.search(r"WeightsUnpickler error: \s*(.+?)\s*(?:\n|$)", str(err))
        detail = f" ({reason.group(1)})" if reason else ""
        return CheckpointError(
            f"{path} is not a readable PyTorch checkpoint: its pickle cannot be read as weights"
            f"{detail}; nothing in it was run"
        )
    return UnsafeCheckpointError(
        f"{path}: refusing to unpickle {', '.join(names)}: "
        "the file holds code or objects that are not weights"
        f" (only {allowed} are read; loading never runs code from a file)"
    )


def _torch_load(path: Path, extra_globals: list[Any], allowed: str) -> Any:
    """torch.load(weights_only=True) whose every failure is one line naming `path`."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(extra_globals), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Detected pickle protocol 4": our error says what matters
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _unsafe(path, err, allowed) from None
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        AttributeError,
    ) as err:
        # truncated zip, bad magic number, a file that is not a torch checkpoint at all
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {reason}"
        ) from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load(`path`) with weights_only=True and our allow-list.

    Raises FileNotFoundError for a missing file, UnsafeCheckpointError naming the refused
    types (and the file) when the pickle holds anything else, CheckpointError for a damaged file.
    """
    path = Path(path)
    obj = _torch_load(
        path,
        allowed_globals(),
        "tensors, plain containers, argparse.Namespace, omegaconf configs and fairseq Dictionary objects",
    )
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path}: expected a checkpoint dict at the top level, found {type(obj).__name__}"
        )
    return obj


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A pickled state dict (transformers' pytorch_model.bin): tensors under string keys and
    nothing else; a file naming any other type or function is refused, never run."""
    path = Path(path)
    obj = _torch_load(path, [], "tensors in a dict")
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(
            f"{path}: expected a state dict (tensor name -> tensor), found {type(obj).__name__}"
            " holding other values"
        )
    return dict(obj)


def to_plain(obj: Any) -> Any:
    """Namespace / DictConfig / ListConfig (nested) -> plain dicts and lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover
        DictConfig = ListConfig = ()  # type: ignore[assignment]
    if DictConfig and isinstance(obj, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(obj, resolve=True)
        except Exception:  # an interpolation pointing outside this node: keep it unresolved
            return OmegaConf.to_container(obj, resolve=False)
    if isinstance(obj, argparse.Namespace):
        return {k: to_plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj
