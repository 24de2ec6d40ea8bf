"""HuBERT objective: predict frame labels (k-means units) at masked and unmasked frames.

Two heads, chosen by name:

- "cosine" (fairseq HuBERT): `final_proj` to `final_dim`, cosine similarity against one
  learned embedding per label (`label_embs_concat`), divided by `logit_temp` (0.1).
  fairseq builds (1 + classes) x frames x dim tensors and hides the duplicated positive
  with -inf; cross-entropy over that equals cross-entropy over the class logits computed
  here as one normalised matrix product, frames x classes.
- "linear" (k2SSL / Fast-HuBERT): one linear layer to the label logits.

Both run on every frame; the loss counts the predicted ones (masked, and unmasked when that
weight is non-zero), so that a step's shapes do not depend on its mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True, kw_only=True)
class HubertObjectiveConfig:
    """Masked prediction heads and loss weights (fairseq names in comments)."""

    num_classes: list[int] = field(default_factory=lambda: [500])  # one entry per label set (k-means k)
    head: Literal["cosine", "linear"] = "cosine"
    final_dim: int = 256  # fairseq: final_dim (cosine head only)
    logit_temp: float = 0.1  # fairseq: logit_temp (cosine head only)
    untie_final_proj: bool = False  # fairseq: untie_final_proj (one projection per label set)
    pred_masked_weight: float = 1.0  # fairseq: pred_masked_weight
    pred_nomask_weight: float = 0.0  # fairseq: pred_nomask_weight
    feature_penalty_weight: float = 10.0  # fairseq: loss_weights[0]

    def __post_init__(self) -> None:
        if not self.num_classes or min(self.num_classes) < 1:
            raise ValueError(
                f"num_classes must list at least one positive class count, found {self.num_classes}"
            )
        if self.logit_temp <= 0:
            raise ValueError(f"logit_temp must be > 0, found {self.logit_temp}")
        if self.pred_masked_weight < 0 or self.pred_nomask_weight < 0:
            raise ValueError("pred_masked_weight and pred_nomask_weight must be >= 0")
        if self.pred_masked_weight == 0 and self.pred_nomask_weight == 0:
            raise ValueError("pred_masked_weight and pred_nomask_weight are both 0: nothing to learn")


class CosineLabelHead(nn.Module):
    """fairseq HuBERT's head: cosine(final_proj(x), label embedding) / logit_temp."""

    def __init__(
        self, embed_dim: int, num_classes: Sequence[int], final_dim: int, logit_temp: float, untie: bool
    ) -> None:
        super().__init__()
        self.num_classes = list(num_classes)
        self.untie = untie
        self.logit_temp = logit_temp
        num_proj = len(self.num_classes) if untie else 1
        self.final_proj = nn.Linear(embed_dim, final_dim * num_proj)
        self.label_embs_concat = nn.Parameter(torch.empty(sum(self.num_classes), final_dim).uniform_())

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: (N, embed_dim) frames -> one (N, classes_i) logit matrix per label set."""
        proj = self.final_proj(x)  # (N, final_dim * num_proj)
        projs = proj.chunk(len(self.num_classes), dim=-1) if self.untie else [proj] * len(self.num_classes)
        embs = self.label_embs_concat.split(self.num_classes, dim=0)
        out = []
        for p, e in zip(projs, embs):
            # torch.cosine_similarity's eps (1e-8) per norm, as fairseq / torchaudio
            p = p.float() / p.float().norm(dim=-1, keepdim=True).clamp(min=1e-8)
            e = e.float() / e.float().norm(dim=-1, keepdim=True).clamp(min=1e-8)
            out.append(p @ e.t() / self.logit_temp)  # (N, classes_i)
        return out


class LinearLabelHead(nn.Module):
    """k2SSL / Fast-HuBERT head: a linear layer to the concatenated label logits."""

    def __init__(self, embed_dim: int, num_classes: Sequence[int]) -> None:
        super().__init__()
        self.num_classes = list(num_classes)
        self.final_proj = nn.Linear(embed_dim, sum(self.num_classes))

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: (N, embed_dim) -> one (N, classes_i) logit matrix per label set."""
        return list(self.final_proj(x).float().split(self.num_classes, dim=-1))


def build_label_head(embed_dim: int, config: HubertObjectiveConfig) -> nn.Module:
    """The head named by `config.head` ("cosine" | "linear")."""
    if config.head == "cosine":
        return CosineLabelHead(
            embed_dim, config.num_classes, config.final_dim, config.logit_temp, config.untie_final_proj
        )
    if config.head == "linear":
        return LinearLabelHead(embed_dim, config.num_classes)
    raise ValueError(f"unknown HuBERT head '{config.head}'; valid heads: cosine, linear")


def masked_prediction_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """logits: (N, classes); labels: (N,) with -100 for frames without a label.
    Returns (summed cross-entropy, number correct, number counted)."""
    loss = F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum")
    with torch.no_grad():
        counted = labels != -100
        correct = ((logits.argmax(dim=-1) == labels) & counted).sum()
    return loss, correct, counted.sum()


def check_labels(targets: Sequence[Tensor], num_classes: Sequence[int], batch_size: int) -> None:
    """Shape checks only (value checks would need a host sync): one (B, T') tensor per label set."""
    if len(targets) != len(num_classes):
        raise ValueError(
            f"expected {len(num_classes)} label set(s) (num_classes={list(num_classes)}), "
            f"found {len(targets)}"
        )
    for i, t in enumerate(targets):
        if t.dim() != 2 or t.shape[0] != batch_size:
            raise ValueError(
                f"label set {i} must have shape (batch={batch_size}, frames), found {tuple(t.shape)}"
            )
        if t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"label set {i} must hold integer unit ids, found dtype {t.dtype}")
