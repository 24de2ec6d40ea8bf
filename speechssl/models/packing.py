"""Padding-free transformer steps: the valid frames of a padded batch packed into one sequence.

A padded batch (B, T, D) of utterances with T_b valid frames spends B * T - sum(T_b) frames of
every linear layer, LayerNorm and feed-forward on padding, and its attention on padded keys. Packed,
the encoder layers run on (N, D) with N = sum(T_b), and attention runs per utterance: on a GPU in
half precision through the variable-length flash-attention kernel directly, elsewhere through SDPA
on a jagged nested tensor. (The jagged tensor reaches the same kernel on a GPU, but its Python
dispatch took 82 ms of host time per HuBERT Base step on an H200, which left the GPU idle 68 % of
the step.) The frontend, the feature projection and the positional conv still see the padded
batch: their results at valid frames depend on it (GroupNorm over the padded time axis, as fairseq
computes it; the conv's zero padding).

Everything a packing needs is computed on the host from the host's frame counts and copied to
the device without blocking, so packing adds no device sync. Valid frames equal the padded
path's up to float rounding (tests/models/test_packing.py: loss and gradients within 1e-5 on a CPU).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from speechssl.models.devices import to_device


@dataclass(frozen=True)
class Packing:
    """Where the valid frames of a padded (B, T) batch sit in the packed (N, D) tensor."""

    index: Tensor  # (N,) flat positions b * T + t of the valid frames, in order, on the device
    offsets: Tensor  # (B + 1,) int64 start of each utterance in the packed tensor, on the device
    cu_seqlens: Tensor  # the same as int32, as the flash-attention kernel takes them
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
            cu_seqlens=to_device(offsets.to(torch.int32), device),
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

    def attention(self, q: Tensor, k: Tensor, v: Tensor, dropout_p: float = 0.0) -> Tensor:
        """Each utterance's frames attend to its own: q, k, v (N, H, d) packed -> (N, H, d)."""
        if _flash_varlen_serves(q):
            # the kernel SDPA runs for a jagged tensor on a GPU, called without the subclass:
            # cumulative lengths and the longest utterance index the packed rows (no host sync)
            return torch.ops.aten._flash_attention_forward(
                q, k, v, self.cu_seqlens, self.cu_seqlens, self.max_len, self.max_len, dropout_p, False, False
            )[0]

        def heads(t: Tensor) -> Tensor:
            return self.jagged(t).transpose(1, 2)  # (B, H, j, d)

        y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), dropout_p=dropout_p)
        return y.transpose(1, 2).values()  # (N, H, d)


def _flash_varlen_serves(q: Tensor) -> bool:
    """Whether the flash kernel takes these packed heads (N, H, d): half precision, a head size
    every flash GPU trains with (<= 128; the wav2vec 2.0 family uses 64), flash SDPA not switched
    off, on a device that has the kernel. Otherwise the jagged SDPA picks whatever kernel fits."""
    d = q.shape[-1]
    return (
        q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and d % 8 == 0
        and d <= 128
        and torch.backends.cuda.flash_sdp_enabled()
        and _flash_device(q.device)
    )


@functools.cache
def _flash_device(device: torch.device) -> bool:
    """A CUDA (not ROCm) build with flash attention and an Ampere or newer GPU: asked once per
    device, not in every layer of every step."""
    available = getattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)
    return torch.version.hip is None and available() and torch.cuda.get_device_capability(device)[0] >= 8
