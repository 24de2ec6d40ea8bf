"""Featurizers: the interface between an upstream's hidden states and a task head.

All take `hidden_states`, a list of L+1 tensors (B, T, D) (input of the first
layer, then every layer's output), with `lengths` (B,), and return
((B, T, output_dim), lengths). Chosen by name from `FEATURIZERS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True, kw_only=True)
class FeaturizerConfig:
    name: str = "weighted_sum"  # one of FEATURIZERS
    layer: int = -1  # "layer": index into hidden_states (0 = the first layer's input; -1 = last)
    # "weighted_sum": normalise each layer (no affine) before summing (s3prl normalize)
    layer_norm: bool = False
    hconv_dim: int = 256  # "hconv": channels of the convolutions over the layer axis

    def __post_init__(self) -> None:
        if self.name not in FEATURIZERS:
            raise ValueError(f"unknown featurizer '{self.name}'; valid featurizers: {', '.join(FEATURIZERS)}")
        if self.hconv_dim <= 0:
            raise ValueError(f"hconv_dim must be > 0, found {self.hconv_dim}")


def _stack(hidden_states: list[Tensor], expected: int) -> Tensor:
    if len(hidden_states) != expected:
        raise ValueError(f"featurizer was built for {expected} hidden states, got {len(hidden_states)}")
    return torch.stack(hidden_states, dim=0)  # (L, B, T, D)


class WeightedSum(nn.Module):
    """softmax(w) . hidden states (SUPERB). Weights start equal (w = 0)."""

    def __init__(self, num_hidden: int, hidden_dim: int, *, layer_norm: bool = False) -> None:
        super().__init__()
        self.num_hidden, self.output_dim, self.layer_norm = num_hidden, hidden_dim, layer_norm
        self.weights = nn.Parameter(torch.zeros(num_hidden))

    def layer_weights(self) -> Tensor:
        return F.softmax(self.weights.detach(), dim=0)

    def forward(self, hidden_states: list[Tensor], lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = _stack(hidden_states, self.num_hidden)  # (L, B, T, D)
        if self.layer_norm:
            x = F.layer_norm(x, x.shape[-1:])
        w = F.softmax(self.weights, dim=0).to(x.dtype)  # (L,)
        return torch.einsum("l,lbtd->btd", w, x), lengths


class SingleLayer(nn.Module):
    """One chosen hidden state (e.g. the probing layer of a layer-wise analysis)."""

    def __init__(self, num_hidden: int, hidden_dim: int, *, layer: int = -1) -> None:
        super().__init__()
        if not -num_hidden <= layer < num_hidden:
            raise ValueError(
                f"layer {layer} is out of range for an upstream with {num_hidden} hidden states "
                f"(valid: {-num_hidden}..{num_hidden - 1})"
            )
        self.num_hidden, self.output_dim, self.layer = num_hidden, hidden_dim, layer % num_hidden

    def layer_weights(self) -> Tensor:
        return F.one_hot(torch.tensor(self.layer), self.num_hidden).float()

    def forward(self, hidden_states: list[Tensor], lengths: Tensor) -> tuple[Tensor, Tensor]:
        if len(hidden_states) != self.num_hidden:
            raise ValueError(
                f"featurizer was built for {self.num_hidden} hidden states, got {len(hidden_states)}"
            )
        return hidden_states[self.layer], lengths


class HierarchicalConv(nn.Module):
    """Convolutional interface of Wu et al. 2024, "Interface Design for Self-Supervised
    Speech Models": the layer axis is treated as a sequence and reduced by stride-2,
    kernel-2 convolutions (per frame), so depth = ceil(log2(L+1)) for L+1 hidden states.

    A shared linear layer first maps D -> hconv_dim; an odd layer count is padded
    with a zero layer before each halving."""

    def __init__(self, num_hidden: int, hidden_dim: int, *, channels: int = 256) -> None:
        super().__init__()
        self.num_hidden, self.output_dim = num_hidden, channels
        self.proj = nn.Linear(hidden_dim, channels)
        depth = math.ceil(math.log2(num_hidden)) if num_hidden > 1 else 0
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size=2, stride=2) for _ in range(depth)
        )

    @property
    def depth(self) -> int:
        return len(self.convs)

    def forward(self, hidden_states: list[Tensor], lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = self.proj(_stack(hidden_states, self.num_hidden))  # (L, B, T, C)
        L, B, T, C = x.shape
        x = x.permute(1, 2, 3, 0).reshape(B * T, C, L)  # (B*T, C, L): layers as the conv's sequence
        for i, conv in enumerate(self.convs):
            if x.shape[-1] % 2:
                x = F.pad(x, (0, 1))
            x = conv(x)  # (B*T, C, ceil(L/2))
            if i < len(self.convs) - 1:
                x = F.gelu(x)
        assert x.shape[-1] == 1, x.shape
        return x.reshape(B, T, C), lengths


FeaturizerBuilder = Callable[[int, int, FeaturizerConfig], nn.Module]

FEATURIZERS: dict[str, FeaturizerBuilder] = {
    "weighted_sum": lambda n, d, c: WeightedSum(n, d, layer_norm=c.layer_norm),
    "layer": lambda n, d, c: SingleLayer(n, d, layer=c.layer),
    "last": lambda n, d, c: SingleLayer(n, d, layer=-1),
    "hconv": lambda n, d, c: HierarchicalConv(n, d, channels=c.hconv_dim),
}


def build_featurizer(config: FeaturizerConfig, num_hidden: int, hidden_dim: int) -> nn.Module:
    """num_hidden: len(hidden_states) = upstream.num_layers + 1."""
    if config.name not in FEATURIZERS:
        raise ValueError(f"unknown featurizer '{config.name}'; valid featurizers: {', '.join(FEATURIZERS)}")
    return FEATURIZERS[config.name](num_hidden, hidden_dim, config)
