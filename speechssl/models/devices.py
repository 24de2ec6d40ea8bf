"""Copies between the host and an accelerator that never stall a training step, and never race."""

from __future__ import annotations

import torch
from torch import Tensor


def to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """`t` on `device`: to an accelerator without blocking (the stream orders the copy before any
    kernel that reads it, and the host runs on), to the host blocking (a non-blocking copy there
    would hand back memory that the host may read before the copy lands)."""
    return t.to(device, non_blocking=torch.device(device).type != "cpu")
