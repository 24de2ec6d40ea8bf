"""wav2vec 2.0 objective: InfoNCE over sampled distractors, diversity loss, feature penalty.

Functions over tensors, so the pretraining model, tests and distillation code share them.
Negative indices use transformers' layout (`sampled_negative_indices`): long (B, T, K)
indices into the flattened (B * T) target frames, meaningful at masked frames only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from speechssl.models.quantizer import QuantizerConfig
from speechssl.objectives.masking import uniform


@dataclass(frozen=True, kw_only=True)
class Wav2Vec2ObjectiveConfig:
    """Contrastive objective and its heads (fairseq names in comments)."""

    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    final_dim: int = 256  # fairseq: final_dim; transformers: proj_codevector_dim
    num_negatives: int = 100  # fairseq: num_negatives
    cross_sample_negatives: int = 0  # fairseq: cross_sample_negatives
    negatives_from_everywhere: bool = False  # fairseq: negatives_from_everywhere
    logit_temp: float = 0.1  # fairseq: logit_temp; transformers: contrastive_logits_temperature
    diversity_weight: float = 0.1  # fairseq: loss_weights[0]; transformers: diversity_loss_weight
    feature_penalty_weight: float = 10.0  # fairseq: loss_weights[1]
    dropout_features: float = 0.1  # fairseq: dropout_features; transformers: feat_quantizer_dropout
    # "prob": fairseq, differentiable mean-softmax perplexity; "code": hard-code perplexity, which is
    # what transformers' eval mode uses (no gradient; for parity checks).
    diversity_perplexity: Literal["prob", "code"] = "prob"

    def __post_init__(self) -> None:
        if self.num_negatives < 0 or self.cross_sample_negatives < 0:
            raise ValueError("num_negatives and cross_sample_negatives must be >= 0")
        if self.num_negatives + self.cross_sample_negatives == 0:
            raise ValueError("need at least one negative: num_negatives + cross_sample_negatives is 0")
        if self.logit_temp <= 0:
            raise ValueError(f"logit_temp must be > 0, found {self.logit_temp}")
        if not 0.0 <= self.dropout_features < 1.0:
            raise ValueError(f"dropout_features must be in [0, 1), found {self.dropout_features}")


def _draw_excluding_self(
    self_rank: Tensor, pool: Tensor, num: int, generator: torch.Generator | None
) -> Tensor:
    """self_rank: (B, T) each frame's index in its pool; pool: (B, 1) or () pool sizes.
    Returns (B, T, num) uniform draws from [0, pool) minus self (fairseq: shift draws >= self)."""
    B, T = self_rank.shape
    u = uniform(B, T, num, device=self_rank.device, generator=generator)
    draw = (u * (pool - 1).clamp(min=0)[..., None]).long()  # uniform in [0, pool - 1)
    draw = draw + (draw >= self_rank[..., None]).long()
    # a pool of one frame has no distractor: point at self, which the logits then hide (-inf)
    return torch.where((pool > 1)[..., None], draw, self_rank[..., None].expand_as(draw))


def sample_negatives(
    mask: Tensor,
    num_negatives: int,
    *,
    cross_sample_negatives: int = 0,
    lengths: Tensor | None = None,
    from_everywhere: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """mask: bool (B, T) frames to predict; lengths: (B,) valid frames (needed for `from_everywhere`).
    Returns long (B, T, num_negatives + cross_sample_negatives) flat indices into B * T frames.

    As fairseq's sample_negatives: distractors come from the masked frames of the same
    utterance (or its valid frames with `from_everywhere`), uniformly, never the frame
    itself; cross-sample distractors come from the masked frames of the whole batch.
    Padding is never drawn. Unmasked rows point at the frame itself and are meaningless."""
    B, T = mask.shape
    device = mask.device
    offsets = (torch.arange(B, device=device) * T)[:, None]  # (B, 1)
    pos = torch.arange(T, device=device)
    groups = []
    if num_negatives > 0:
        if from_everywhere:
            if lengths is None:
                raise ValueError("sample_negatives(from_everywhere=True) needs lengths")
            rank = pos.expand(B, T)  # valid frames are the prefix [0, length)
            draw = _draw_excluding_self(rank, lengths.long()[:, None], num_negatives, generator)
            groups.append(draw + offsets[..., None])
        else:
            rank = mask.long().cumsum(dim=1) - 1  # (B, T) index among this utterance's masked frames
            draw = _draw_excluding_self(rank, mask.sum(dim=1, keepdim=True), num_negatives, generator)
            # masked frames of each row in time order, then the rest (stable sort keeps time order)
            masked_times = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices  # (B, T)
            # rank -1 (unmasked frames before the first masked one) is clamped: those rows are replaced below
            times = masked_times.gather(1, draw.clamp(0, T - 1).view(B, -1)).view(B, T, num_negatives)
            groups.append(times + offsets[..., None])
    if cross_sample_negatives > 0:
        flat = mask.reshape(-1)
        rank = (flat.long().cumsum(dim=0) - 1).view(B, T)  # index among all masked frames of the batch
        draw = _draw_excluding_self(rank, flat.sum(), cross_sample_negatives, generator)
        masked_flat = torch.sort((~flat).to(torch.uint8), stable=True).indices  # (B * T,)
        groups.append(masked_flat[draw.clamp(0, B * T - 1)])
    indices = torch.cat(groups, dim=-1)  # (B, T, K)
    self_index = (offsets + pos)[..., None]  # (B, T, 1)
    return torch.where(mask[..., None], indices, self_index)


def gather_rows(frames: Tensor, index: Tensor) -> Tensor:
    """frames[index] for frames (N, D) and long index of any shape -> (*index.shape, D), with a
    gradient that does not depend on thread scheduling (exact resume needs bit-identical steps).

    Distractors repeat rows, so the backward sums many gradients into one row. On CPU,
    advanced indexing sums them with parallel atomic adds whose order (hence rounding) varies
    from run to run; index_select's backward (index_add_) sums in index order. On CUDA it is
    the other way round: index_add_ uses atomics, advanced indexing a sorted, ordered sum."""
    if frames.device.type == "cpu":
        return frames.index_select(0, index.reshape(-1)).view(*index.shape, frames.shape[-1])
    return frames[index]


def contrastive_logits(predicted: Tensor, positives: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """predicted, positives: (N, D); negatives: (N, K, D). Returns (N, 1 + K) cosine / temperature,
    positive first; a distractor equal to its positive gets -inf (fairseq, transformers)."""
    return candidate_logits(predicted, torch.cat([positives[:, None], negatives], dim=1), temperature)


def candidate_logits(predicted: Tensor, candidates: Tensor, temperature: float) -> Tensor:
    """contrastive_logits with candidates (N, 1 + K, D) = positive then distractors, as one
    gather of the targets gives them (no concatenation to copy forward and split backward)."""
    logits = F.cosine_similarity(predicted[:, None].float(), candidates.float(), dim=-1) / temperature
    same = (candidates[:, 1:] == candidates[:, :1]).all(dim=-1)  # (N, K)
    same = F.pad(same, (1, 0))  # never hide the positive itself
    return logits.masked_fill(same, float("-inf"))


def contrastive_loss(logits: Tensor) -> tuple[Tensor, Tensor]:
    """logits: (N, 1 + K), positive first. Returns (summed InfoNCE, number correct) where correct
    means the positive is the unique maximum (fairseq counts ties as wrong)."""
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    loss = F.cross_entropy(logits.float(), target, reduction="sum")
    with torch.no_grad():
        top = logits.argmax(dim=-1) == 0
        bottom = logits.argmin(dim=-1) == 0  # all logits equal: argmax and argmin both 0
        correct = (top & ~bottom).sum()
    return loss, correct


def diversity_loss(perplexity: Tensor, num_codevectors: int) -> Tensor:
    """(G * V - perplexity) / (G * V): 0 when every codebook entry is used equally."""
    return (num_codevectors - perplexity) / num_codevectors


def feature_penalty(features: Tensor, padding_mask: Tensor | None = None) -> Tensor:
    """Mean squared conv feature (fairseq: features_pen), over valid frames only.
    features: (B, T, C); padding_mask: bool (B, T), True = padding."""
    squares = features.float().pow(2)
    if padding_mask is None:
        return squares.mean()
    valid = (~padding_mask).to(squares.dtype)[..., None]  # (B, T, 1)
    return (squares * valid).sum() / (valid.sum() * features.shape[-1]).clamp(min=1.0)
