"""Gumbel-softmax product quantizer of wav2vec 2.0 (fairseq: GumbelVectorQuantizer).

Each frame picks one entry from each of `num_groups` codebooks of `num_vars` entries;
the chosen entries are concatenated. Training uses straight-through hard Gumbel-softmax
(one-hot forward, soft gradient) at a temperature annealed per update; evaluation takes
the argmax. Parameter names match transformers' Wav2Vec2GumbelVectorQuantizer
(`codevectors`, `weight_proj`) so weights map one to one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True, kw_only=True)
class QuantizerConfig:
    """Codebook sizes and temperature schedule (fairseq names in comments)."""

    num_groups: int = 2  # fairseq: latent_groups; transformers: num_codevector_groups
    num_vars: int = 320  # fairseq: latent_vars; transformers: num_codevectors_per_group
    codevector_dim: int = 256  # fairseq: latent_dim; transformers: codevector_dim
    max_temp: float = 2.0  # fairseq: latent_temp[0]
    min_temp: float = 0.5  # fairseq: latent_temp[1]
    temp_decay: float = 0.999995  # fairseq: latent_temp[2], per update

    def __post_init__(self) -> None:
        if self.num_groups < 1 or self.num_vars < 1:
            raise ValueError(
                f"num_groups and num_vars must be >= 1, found {self.num_groups}, {self.num_vars}"
            )
        if self.codevector_dim % self.num_groups:
            raise ValueError(
                f"codevector_dim ({self.codevector_dim}) is not divisible by num_groups ({self.num_groups})"
            )
        if not 0.0 < self.min_temp <= self.max_temp:
            raise ValueError(f"need 0 < min_temp <= max_temp, found {self.min_temp}, {self.max_temp}")
        if not 0.0 < self.temp_decay <= 1.0:
            raise ValueError(f"temp_decay must be in (0, 1], found {self.temp_decay}")


class QuantizerOutput(NamedTuple):
    codevectors: Tensor  # (..., codevector_dim) quantized frames
    codes: Tensor  # (..., num_groups) long: chosen entry per group
    code_perplexity: Tensor  # () perplexity of the hard code histogram, summed over groups
    prob_perplexity: Tensor  # () perplexity of the mean softmax, summed over groups (differentiable)


def perplexity(probs: Tensor, weights: Tensor | None = None) -> Tensor:
    """probs: (N, G, V) distributions; weights: (N,) frame weights (e.g. the time mask).
    Returns exp(entropy) of the (weighted) mean distribution, summed over groups."""
    if weights is None:
        marginal = probs.mean(dim=0)  # (G, V)
    else:
        weights = weights.to(probs.dtype)
        marginal = (probs * weights[:, None, None]).sum(dim=0) / weights.sum().clamp(min=1.0)
    return torch.exp(-torch.xlogy(marginal, marginal).sum(dim=-1)).sum()


def gumbel_softmax_hard(logits: Tensor, tau: float, generator: torch.Generator | None = None) -> Tensor:
    """Straight-through Gumbel-softmax over the last dim: one-hot forward, soft gradient.
    Own version of F.gumbel_softmax(hard=True) so noise can come from an explicit generator."""
    gumbels = -torch.empty_like(logits).exponential_(generator=generator).log()
    soft = torch.softmax((logits + gumbels) / tau, dim=-1)
    hard = F.one_hot(soft.argmax(dim=-1), logits.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


def annealed_temperature(num_updates: int, max_temp: float, min_temp: float, temp_decay: float) -> float:
    """fairseq's schedule: max(max_temp * temp_decay ** num_updates, min_temp)."""
    return max(max_temp * temp_decay**num_updates, min_temp)


class GumbelVectorQuantizer(nn.Module):
    """input_dim: channels of the frames to quantize (the conv feature width)."""

    def __init__(self, input_dim: int, config: QuantizerConfig) -> None:
        super().__init__()
        self.config = config
        G, V = config.num_groups, config.num_vars  # groups, entries per group
        self.codevectors = nn.Parameter(torch.empty(1, G * V, config.codevector_dim // G))
        self.weight_proj = nn.Linear(input_dim, G * V)
        self.temperature = config.max_temp
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """fairseq init: uniform codebook, N(0, 1) projection, zero bias."""
        nn.init.uniform_(self.codevectors)
        nn.init.normal_(self.weight_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.weight_proj.bias)

    @property
    def num_codevectors(self) -> int:
        return self.config.num_groups * self.config.num_vars

    def set_num_updates(self, num_updates: int) -> None:
        """Anneal the Gumbel temperature to its value after `num_updates` optimizer steps."""
        c = self.config
        self.temperature = annealed_temperature(num_updates, c.max_temp, c.min_temp, c.temp_decay)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> QuantizerOutput:
        """x: (..., input_dim) frames; mask: bool (...) frames that count for the perplexities
        (fairseq and transformers count only masked frames). Returns QuantizerOutput."""
        G, V = self.config.num_groups, self.config.num_vars
        lead = x.shape[:-1]
        logits = self.weight_proj(x).reshape(-1, G, V).float()  # (N, G, V)
        weights = None if mask is None else mask.reshape(-1)
        codes = logits.argmax(dim=-1)  # (N, G)
        with torch.no_grad():
            hard = F.one_hot(codes, V).to(logits.dtype)  # (N, G, V)
            code_ppl = perplexity(hard, weights)
        prob_ppl = perplexity(torch.softmax(logits, dim=-1), weights)
        if self.training:
            onehot = gumbel_softmax_hard(logits, self.temperature, generator)
        else:
            onehot = hard
        onehot = onehot.to(self.codevectors.dtype)
        book = self.codevectors.view(G, V, -1)  # (G, V, d)
        quantized = torch.einsum("ngv,gvd->ngd", onehot, book)  # (N, G, d): one entry per group
        quantized = quantized.reshape(*lead, -1)  # (..., G * d)
        return QuantizerOutput(quantized, codes.reshape(*lead, G), code_ppl, prob_ppl)
