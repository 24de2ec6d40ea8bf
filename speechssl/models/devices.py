"""Copies between the host and an accelerator that never stall a training step, and never race;
and the host work of a step kept out of `torch.compile`'s graphs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

HostWork = TypeVar("HostWork", bound=Callable)


def to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """`t` on `device`: to an accelerator without blocking (the stream orders the copy before any
    kernel that reads it, and the host runs on), to the host blocking (a non-blocking copy there
    would hand back memory that the host may read before the copy lands)."""
    return t.to(device, non_blocking=torch.device(device).type != "cpu")


def host_side(fn: HostWork) -> HostWork:
    """Marks the work a step does on the loader's host lengths (frame counts, masks, frame indices,
    their copies to the device): it runs eagerly, outside `torch.compile`'s graphs, so that every
    compiled graph takes device tensors only. A graph that mixes host and device tensors is not run
    as a CUDA graph (trainer.compile_mode reduce-overhead), and inductor failed to compile one (on
    an H200, torch 2.11). Without torch.compile it changes nothing.

    torch's lazy form of `torch.compiler.disable`: torch.compile's machinery (torch._dynamo, about
    1.4 s to import) loads at the first call rather than when this module is imported, so the
    commands that never run a model (data, kmeans, units, ...) start that much sooner."""
    return torch._disable_dynamo(fn)  # type: ignore[return-value]


@host_side
def host_to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """`to_device` of a host tensor (the loader's lengths) where the step may be compiled: the copy
    runs outside the graphs, which then take the device tensor."""
    return to_device(t, device)
