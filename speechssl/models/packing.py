"""Padding-free transformer steps: the valid frames of a padded batch packed into one sequence.

A padded batch (B, T, D) of utterances with T_b valid frames spends B * T - sum(T_b) frames of
every linear layer, LayerNorm and feed-forward on padding, and its attention on padded keys. Packed,
the encoder layers run on (N, D) with N = sum(T_b), and attention runs per utterance through SDPA
on a jagged nested tensor (its variable-length fused kernels on a GPU). The frontend, the feature
projection and the positional conv still see the padded batch: their results at valid frames
depend on it (GroupNorm over the padded time axis, as fairseq computes it; the conv's zero padding).

Everything a packing needs is computed on the host from the host's frame counts and copied to
the device without blocking, so packing adds no device sync. Valid frames equal the padded
path's up to float rounding (tests/models/test_packing.py: loss and gradients within 1e-5 on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from speechssl.models.devices import to_device


@dataclass(frozen=True)
class Packing:
    """Where the valid frames of a padded (B, T) batch sit in the packed (N, D) tensor."""

    index: Tensor  # (N,) flat positions b * T + t of the valid frames, in order, on the device
    offsets: Tensor  # (B + 1,) int64 start of each utterance in the packed tensor, on the device
    min_len: int  # shortest and longest utterance, in frames (host ints: SDPA needs no sync)
    max_len: int
    batch: int
    frames: int  # T, the padded length

    @classmethod
    def from_lengths(cls, frame_lengths: Tensor, frames: int, device: torch.device) -> Packing:
        """frame_lengths: (B,) valid frames, on the host (a device tensor costs one sync here)."""
        lengths = frame_lengths.detach().to("cpu", torch.long)
        if len(lengths) == 0 or int(lengths.min()) < 1 or int(lengths.max()) > frames:
            raise ValueError(f"packing needs 1 <= frame lengths <= {frames}, found {lengths.tolist()}")
        valid = torch.arange(frames)[None, :] < lengths[:, None]  # (B, T)
        index = valid.reshape(-1).nonzero().squeeze(1)
        offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
        offsets[1:] = lengths.cumsum(0)
        return cls(
            index=to_device(index, device),
            offsets=to_device(offsets, device),
            min_len=int(lengths.min()),
            max_len=int(lengths.max()),
            batch=len(lengths),
            frames=frames,
        )

    def pack(self, x: Tensor) -> Tensor:
        """(B, T, D) -> (N, D): the valid frames, utterance after utterance."""
        B, T, D = x.shape
        if (B, T) != (self.batch, self.frames):
            raise ValueError(f"packing is for ({self.batch}, {self.frames}, D), found {tuple(x.shape)}")
        return x.reshape(B * T, D).index_select(0, self.index)

    def unpack(self, x: Tensor) -> Tensor:
        """(N, D) -> (B, T, D) with zeros at the padded frames."""
        out = x.new_zeros(self.batch * self.frames, x.shape[-1])
        return out.index_copy(0, self.index, x).view(self.batch, self.frames, x.shape[-1])

    def jagged(self, x: Tensor) -> Tensor:
        """(N, ...) -> a jagged nested tensor (B, j, ...) over the same memory (no copy)."""
        return torch.nested.nested_tensor_from_jagged(
            x, self.offsets, min_seqlen=self.min_len, max_seqlen=self.max_len
        )
