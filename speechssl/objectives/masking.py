"""Span masking for masked pretraining (wav2vec 2.0 / HuBERT), vectorised.

Semantics follow fairseq's `compute_mask_indices` with `mask_type="static"`:

- utterance b with L valid frames gets `num_mask = floor(mask_prob * L / mask_length + u)`
  spans (u ~ U[0, 1) per utterance: probabilistic rounding), at least `min_masks`;
- span starts are drawn without replacement from `[0, L - mask_length)`, so spans
  never reach padding and the last valid frame stays visible (this also keeps a
  very short utterance from being masked whole);
- overlapping spans merge (the masked fraction is then below `mask_prob`), or with
  `no_overlap` spans are placed with at least `min_space` visible frames between them;
- with `require_same_masks` every utterance of the batch ends with the same number of
  masked frames: rows above the batch minimum drop random masked frames, as fairseq does.

Everything runs as batched tensor ops on the device of `lengths` with an explicit
`torch.Generator`, and without host syncs, so masks can be drawn inside the model step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True, kw_only=True)
class MaskConfig:
    """Time and channel masking (fairseq names in comments)."""

    mask_prob: float = 0.65  # fairseq: mask_prob (HuBERT Base: 0.8)
    mask_length: int = 10  # fairseq: mask_length
    min_masks: int = 2  # fairseq: hard-coded min_masks=2 in apply_mask
    mask_type: Literal["static"] = "static"  # fairseq: mask_selection
    no_overlap: bool = False  # fairseq: no_mask_overlap
    min_space: int = 1  # fairseq: mask_min_space (only with no_overlap)
    require_same_masks: bool = True  # fairseq: require_same_masks
    channel_prob: float = 0.0  # fairseq: mask_channel_prob
    channel_length: int = 10  # fairseq: mask_channel_length
    channel_min_masks: int = 0  # fairseq calls channel masking with min_masks=0
    channel_no_overlap: bool = False  # fairseq: no_mask_channel_overlap
    channel_min_space: int = 1  # fairseq: mask_channel_min_space

    def __post_init__(self) -> None:
        for name in ("mask_prob", "channel_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], found {value}")
        for name in ("mask_length", "channel_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, found {getattr(self, name)}")
        for name in ("min_masks", "min_space", "channel_min_masks", "channel_min_space"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, found {getattr(self, name)}")
        if self.mask_type != "static":
            raise ValueError(f"mask_type must be 'static', found {self.mask_type!r}")


def uniform(*size: int, device: torch.device | str, generator: torch.Generator | None) -> Tensor:
    """torch.rand, passing `generator` only when there is one: torch.compile with dynamic shapes
    (trainer.compile) fails on `torch.rand(..., generator=None)` with a symbolic size."""
    if generator is None:
        return torch.rand(*size, device=device)
    return torch.rand(*size, device=device, generator=generator)


def _ranks(keys: Tensor) -> Tensor:
    """Rank of each entry along dim 1 (0 = smallest): a random permutation when keys are uniform."""
    return keys.argsort(dim=1).argsort(dim=1)


def _spans_from_starts(starts: Tensor, span: int) -> Tensor:
    """starts: bool (B, T) span starts -> bool (B, T) frames covered by any span of `span` frames."""
    counts = F.pad(
        starts.long().cumsum(dim=1), (span, 0)
    )  # (B, span + T); counts[:, span + t] = #starts <= t
    return (counts[:, span:] - counts[:, :-span]) > 0  # any start in (t - span, t]


def compute_mask_indices(
    lengths: Tensor,
    num_frames: int,
    *,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
    no_overlap: bool = False,
    min_space: int = 0,
    require_same_masks: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """lengths: (batch,) valid frames per utterance (<= num_frames).
    Returns bool (batch, num_frames), True = masked; never True at or beyond `lengths`.
    See the module docstring for the exact semantics (fairseq: compute_mask_indices)."""
    if mask_length < 1:
        raise ValueError(f"mask_length must be >= 1, found {mask_length}")
    if lengths.dim() != 1:
        raise ValueError(f"lengths must have shape (batch,), found {tuple(lengths.shape)}")
    device = lengths.device
    B, T = lengths.shape[0], num_frames  # batch, frames
    if B == 0 or T == 0 or mask_prob <= 0.0:
        return torch.zeros(B, T, dtype=torch.bool, device=device)
    lengths = lengths.long().clamp(0, T)
    pos = torch.arange(T, device=device)  # (T,)
    usable = (lengths - 1).clamp(min=0)  # (B,) the last valid frame is never masked
    draw = uniform(B, device=device, generator=generator)
    num_mask = (mask_prob * lengths / mask_length + draw).floor().long().clamp(min=min_masks)  # (B,)

    if no_overlap:
        # Place n spans with >= min_space gaps uniformly: choose n distinct "slots" y_1 < ... < y_n
        # from [0, free + n) and shift the i-th by i * (mask_length + min_space - 1).
        fits = torch.div(usable + min_space, mask_length + min_space, rounding_mode="floor")
        num_mask = torch.minimum(num_mask, fits)
        free = usable - num_mask * mask_length - (num_mask - 1).clamp(min=0) * min_space  # (B,) >= 0
        candidates = free + num_mask
    else:
        # fairseq: starts from range(L - mask_length), or range(num_mask + 1) when that is too small.
        candidates = lengths - mask_length
        candidates = torch.where(candidates <= num_mask, num_mask + 1, candidates).clamp(max=usable)
        num_mask = torch.minimum(num_mask, candidates)

    keys = uniform(B, T, device=device, generator=generator)  # (B, T)
    keys = keys.masked_fill(pos[None, :] >= candidates[:, None], 2.0)  # non-candidates rank last
    chosen = _ranks(keys) < num_mask[:, None]  # (B, T) chosen starts (or slots)

    if no_overlap:
        order = chosen.long().cumsum(dim=1) - 1  # (B, T) index of each chosen slot in sorted order
        shifted = pos[None, :] + order * (mask_length + min_space - 1)
        index = torch.where(chosen, shifted, T).clamp(max=T)  # unchosen -> dummy column T
        starts = torch.zeros(B, T + 1, dtype=torch.bool, device=device)
        starts.scatter_(1, index, True)
        starts = starts[:, :T]
    else:
        starts = chosen
    mask = _spans_from_starts(starts, mask_length) & (pos[None, :] < usable[:, None])  # (B, T)

    if require_same_masks:
        target = mask.sum(dim=1).min()  # 0-dim tensor: no host sync
        keys = uniform(B, T, device=device, generator=generator).masked_fill(~mask, 2.0)
        mask = mask & (_ranks(keys) < target)
    return mask


def compute_channel_mask(
    batch_size: int,
    num_channels: int,
    config: MaskConfig,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Tensor | None:
    """bool (batch, channels) channel mask, or None when `channel_prob` is 0 (fairseq: mask_channel_*)."""
    if config.channel_prob <= 0.0:
        return None
    lengths = torch.full((batch_size,), num_channels, dtype=torch.long, device=device)
    return compute_mask_indices(
        lengths,
        num_channels,
        mask_prob=config.channel_prob,
        mask_length=config.channel_length,
        min_masks=config.channel_min_masks,
        no_overlap=config.channel_no_overlap,
        min_space=config.channel_min_space,
        generator=generator,
    )


def compute_time_mask(
    lengths: Tensor, num_frames: int, config: MaskConfig, *, generator: torch.Generator | None = None
) -> Tensor:
    """bool (batch, frames) time mask for valid-frame `lengths` under `config`."""
    return compute_mask_indices(
        lengths,
        num_frames,
        mask_prob=config.mask_prob,
        mask_length=config.mask_length,
        min_masks=config.min_masks,
        no_overlap=config.no_overlap,
        min_space=config.min_space,
        require_same_masks=config.require_same_masks,
        generator=generator,
    )
