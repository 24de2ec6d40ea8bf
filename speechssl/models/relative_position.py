"""WavLM's gated relative position bias (Chen et al., 2022; unilm WavLM, transformers WavLMAttention).

One bias table (`rel_attn_embed`: bucket -> one value per head) lives in the first
layer's attention and is shared by all layers. The encoder looks it up once per
forward (`RelativePositionBias`), giving an ungated (1, H, T, T) bias; every layer
then scales it per query frame and head with a gate computed from its own attention
input (`RelativeSelfAttention.gated_bias`, the GRU-style gate of the paper), and
passes the result to `F.scaled_dot_product_attention` as an additive float mask,
merged with key padding (-inf), so padded batches work and an unpadded batch needs
no padding mask at all.

Everything is traceable (`torch.jit.trace`, `torch.onnx.export`): the bucket
arithmetic uses tensor ops on `arange(T)` only; the Python numbers involved are the
config's constants.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# WavLM's shared bias table, under the attention module of the layer that holds it
# (`encoder.layers.<TransformerEncoder.table_layer>.attention.<TABLE_KEY>`).
TABLE_KEY = "rel_attn_embed.weight"


def relative_position_buckets(num_frames: int, num_buckets: int, max_distance: int, device=None) -> Tensor:
    """(T, T) long bucket of every (query, key) pair, bidirectional as unilm / transformers compute it:
    half of the buckets for keys after the query, half for keys before it (and the same frame);
    within each half, distances below a quarter of `num_buckets` get one bucket each, larger
    ones share log-spaced buckets up to `max_distance` (farther ones the last bucket)."""
    positions = torch.arange(num_frames, dtype=torch.long, device=device)
    relative = positions[None, :] - positions[:, None]  # (T, T): key - query
    half = num_buckets // 2
    buckets = (relative > 0).to(torch.long) * half
    distance = relative.abs()
    max_exact = half // 2
    # clamp(min=1): log(0) never happens (distance 0 is exact anyway), keeps exports free of -inf casts
    scaled = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + scaled * (half - max_exact)).to(torch.long)
    large = torch.clamp(large, max=half - 1)
    return buckets + torch.where(distance < max_exact, distance, large)


class RelativePositionBias(nn.Module):
    """Looks up the shared bias table of the first layer: (T,) frames -> ungated (1, H, T, T) bias.

    Holds no parameters of its own: the table stays at its transformers key
    (`encoder.layers.0.attention.rel_attn_embed.weight`; in a pruned model whose layer 0 lost its
    attention block, in the first layer that still attends); this module only knows the bucketing."""

    def __init__(self, num_buckets: int, max_distance: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance

    def forward(self, table: nn.Embedding, num_frames: int, dtype: torch.dtype) -> Tensor:
        device = table.weight.device
        buckets = relative_position_buckets(num_frames, self.num_buckets, self.max_distance, device)
        return table(buckets).permute(2, 0, 1).unsqueeze(0).to(dtype)  # (1, H_table, T, T)


def gated_position_bias(
    x: Tensor,
    position_bias: Tensor,
    linear: nn.Linear,
    const: Tensor,
    head_dim: int,
    head_index: list[int] | None = None,
) -> Tensor:
    """WavLM's GRU-style gate: x (B, T, D) attention input, position_bias (1, H_table, T, T) the
    shared ungated bias, linear (head_dim -> 8, transformers `gru_rel_pos_linear`), const
    (1, H, 1, 1) (`gru_rel_pos_const`) -> (B, H, T, T) additive bias of this layer.

    The gate of head h reads chunk h of the input split into head_dim-wide chunks, one per
    ORIGINAL head; `head_index` (pruned layers) lists the original head of each kept head and
    selects both its input chunk and its column of the shared table (None = all, in order)."""
    B, T, _ = x.shape  # batch, frames, embed
    chunks = x.view(B, T, -1, head_dim)  # (B, T, H_orig, d): one chunk per original head
    if head_index is not None:
        chunks = chunks[:, :, head_index]  # (B, T, H, d)
        position_bias = position_bias[:, head_index]  # (1, H, T, T)
    gate = linear(chunks.transpose(1, 2))  # (B, H, T, 8)
    gate = torch.sigmoid(gate.view(B, gate.shape[1], T, 2, 4).sum(-1))  # (B, H, T, 2)
    gate_a, gate_b = gate[..., :1], gate[..., 1:]  # (B, H, T, 1) each
    gate = gate_a * (gate_b * const - 1.0) + 2.0  # (B, H, T, 1)
    return gate * position_bias  # (B, H, T, T)
