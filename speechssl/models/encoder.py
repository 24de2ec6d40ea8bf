"""Transformer encoder of wav2vec 2.0 / HuBERT / WavLM / UniSpeech-SAT / data2vec-audio, built
from small parts.

Submodule names follow transformers' HubertModel / Wav2Vec2Model / WavLMModel /
Data2VecAudioModel, so their state dicts load as they are and fairseq import is a key mapping.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.models.config import EncoderConfig
from speechssl.models.fft_conv import fft_grouped_conv
from speechssl.models.packing import Packing
from speechssl.models.relative_position import RelativePositionBias, gated_position_bias

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
        if x.is_cuda:  # the same convolution through the FFT: 5.5x faster on an H200 (fft_conv)
            return F.gelu(fft_grouped_conv(x, self.conv.weight, self.conv.bias, self.conv.groups))
        return F.gelu(self.direct(x))

    def direct(self, x: Tensor) -> Tensor:
        """The conv as nn.Conv1d computes it, before the GELU: the CPU's path and the FFT's reference."""
        y = self.conv(x.transpose(1, 2))  # (B, D, T + even)
        if self.num_pad_remove:
            y = y[:, :, : -self.num_pad_remove]
        return y.transpose(1, 2)


class LayerNormConvPositionalEmbedding(nn.Module):
    """data2vec-audio's positional encoder: `depth` x (grouped conv -> non-affine LayerNorm -> GELU),
    no weight norm (transformers Data2VecAudioPositionalConvEmbedding; fairseq conv_pos_depth).

    Keys `layers.{i}.conv.weight/bias` as in transformers; the LayerNorms have no parameters
    (eps 1e-5, as both fairseq and transformers build them). An even kernel drops its extra frame.
    """

    def __init__(self, embed_dim: int, kernel: int, groups: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_PositionalConvLayer(embed_dim, kernel, groups) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, D) -> positional signal (B, T, D)."""
        y = x.transpose(1, 2)  # (B, D, T)
        for layer in self.layers:
            y = layer(y)
        return y.transpose(1, 2)


class _PositionalConvLayer(nn.Module):
    def __init__(self, embed_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(embed_dim, embed_dim, kernel_size=kernel, padding=kernel // 2, groups=groups)
        self.layer_norm = nn.LayerNorm(embed_dim, elementwise_affine=False)
        self.num_pad_remove = 1 if kernel % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, D, T) -> (B, D, T)."""
        y = self.conv(x)  # (B, D, T + even)
        if self.num_pad_remove:
            y = y[:, :, : -self.num_pad_remove]
        return F.gelu(self.layer_norm(y.transpose(1, 2)).transpose(1, 2))


def attention_mask(key_padding_mask: Tensor | None, bias: Tensor | None) -> Tensor | None:
    """SDPA's `attn_mask` for key padding (B, T) (True = padded) and an additive float bias
    (B or 1, H, T, T): the bias with -inf at padded keys; without a bias a boolean (B, 1, 1, T)
    keep-mask; None when there is neither (so SDPA may pick its fused kernels)."""
    if bias is not None:
        if key_padding_mask is None:
            return bias
        return bias.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    if key_padding_mask is not None:
        return ~key_padding_mask[:, None, None, :]  # True = attend
    return None


class SelfAttention(nn.Module):
    """Multi-head self-attention through F.scaled_dot_product_attention.

    Padding is a boolean key mask (never a dense float -1e4 mask), and no mask at
    all when nothing is padded, so SDPA can pick its fused kernels. With an additive
    `attn_bias` (WavLM's relative positions) padding goes into that float mask as -inf.
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

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_bias: Tensor | None = None,
        *,
        packing: Packing | None = None,
    ) -> Tensor:
        """x: (B, T, D); key_padding_mask: (B, T) bool, True = padded, or None;
        attn_bias: additive float bias (B or 1, H, T, T) or None. With `packing`, x is the
        packed valid frames (N, D) and each utterance attends to its own frames."""
        if packing is not None:
            return self._packed(x, packing)
        B, T, _ = x.shape  # batch, frames, embed
        H, d = self.num_heads, self.head_dim

        def heads(t: Tensor) -> Tensor:
            return t.view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)  # (B or 1, H, T, T); autocast may have cast q
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attention_mask(key_padding_mask, attn_bias),
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, H, T, d)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, H * d))

    def _packed(self, x: Tensor, packing: Packing) -> Tensor:
        """x: (N, D) packed frames -> (N, D), each utterance attending to its own (Packing.attention)."""
        N, H, d = x.shape[0], self.num_heads, self.head_dim
        q, k, v = (proj(x).view(N, H, d) for proj in (self.q_proj, self.k_proj, self.v_proj))
        y = packing.attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)  # (N, H, d)
        return self.out_proj(y.reshape(N, H * d))


class RelativeSelfAttention(SelfAttention):
    """SelfAttention plus WavLM's gate on the shared relative position bias (and, in the first
    layer, the bias table). Parameter names are transformers' WavLMAttention's:
    `gru_rel_pos_linear` (head_dim -> 8, shared by the heads), `gru_rel_pos_const` (1, H, 1, 1),
    and in the first layer only `rel_attn_embed` (num_buckets, H_table).

    Pruned heads (DPHuBERT): `head_index` lists, for each head this layer keeps, its index among
    the original heads (None = all, in order). It selects the head's column of the shared table
    (which keeps every original head: other layers may still use a head this one drops) and the
    chunk of the layer input that the head's gate reads: the gate splits the input
    (B, T, embed_dim) into embed_dim // head_dim chunks, one per ORIGINAL head, whatever the
    layer's head count. Slice `gru_rel_pos_const` (per kept head) with q/k/v; `gru_rel_pos_linear`
    is shared and stays. A prefix-tuning wrapper calls `gated_bias` and pads its result with zeros
    for the prefix keys (no relative position to a learned prefix).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        dropout: float = 0.0,
        *,
        num_buckets: int = 0,
        table_heads: int = 0,
    ) -> None:
        super().__init__(embed_dim, num_heads, head_dim, dropout)
        self.gru_rel_pos_const = nn.Parameter(torch.ones(1, num_heads, 1, 1))
        self.gru_rel_pos_linear = nn.Linear(head_dim, 8)
        if num_buckets:  # the first layer holds the table shared by all layers
            self.rel_attn_embed = nn.Embedding(num_buckets, table_heads)
        self.head_index: list[int] | None = None

    def gated_bias(self, x: Tensor, position_bias: Tensor) -> Tensor:
        """x: (B, T, D) attention input; position_bias: (1, H_table, T, T) -> (B, H, T, T)."""
        return gated_position_bias(
            x, position_bias, self.gru_rel_pos_linear, self.gru_rel_pos_const, self.head_dim, self.head_index
        )

    def forward(
        self, x: Tensor, key_padding_mask: Tensor | None = None, position_bias: Tensor | None = None
    ) -> Tensor:
        """x: (B, T, D); key_padding_mask: (B, T) bool, True = padded, or None; position_bias: the
        encoder's ungated (1, H_table, T, T) bias (None: attention without positions)."""
        bias = None if position_bias is None else self.gated_bias(x, position_bias)
        return super().forward(x, key_padding_mask, bias)


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

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None = None,
        position_bias: Tensor | None = None,
        *,
        packing: Packing | None = None,
    ) -> Tensor:
        """x: (B, T, D) -> (B, T, D); position_bias: WavLM's shared ungated bias or None.
        With `packing`: x is (N, D), the packed valid frames (speechssl.models.packing)."""
        if self.norm_first:
            if self.attention is not None:
                y = self._attend(self.layer_norm(x), key_padding_mask, position_bias, packing)
                x = x + self.dropout(y)
            if self.feed_forward is not None:
                x = x + self.feed_forward(self.final_layer_norm(x))
            return x
        if self.attention is not None:
            x = x + self.dropout(self._attend(x, key_padding_mask, position_bias, packing))
        x = self.layer_norm(x)
        if self.feed_forward is not None:
            x = x + self.feed_forward(x)
        return self.final_layer_norm(x)

    def _attend(
        self,
        x: Tensor,
        key_padding_mask: Tensor | None,
        position_bias: Tensor | None,
        packing: Packing | None,
    ) -> Tensor:
        # Without a bias the two-argument call, so attention wrappers of the other families
        # (prefix tuning) need not know about relative positions, nor, unpacked, about packing.
        if packing is not None:
            return self.attention(x, packing=packing)
        if position_bias is None:
            return self.attention(x, key_padding_mask)
        return self.attention(x, key_padding_mask, position_bias)


class TransformerEncoder(nn.Module):
    """Positional conv + transformer layers with LayerDrop (+ WavLM's relative position bias,
    looked up once per forward from the first layer's table and shared by all layers).

    Returns every hidden state: the input of the first layer, then each layer's
    output. For pre-LN models the final LayerNorm is applied to the last hidden
    state only in `last_hidden_state`, not in the list (as transformers 5.x and
    fairseq's layer_results do).
    """

    def __init__(
        self,
        pos_conv_embed: nn.Module,
        layers: list[EncoderLayer],
        *,
        embed_dim: int,
        layer_norm_first: bool,
        dropout: float,
        layerdrop: float,
        eps: float = 1e-5,
        relative_position: RelativePositionBias | None = None,
    ) -> None:
        super().__init__()
        # a module without parameters: the table stays in the first layer that attends
        # (layers.0.attention.rel_attn_embed unless pruning removed that attention block)
        self.relative_position = relative_position
        self.table_layer = next(
            (i for i, layer in enumerate(layers) if hasattr(layer.attention, "rel_attn_embed")), 0
        )
        self.pos_conv_embed = pos_conv_embed
        self.layer_norm = nn.LayerNorm(embed_dim, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(layers)
        self.layer_norm_first = layer_norm_first
        self.layerdrop = layerdrop

    def position_bias(self, x: Tensor) -> Tensor | None:
        """WavLM: the ungated relative position bias (1, H, T, T) for x (B, T, D) that every layer
        takes as `position_bias` (None for the other families). Code that runs the layers itself
        (graph export) passes it on: `layer(x, padding_mask, encoder.position_bias(x))`."""
        if self.relative_position is None:
            return None
        table = self.layers[self.table_layer].attention.rel_attn_embed
        return self.relative_position(table, x.shape[1], x.dtype)

    def check_packable(self) -> None:
        """Padding-free layers need plain SelfAttention (LoRA and adapters wrap its parts and are
        fine): not WavLM's per-frame-pair position bias, nor a tuning wrapper of the module."""
        if self.relative_position is not None:
            raise ValueError(
                "padding-free steps need attention without a position bias; WavLM's relative "
                "position bias is per pair of frames of a padded batch"
            )
        for i, layer in enumerate(self.layers):
            if layer.attention is not None and type(layer.attention) is not SelfAttention:
                raise ValueError(
                    f"padding-free steps need plain attention; layer {i} has {type(layer.attention).__name__}"
                )

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        *,
        num_layers: int | None = None,
        packing: Packing | None = None,
        hidden_states: bool = True,
    ) -> tuple[Tensor, list[Tensor]]:
        """x: (B, T, D); padding_mask: (B, T) bool, True = pad, or None when nothing is padded
        (pass None then: without a mask SDPA may use its fused kernels; the caller knows from
        the lengths, see SSLModel.frontend_forward, so no device sync is spent finding out).
        `num_layers` stops early (feature extraction from a lower layer). `packing`: the layers
        run padding-free on the packed valid frames (the outputs are zero at padded frames).
        `hidden_states=False` returns no hidden states: packed, each would be unpacked into a
        padded copy that a masked-prediction step never reads.
        Returns (last_hidden_state, hidden_states)."""
        if packing is not None:
            self.check_packable()
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)  # padding must not leak through the pos conv
        x = x + self.pos_conv_embed(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        position_bias = self.position_bias(x)  # once per forward
        if packing is not None:
            x = packing.pack(x)  # (N, D)
        states = [x]
        for i, layer in enumerate(self.layers):
            if num_layers is not None and i >= num_layers:
                break
            if self.training and self.layerdrop > 0.0 and torch.rand(()) < self.layerdrop:
                states.append(x)  # skipped layer: keep one entry per layer
                continue
            x = layer(x, packing=packing) if packing is not None else layer(x, padding_mask, position_bias)
            states.append(x)
        last = self.layer_norm(x) if self.layer_norm_first else x
        if not hidden_states:
            states = []
        if packing is not None:
            return packing.unpack(last), [packing.unpack(h) for h in states]
        return last, states


def build_encoder(config: EncoderConfig) -> TransformerEncoder:
    """The one place where an EncoderConfig becomes modules."""
    D = config.embed_dim
    # WavLM's shared bias table lives in the first layer that attends (layer 0 unless pruned away);
    # without any attention block there is nothing to bias
    attending = [i for i in range(config.num_layers) if config.heads_of(i)]
    buckets = config.relative_position_buckets if attending else 0
    layers = []
    for i in range(config.num_layers):
        heads, ffn = config.heads_of(i), config.ffn_dim_of(i)
        attention: SelfAttention | None = None
        if heads and buckets:
            attention = RelativeSelfAttention(
                D, heads, config.head_dim, config.attention_dropout,
                num_buckets=buckets if i == attending[0] else 0, table_heads=config.num_heads,
            )  # fmt: skip
            if config.layer_head_index is not None:
                attention.head_index = list(config.layer_head_index[i])
        elif heads:
            attention = SelfAttention(D, heads, config.head_dim, config.attention_dropout)
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
    if config.pos_conv_type == "layer_norm":
        pos_conv: nn.Module = LayerNormConvPositionalEmbedding(
            D, config.pos_conv_kernel, config.pos_conv_groups, config.pos_conv_depth
        )
    else:
        pos_conv = ConvPositionalEmbedding(D, config.pos_conv_kernel, config.pos_conv_groups)
    relative = None
    if buckets:
        relative = RelativePositionBias(buckets, config.relative_position_max_distance)
    return TransformerEncoder(
        pos_conv,
        layers,
        embed_dim=D,
        layer_norm_first=config.layer_norm_first,
        dropout=config.dropout,
        layerdrop=config.layerdrop,
        eps=config.layer_norm_eps,
        relative_position=relative,
    )
