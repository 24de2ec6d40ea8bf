"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021).

An adapter is x + up(act(down(x))), with `up` initialised to zero so that it
starts as the identity. Houlsby places one after the attention output
projection and one after the feed-forward output projection of every layer
(before the residual add); Pfeiffer keeps only the feed-forward one.

The adapter is injected by replacing those two Linears (`attention.out_proj`,
`feed_forward.output_dense`) with an `AdapterLinear` that holds the original
`weight` / `bias` Parameters under the same names and applies the adapter to
its output, so the frozen upstream's state-dict keys do not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "swish": nn.SiLU, "tanh": nn.Tanh}


@dataclass(frozen=True, kw_only=True)
class AdapterConfig:
    bottleneck_dim: int = 64  # Houlsby's m
    placement: Literal["houlsby", "pfeiffer"] = "houlsby"  # after attention and FFN | after FFN only
    activation: Literal["gelu", "relu", "swish", "tanh"] = "gelu"
    dropout: float = 0.0  # inside the bottleneck, after the activation

    def __post_init__(self) -> None:
        if self.bottleneck_dim < 1:
            raise ValueError(f"bottleneck_dim must be >= 1, found {self.bottleneck_dim}")
        if self.placement not in ("houlsby", "pfeiffer"):
            raise ValueError(f"placement must be 'houlsby' or 'pfeiffer', found {self.placement!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(_ACTIVATIONS)}, found {self.activation!r}"
            )
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), found {self.dropout}")


class BottleneckAdapter(nn.Module):
    """x: (..., D) -> x + up(dropout(act(down(x)))); down: D -> m, up: m -> D (zero init)."""

    def __init__(
        self,
        dim: int,
        bottleneck_dim: int,
        *,
        activation: str = "gelu",
        dropout: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck_dim, device=device, dtype=dtype)
        self.activation = _ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck_dim, dim, device=device, dtype=dtype)
        nn.init.zeros_(self.up.weight)  # identity at the start of tuning
        nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.up(self.dropout(self.activation(self.down(x))))


class AdapterLinear(nn.Module):
    """A frozen Linear followed by a bottleneck adapter: (..., in) -> (..., out)."""

    def __init__(self, base: nn.Linear, adapter: BottleneckAdapter) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # the same Parameter objects: no copy, same keys
        self.bias = base.bias
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        return self.adapter(F.linear(x, self.weight, self.bias))


def _wrap(parent: nn.Module | None, name: str, config: AdapterConfig) -> bool:
    base = getattr(parent, name, None) if parent is not None else None
    if not isinstance(base, nn.Linear):
        return False
    adapter = BottleneckAdapter(
        base.out_features,
        config.bottleneck_dim,
        activation=config.activation,
        dropout=config.dropout,
        device=base.weight.device,
        dtype=base.weight.dtype,
    )
    # a new module starts in training mode: follow the wrapped one's (bottleneck dropout)
    setattr(parent, name, AdapterLinear(base, adapter).train(base.training))
    return True


def add_adapters(layers: nn.ModuleList, config: AdapterConfig) -> int:
    """Insert adapters into every EncoderLayer of `layers`; returns how many were added.
    A pruned-away sublayer (attention or feed_forward None) gets none."""
    count = 0
    for layer in layers:
        if config.placement == "houlsby":
            count += _wrap(layer.attention, "out_proj", config)
        count += _wrap(layer.feed_forward, "output_dense", config)
    return count
