"""LoRA (Hu et al., 2021): a frozen Linear plus a trainable low-rank update.

`LoRALinear` takes over the original Linear's `weight` and `bias` Parameters
under the same names, so the frozen upstream's state-dict keys do not change
(`...attention.q_proj.weight` stays) and only `lora_A` / `lora_B` are new.
B starts at zero: the wrapped model computes exactly what it did before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
FEED_FORWARD_TARGETS = ("intermediate_dense", "output_dense")


@dataclass(frozen=True, kw_only=True)
class LoRAConfig:
    rank: int = 8  # r
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # on the input of the low-rank path only
    targets: tuple[str, ...] = ("q_proj", "v_proj")  # any of ATTENTION_TARGETS + FEED_FORWARD_TARGETS

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, found {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, found {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), found {self.dropout}")
        valid = ATTENTION_TARGETS + FEED_FORWARD_TARGETS
        bad = [t for t in self.targets if t not in valid]
        if bad or not self.targets:
            raise ValueError(
                f"LoRA targets must be a non-empty list of {', '.join(valid)}; found {list(self.targets)}"
            )
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"LoRA targets has duplicates: {list(self.targets)}")


class LoRALinear(nn.Module):
    """y = x W^T + b + (alpha / r) * dropout(x) A^T B^T, with W, b frozen.

    weight: (out, in), lora_A: (r, in) Kaiming-uniform as a Linear, lora_B: (out, r) zeros.
    """

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # the same Parameter objects: no copy, same keys
        self.bias = base.bias
        self.rank, self.scaling = rank, alpha / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout)

    def delta_weight(self) -> Tensor:
        """(out, in) update scaling * B A."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in) -> (..., out)."""
        y = F.linear(x, self.weight, self.bias)
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # (..., r) -> (..., out)
        return y + update * self.scaling

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain nn.Linear with the update folded in (for inference / export); self is unchanged."""
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        linear.weight.copy_(self.weight + self.delta_weight())
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        linear.requires_grad_(False)
        return linear

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"scaling={self.scaling:g}"
        )


def add_lora(module: nn.Module, config: LoRAConfig) -> list[str]:
    """Replace every Linear child named in `config.targets` (anywhere below `module`) by a
    LoRALinear. Returns the qualified names of the replaced Linears."""
    replaced = []
    for parent_name, parent in list(module.named_modules()):
        for name in config.targets:
            child = parent._modules.get(name)
            if isinstance(child, nn.Linear):
                lora = LoRALinear(child, rank=config.rank, alpha=config.alpha, dropout=config.dropout)
                setattr(parent, name, lora.train(child.training))  # a new module starts in training mode
                replaced.append(f"{parent_name}.{name}" if parent_name else name)
    return replaced


def merge_lora(module: nn.Module) -> int:
    """Replace every LoRALinear below `module` by the plain Linear with the update folded in,
    so the model is a plain SSLModel again (same keys, exportable). Returns how many."""
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merge())
                count += 1
    return count
