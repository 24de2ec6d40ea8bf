"""`trainer.strategy: fsdp`: torch's FSDP2 (`fully_shard`) for models that do not fit one device.

Each transformer layer (`EncoderLayer`) is its own shard group and the root holds the rest, so
one layer's full weights exist at a time in forward and backward. Parameters become DTensor
shards (dim 0 over the ranks); the optimizer, clipping (`clip_grad_norm_` computes the global
norm over DTensor gradients) and the NaN checks work on the shards.

Checkpoints: the model and optimizer shards go through torch.distributed.checkpoint (DCP) into
the checkpoint dir itself (`.metadata`, `__<rank>_0.distcp`), next to a `model.safetensors`
gathered on rank 0, so `load_upstream` and `speechssl export` read an FSDP checkpoint like any
other; resuming reads the shards (any world size: DCP reshards).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from speechssl.errors import SpeechSSLError
from speechssl.models.checkpoint import CheckpointError

log = logging.getLogger(__name__)

_PARAM_DTYPES = {"bf16": torch.bfloat16}
DCP_METADATA = ".metadata"  # DCP's index of the shards, in the checkpoint dir


class FSDPUnavailableError(SpeechSSLError):
    """This torch has no FSDP2 `fully_shard` (torch < 2.4)."""


def fsdp_api() -> tuple[Any, Any]:
    """(fully_shard, MixedPrecisionPolicy) wherever this torch keeps them: public in
    torch.distributed.fsdp since 2.6, under torch.distributed._composable.fsdp in 2.4-2.5."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
        except ImportError:
            raise FSDPUnavailableError(
                f"trainer.strategy fsdp needs torch's FSDP2 fully_shard (torch >= 2.4); this is torch "
                f"{torch.__version__}: upgrade torch or use trainer.strategy ddp"
            ) from None
    return fully_shard, MixedPrecisionPolicy


def is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.5
        from torch.distributed._tensor import DTensor
    return isinstance(t, DTensor)


def local_value(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a DTensor (a replicated one: the whole value); other tensors as they are."""
    return t.to_local() if is_dtensor(t) else t


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules that get a shard group of their own: every transformer layer, except one whose
    weights other modules read outside its forward (WavLM's shared relative-position table lives in
    one layer and the encoder reads it before any layer runs); that layer stays in the root's group,
    whose weights are gathered for the whole forward."""
    from speechssl.models.encoder import EncoderLayer, TransformerEncoder

    read_outside = set()
    for m in model.modules():
        if isinstance(m, TransformerEncoder) and m.relative_position is not None:
            read_outside.add(id(m.layers[m.table_layer]))
    return [m for m in model.modules() if isinstance(m, EncoderLayer) and id(m) not in read_outside]


def layerdrop_refusal(where: str, value: float) -> ValueError:
    """The one-line refusal of LayerDrop under fsdp (`where` = value names the setting)."""
    return ValueError(
        f"trainer.strategy fsdp cannot train with LayerDrop ({where} = {value:g}): ranks would skip "
        "different layers; set model.encoder.layerdrop=0 or use trainer.strategy ddp"
    )


def refuse_layerdrop(model: nn.Module) -> None:
    """Refuse what FSDP cannot run: LayerDrop skips layers by each rank's own coin flip, so the
    ranks would gather different layers' weights and wait on each other forever."""
    for name, m in model.named_modules():
        for attr in ("layerdrop", "layer_drop"):
            value = float(getattr(m, attr, 0.0) or 0.0)
            if value > 0:
                raise layerdrop_refusal(f"{name or 'model'}.{attr}", value)


def shard(model: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """`fully_shard` each unit of `shard_units`, then the root, in place, over all ranks of the
    default process group. bf16: parameters gathered and computed in bf16, gradients reduced in
    fp32 and the sharded master weights stay fp32; fp32: no casts. Rank 0's weights are broadcast
    first (as DDP does), so every rank starts from the same model whatever its seed."""
    fully_shard, MixedPrecisionPolicy = fsdp_api()
    from torch.distributed.device_mesh import init_device_mesh

    refuse_layerdrop(model)
    world_size = dist.get_world_size()
    if world_size > 1:
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                dist.broadcast(t.data, src=0)
    mesh = init_device_mesh(device.type, (world_size,))
    policy = (
        MixedPrecisionPolicy(param_dtype=_PARAM_DTYPES[precision], reduce_dtype=torch.float32)
        if precision in _PARAM_DTYPES
        else MixedPrecisionPolicy()
    )
    units = shard_units(model)
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    log.info("fsdp: %d layer groups + the root, sharded over %d ranks", len(units), world_size)
    return model


def all_finite(model: nn.Module) -> tuple[bool, list[str]]:
    """(every rank's parameters finite, names of this rank's non-finite ones), for replicas and
    shards alike; a collective in a process group (the verdict is the same on every rank)."""
    params = [(n, local_value(p.detach())) for n, p in model.named_parameters() if p.is_floating_point()]
    flags = [p.isfinite().all() for _, p in params if p.numel()]
    bad = torch.zeros((), device=params[0][1].device) if params else torch.zeros(())
    if flags:
        bad = (~torch.stack(flags).all()).float()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if not bad.item():
        return True, []
    return False, [n for n, p in params if p.numel() and not bool(p.isfinite().all())]


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model.state_dict()` unsharded, on rank 0's CPU ({} on the other ranks); a collective
    (one all-gather per tensor, in state-dict order). Reads the model's own `state_dict`, so a
    wrapper that renames its keys (pretraining's BatchObjective) keeps its names."""
    out = {}
    rank0 = dist.get_rank() == 0
    for name, t in model.state_dict().items():
        if is_dtensor(t):
            t = t.full_tensor()
        if rank0:
            out[name] = t.detach().to("cpu", copy=True)
    return out


def _sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What DCP saves and loads: the model's own state dict (DTensor shards) and the optimizer's
    state keyed by parameter name (torch's helper; it reads names from named_parameters)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return {"model": model.state_dict(), "optimizer": get_optimizer_state_dict(model, optimizer)}


def _first_failure(err: BaseException) -> BaseException:
    """DCP reports every rank's error in one CheckpointException, a BaseException that
    `except Exception` lets through; the first rank's own error (e.g. ENOSPC's OSError) instead."""
    failures = getattr(err, "failures", None) or {}
    if failures:
        return failures[min(failures)][0]  # (exception, traceback summary) per rank
    return RuntimeError(str(err).splitlines()[0])


def save_shards(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its model and optimizer shards into `path` (DCP); a collective. A
    failure on any rank is raised on every rank (DCP gathers them) as that rank's own error."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        dcp.save(_sharded_state(model, optimizer), checkpoint_id=str(path))
    except CheckpointException as err:
        raise _first_failure(err) from None


def load_shards(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read the model and optimizer shards of `path` into the sharded `model` and `optimizer`,
    resharded to this world size; a collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    state = _sharded_state(model, optimizer)
    try:
        dcp.load(state, checkpoint_id=str(path))
    except CheckpointException as err:  # e.g. a tensor the model has and the shards lack
        reason = str(_first_failure(err)).strip().splitlines()
        raise CheckpointError(
            f"cannot read the FSDP shards of checkpoint {path}: {reason[-1] if reason else 'unknown error'}"
        ) from None
    model.load_state_dict(state["model"])
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state["optimizer"])
