"""Task heads (light, as SUPERB): frame-level CTC heads, pooled classifiers, an
x-vector speaker embedder and the additive-margin softmax loss.

Frame-level heads map ((B, T, D), lengths) -> ((B, T, V), lengths); pooled heads
map ((B, T, D), lengths) -> (B, V) (or a tuple of (B, V_k) per slot).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.models.frontends import lengths_to_padding_mask


def masked_mean(x: Tensor, lengths: Tensor) -> Tensor:
    """Mean over valid frames: (B, T, D) -> (B, D)."""
    valid = (~lengths_to_padding_mask(lengths, x.shape[1])).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    return (x * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)


class LinearCTCHead(nn.Module):
    """PR: one linear layer per frame (SUPERB's linear probe for phonetic content)."""

    def __init__(self, input_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.out = nn.Linear(input_dim, vocab_size)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.out(x), lengths  # (B, T, V)


class BiLSTMCTCHead(nn.Module):
    """ASR: projection, a stack of bidirectional LSTMs, then a linear layer to the vocabulary."""

    def __init__(
        self,
        input_dim: int,
        vocab_size: int,
        *,
        hidden_dim: int = 256,
        num_layers: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(input_dim, hidden_dim)
        self.lstm = nn.LSTM(
            hidden_dim,
            hidden_dim,
            num_layers=num_layers,
            bidirectional=True,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden_dim, vocab_size)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = self.proj(x)  # (B, T, H)
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False
        )
        y, _ = self.lstm(packed)
        y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])  # (B, T, 2H)
        return self.out(self.dropout(y)), lengths


class MeanPoolClassifier(nn.Module):
    """KS / SID: frame projection, mean over valid frames, one linear layer per output.

    num_classes: an int (one output) or a sequence (IC: one head per slot, sharing the pooling)."""

    def __init__(self, input_dim: int, num_classes: int | Sequence[int], *, hidden_dim: int = 256) -> None:
        super().__init__()
        self.proj = nn.Linear(input_dim, hidden_dim)
        sizes = [num_classes] if isinstance(num_classes, int) else list(num_classes)
        self.single = isinstance(num_classes, int)
        self.outs = nn.ModuleList(nn.Linear(hidden_dim, n) for n in sizes)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor | tuple[Tensor, ...]:
        pooled = masked_mean(self.proj(x), lengths)  # (B, H)
        logits = tuple(out(pooled) for out in self.outs)  # each (B, V_k)
        return logits[0] if self.single else logits


class TDNNLayer(nn.Module):
    """Dilated 1-d convolution + ReLU + BatchNorm over time (an x-vector frame layer)."""

    def __init__(self, input_dim: int, output_dim: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(
            input_dim, output_dim, kernel_size, dilation=dilation, padding=dilation * (kernel_size - 1) // 2
        )
        self.norm = nn.BatchNorm1d(output_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(F.relu(self.conv(x)))  # (B, C, T), same T (odd kernels)


class StatisticsPooling(nn.Module):
    """Mean and standard deviation over valid frames: (B, C, T) -> (B, 2C)."""

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        valid = (~lengths_to_padding_mask(lengths, x.shape[-1])).unsqueeze(1).to(x.dtype)  # (B, 1, T)
        count = valid.sum(dim=-1).clamp(min=1.0)  # (B, 1)
        mean = (x * valid).sum(dim=-1) / count  # (B, C)
        var = ((x - mean.unsqueeze(-1)).pow(2) * valid).sum(dim=-1) / count
        return torch.cat([mean, var.clamp(min=1e-5).sqrt()], dim=-1)


class XVectorHead(nn.Module):
    """ASV: TDNN frame layers (context 5, 3 dilated by 2, 3 dilated by 3, then 1x1),
    statistics pooling and a linear embedding layer (Snyder et al. 2018, narrowed)."""

    def __init__(self, input_dim: int, *, channels: int = 256, embed_dim: int = 128) -> None:
        super().__init__()
        self.frames = nn.ModuleList(
            [
                TDNNLayer(input_dim, channels, 5, 1),
                TDNNLayer(channels, channels, 3, 2),
                TDNNLayer(channels, channels, 3, 3),
                TDNNLayer(channels, channels, 1, 1),
            ]
        )
        self.pool = StatisticsPooling()
        self.embed = nn.Linear(2 * channels, embed_dim)
        self.embed_dim = embed_dim

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, D) -> speaker embeddings (B, embed_dim)."""
        h = x.transpose(1, 2)  # (B, D, T)
        for layer in self.frames:
            h = layer(h)
        return self.embed(self.pool(h, lengths))


class AdditiveMarginSoftmax(nn.Module):
    """AM-softmax loss (Wang et al. 2018): cross-entropy over s * (cos(theta) - m * [target])."""

    def __init__(self, embed_dim: int, num_classes: int, *, margin: float = 0.2, scale: float = 30.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, embed_dim) * embed_dim**-0.5)
        self.margin, self.scale = margin, scale

    def logits(self, embeddings: Tensor) -> Tensor:
        """Cosine similarity to each class centre: (B, E) -> (B, V)."""
        return F.normalize(embeddings, dim=-1) @ F.normalize(self.weight, dim=-1).T

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (loss, cosine logits without margin)."""
        cosine = self.logits(embeddings)
        margin = F.one_hot(labels, cosine.shape[-1]).to(cosine.dtype) * self.margin
        return F.cross_entropy(self.scale * (cosine - margin), labels), cosine
