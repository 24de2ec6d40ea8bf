"""Prefix tuning (Li & Liang, 2021) for the SDPA self-attention of the encoder.

Each layer gets `prefix_length` learned key and value vectors that every
query may attend to in addition to the frames. During training the prefixes
are reparameterised through a small MLP (a (P, mlp_dim) table -> Linear ->
tanh -> Linear), which Li & Liang found much more stable than learning them
directly; `fold_prefixes` computes them once and drops the MLP for inference.

Plain prefix tuning changes the output from the first step (the prefixes
take attention mass). With `gate=True` (default) each head mixes plain
attention and prefix attention with a zero-initialised weight g:
  y = attn(q, K, V) + g * (attn(q, [P_k; K], [P_v; V]) - attn(q, K, V)),
so tuning starts at the identity and g = 1 is exactly Li & Liang.
Padding is handled by extending the key mask: prefixes are never padded.

WavLM (a `RelativeSelfAttention`): the prefix wrapper keeps the layer's gate
(`gru_rel_pos_linear`, `gru_rel_pos_const`) and, in the first layer, the shared
bias table (`rel_attn_embed`) under their own names, and adds the gated relative
position bias for frame keys as the plain attention does. A prefix key has no
position, so the bias table has no entry for it: prefix keys get bias 0 (their
score is q.k alone). With the gate at zero the layer is exactly the WavLM layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.models.encoder import RelativeSelfAttention, attention_mask
from speechssl.models.relative_position import gated_position_bias


@dataclass(frozen=True, kw_only=True)
class PrefixConfig:
    prefix_length: int = 16  # P: learned key/value vectors per layer
    mlp_dim: int | None = 256  # reparameterisation width; None: learn the prefixes directly
    gate: bool = True  # zero-initialised per-head gate: start as the identity
    init_std: float = 0.02  # of the prefix table

    def __post_init__(self) -> None:
        if self.prefix_length < 1:
            raise ValueError(f"prefix_length must be >= 1, found {self.prefix_length}")
        if self.mlp_dim is not None and self.mlp_dim < 1:
            raise ValueError(f"mlp_dim must be >= 1 or null, found {self.mlp_dim}")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be > 0, found {self.init_std}")


class PrefixEncoder(nn.Module):
    """() -> (P, 2 * inner): keys then values of one layer's prefix."""

    def __init__(
        self,
        prefix_length: int,
        inner_dim: int,
        *,
        mlp_dim: int | None,
        init_std: float,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.inner_dim = inner_dim
        width = mlp_dim if mlp_dim is not None else 2 * inner_dim
        self.embedding = nn.Parameter(
            torch.randn(prefix_length, width, device=device, dtype=dtype) * init_std
        )
        self.mlp: nn.Sequential | None = None
        if mlp_dim is not None:
            self.mlp = nn.Sequential(
                nn.Linear(mlp_dim, mlp_dim, device=device, dtype=dtype),
                nn.Tanh(),
                nn.Linear(mlp_dim, 2 * inner_dim, device=device, dtype=dtype),
            )

    def forward(self) -> Tensor:
        return self.embedding if self.mlp is None else self.mlp(self.embedding)

    @torch.no_grad()
    def fold(self) -> None:
        """Replace the MLP by the prefixes it computes now (Li & Liang drop it after training)."""
        if self.mlp is not None:
            self.embedding = nn.Parameter(self(), requires_grad=self.embedding.requires_grad)
            self.mlp = None


class PrefixSelfAttention(nn.Module):
    """SelfAttention (or WavLM's RelativeSelfAttention) with learned key/value prefixes. It holds
    the original attention's parameters under the same names (q_proj, k_proj, v_proj, out_proj;
    WavLM's gru_rel_pos_linear, gru_rel_pos_const and, in the first layer, rel_attn_embed), so
    their keys do not change."""

    def __init__(self, attention: nn.Module, config: PrefixConfig) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = (
            attention.num_heads,
            attention.head_dim,
            attention.dropout,
        )
        self.q_proj, self.k_proj = attention.q_proj, attention.k_proj
        self.v_proj, self.out_proj = attention.v_proj, attention.out_proj
        self.relative = isinstance(attention, RelativeSelfAttention)
        if self.relative:  # the same Parameter objects and names: the frozen keys stay
            self.gru_rel_pos_const = attention.gru_rel_pos_const
            self.gru_rel_pos_linear = attention.gru_rel_pos_linear
            if hasattr(attention, "rel_attn_embed"):  # the encoder reads layers[0].attention's table
                self.rel_attn_embed = attention.rel_attn_embed
            self.head_index = attention.head_index
        w = self.q_proj.weight
        self.prefix = PrefixEncoder(
            config.prefix_length,
            self.num_heads * self.head_dim,
            mlp_dim=config.mlp_dim,
            init_std=config.init_std,
            device=w.device,
            dtype=w.dtype,
        )
        self.gate = (
            nn.Parameter(torch.zeros(self.num_heads, device=w.device, dtype=w.dtype)) if config.gate else None
        )

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None = None, position_bias: Tensor | None = None
    ) -> Tensor:
        """x: (B, T, D); key_padding_mask: (B, T) bool, True = padded, or None; position_bias: WavLM's
        shared ungated (1, H_table, T, T) bias (only for a wrapped RelativeSelfAttention) or None."""
        B, T, _ = x.shape  # batch, frames, embed
        H, d = self.num_heads, self.head_dim

        def heads(t: Tensor, n: int) -> Tensor:
            return t.reshape(-1, n, H, d).transpose(1, 2)  # (B or 1, H, n, d)

        q, k, v = heads(self.q_proj(x), T), heads(self.k_proj(x), T), heads(self.v_proj(x), T)
        prefix = self.prefix().to(x.dtype)  # (P, 2 * H * d)
        P = prefix.shape[0]
        pk, pv = (heads(t, P).expand(B, H, P, d) for t in prefix.chunk(2, dim=-1))  # (B, H, P, d) each
        dropout = self.dropout if self.training else 0.0
        bias = None
        if position_bias is not None:
            if not self.relative:
                raise ValueError("a position bias was given to the prefix attention of a non-WavLM layer")
            bias = gated_position_bias(
                x, position_bias, self.gru_rel_pos_linear, self.gru_rel_pos_const, d, self.head_index
            ).to(q.dtype)  # (B, H, T, T): additive, as SelfAttention
        mask = attention_mask(key_padding_mask, bias)  # the frames' keys, as SelfAttention builds it
        prefix_mask = None  # prefix keys: always attended, no position (bias 0)
        if mask is not None:
            prefix_mask = F.pad(mask, (P, 0), value=0.0 if mask.is_floating_point() else True)
        y = F.scaled_dot_product_attention(
            q, torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2), attn_mask=prefix_mask, dropout_p=dropout
        )  # (B, H, T, d)
        if self.gate is not None:
            plain = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, H, T, d)
            y = plain + self.gate.to(x.dtype)[:, None, None] * (y - plain)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, H * d))


def add_prefixes(layers: nn.ModuleList, config: PrefixConfig) -> int:
    """Replace the attention of every EncoderLayer in `layers` (pruned ones excepted); returns how many."""
    count = 0
    for layer in layers:
        if layer.attention is not None:
            # a new module starts in training mode: follow the layer's (attention dropout)
            layer.attention = PrefixSelfAttention(layer.attention, config).train(layer.attention.training)
            count += 1
    return count


def fold_prefixes(module: nn.Module) -> int:
    """Fold every prefix MLP below `module` into its prefixes; returns how many."""
    encoders = [m for m in module.modules() if isinstance(m, PrefixEncoder) and m.mlp is not None]
    for m in encoders:
        m.fold()
    return len(encoders)
