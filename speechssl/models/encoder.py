"""Transformer encoder of wav2vec 2.0 / HuBERT, built from small parts.

Submodule names follow transformers' HubertModel / Wav2Vec2Model, so their
state dicts load as they are and fairseq import is a key mapping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.models.config import EncoderConfig

_ACTIVATIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "swish": F.silu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
}


class FeatureProjection(nn.Module):
    """LayerNorm over frontend channels -> Linear to embed_dim -> dropout (fairseq dropout_input)."""

    def __init__(self, in_dim: int, embed_dim: int, dropout: float, eps: float = 1e-5) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_dim, eps=eps)
        self.projection = nn.Linear(in_dim, embed_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, T, C) -> (projected (B, T, D), normed (B, T, C)); the normed features are the
        quantizer input of wav2vec 2.0 (transformers' `extract_features`)."""
        normed = self.layer_norm(x)
        return self.dropout(self.projection(normed)), normed


class ConvPositionalEmbedding(nn.Module):
    """Grouped, weight-normed conv over time + GELU: the relative position signal of wav2vec 2.0.

    An even kernel yields one extra frame, which is dropped at the end (fairseq SamePad).
    The weight norm uses torch parametrizations (dim=2), so the state-dict keys are
    `conv.parametrizations.weight.original0/original1` as in transformers 5.x.
    """

    def __init__(self, embed_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        conv = nn.Conv1d(embed_dim, embed_dim, kernel_size=kernel, padding=kernel // 2, groups=groups)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.num_pad_remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, D) -> positional signal (B, T, D)."""
        y = self.conv(x.transpose(1, 2))  # (B, D, T + even)
        if self.num_pad_remove:
            y = y[:, :, : -self.num_pad_remove]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention through F.scaled_dot_product_attention.

    Padding is a boolean key mask (never a dense float -1e4 mask), and no mask at
    all when nothing is padded, so SDPA can pick its fused kernels.
    `num_heads` may be smaller than embed_dim / head_dim (pruned heads).
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, inner)
        self.k_proj = nn.Linear(embed_dim, inner)
        self.v_proj = nn.Linear(embed_dim, inner)
        self.out_proj = nn.Linear(inner, embed_dim)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """x: (B, T, D); key_padding_mask: (B, T) bool, True = padded, or None."""
        B, T, _ = x.shape  # batch, frames, embed
        H, d = self.num_heads, self.head_dim

        def heads(t: Tensor) -> Tensor:
            return t.view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        attn_mask = None
        if key_padding_mask is not None:
            attn_mask = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, T): True = attend
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, d)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, H * d))


class FeedForward(nn.Module):
    """Linear -> activation -> dropout (activation_dropout) -> Linear -> dropout."""

    def __init__(
        self, embed_dim: int, ffn_dim: int, activation: str, activation_dropout: float, dropout: float
    ):
        super().__init__()
        self.intermediate_dense = nn.Linear(embed_dim, ffn_dim)
        self.intermediate_dropout = nn.Dropout(activation_dropout)
        self.output_dense = nn.Linear(ffn_dim, embed_dim)
        self.output_dropout = nn.Dropout(dropout)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = self.intermediate_dropout(_ACTIVATIONS[self.activation](self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class EncoderLayer(nn.Module):
    """One transformer block, post-LN (Base) or pre-LN (Large, "stable layer norm").

    `attention` or `feed_forward` may be None: a pruned-away block (its residual remains).
    """

    def __init__(
        self,
        attention: SelfAttention | None,
        feed_forward: FeedForward | None,
        *,
        embed_dim: int,
        norm_first: bool,
        dropout: float,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.attention = attention
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.feed_forward = feed_forward
        self.final_layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.norm_first = norm_first

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        """x: (B, T, D) -> (B, T, D)."""
        if self.norm_first:
            if self.attention is not None:
                x = x + self.dropout(self.attention(self.layer_norm(x), key_padding_mask))
            if self.feed_forward is not None:
                x = x + self.feed_forward(self.final_layer_norm(x))
            return x
        if self.attention is not None:
            x = x + self.dropout(self.attention(x, key_padding_mask))
        x = self.layer_norm(x)
        if self.feed_forward is not None:
            x = x + self.feed_forward(x)
        return self.final_layer_norm(x)


class TransformerEncoder(nn.Module):
    """Positional conv + transformer layers with LayerDrop.

    Returns every hidden state: the input of the first layer, then each layer's
    output. For pre-LN models the final LayerNorm is applied to the last hidden
    state only in `last_hidden_state`, not in the list (as transformers 5.x and
    fairseq's layer_results do).
    """

    def __init__(
        self,
        pos_conv_embed: ConvPositionalEmbedding,
        layers: list[EncoderLayer],
        *,
        embed_dim: int,
        layer_norm_first: bool,
        dropout: float,
        layerdrop: float,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.pos_conv_embed = pos_conv_embed
        self.layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(layers)
        self.layer_norm_first = layer_norm_first
        self.layerdrop = layerdrop

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, *, num_layers: int | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        """x: (B, T, D); padding_mask: (B, T) bool, True = pad, or None when nothing is padded
        (pass None then: without a mask SDPA may use its fused kernels; the caller knows from
        the lengths, see SSLModel.frontend_forward, so no device sync is spent finding out).
        `num_layers` stops early (feature extraction from a lower layer).
        Returns (last_hidden_state, hidden_states)."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)  # padding must not leak through the pos conv
        x = x + self.pos_conv_embed(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        hidden_states = [x]
        for i, layer in enumerate(self.layers):
            if num_layers is not None and i >= num_layers:
                break
            if self.training and self.layerdrop > 0.0 and torch.rand(()) < self.layerdrop:
                hidden_states.append(x)  # skipped layer: keep one entry per layer
                continue
            x = layer(x, padding_mask)
            hidden_states.append(x)
        last = self.layer_norm(x) if self.layer_norm_first else x
        return last, hidden_states


def build_encoder(config: EncoderConfig) -> TransformerEncoder:
    """The one place where an EncoderConfig becomes modules."""
    D = config.embed_dim
    layers = []
    for i in range(config.num_layers):
        heads, ffn = config.heads_of(i), config.ffn_dim_of(i)
        attention = SelfAttention(D, heads, config.head_dim, config.attention_dropout) if heads else None
        feed_forward = (
            FeedForward(D, ffn, config.activation, config.activation_dropout, config.dropout) if ffn else None
        )
        layers.append(
            EncoderLayer(
                attention,
                feed_forward,
                embed_dim=D,
                norm_first=config.layer_norm_first,
                dropout=config.dropout,
                eps=config.layer_norm_eps,
            )
        )
    return TransformerEncoder(
        ConvPositionalEmbedding(D, config.pos_conv_kernel, config.pos_conv_groups),
        layers,
        embed_dim=D,
        layer_norm_first=config.layer_norm_first,
        dropout=config.dropout,
        layerdrop=config.layerdrop,
        eps=config.layer_norm_eps,
    )
