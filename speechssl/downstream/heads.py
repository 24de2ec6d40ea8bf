"""Task heads as s3prl's SUPERB experts: frame-level CTC heads (PR: projector + linear, ASR:
BiLSTMs with SpecAugment), pooled classifiers, an x-vector speaker embedder and the
additive-margin softmax loss. `LinearCTCHead` is fine-tuning's single linear layer.

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
    """One linear layer per frame: CTC fine-tuning's head (fairseq w2v_encoder.proj)."""

    def __init__(self, input_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.out = nn.Linear(input_dim, vocab_size)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.out(x), lengths  # (B, T, V)


class ProjectedCTCHead(nn.Module):
    """PR as SUPERB: Linear(D, projector_dim), then the linear CTC output layer (s3prl ctc expert:
    `projector` + FrameLevel without hidden layers; no activation in between)."""

    def __init__(self, input_dim: int, vocab_size: int, *, projector_dim: int = 256) -> None:
        super().__init__()
        self.proj = nn.Linear(input_dim, projector_dim)
        self.out = nn.Linear(projector_dim, vocab_size)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.out(self.proj(x)), lengths  # (B, T, V)


class SpecAugment(nn.Module):
    """Time and frequency masking of (B, T, D) features in training only (s3prl's downstream
    SpecAug without time warping): `num_*_masks` masks per utterance, each of a width drawn in
    [0, width) at a position in [0, max(1, size - widest)) over the padded batch, set to 0.
    Draws from torch's global generator (the trainer seeds it)."""

    def __init__(
        self, *, num_time_masks: int = 2, time_mask_width: int = 40, num_freq_masks: int = 4,
        freq_mask_width: int = 50,
    ) -> None:  # fmt: skip
        super().__init__()
        self.time = (num_time_masks, time_mask_width)
        self.freq = (num_freq_masks, freq_mask_width)

    @staticmethod
    def _mask(batch: int, size: int, num: int, width: int, device: torch.device) -> Tensor:
        """(B, size) True where masked."""
        if num == 0 or width <= 1:  # widths are drawn in [0, width): width 1 masks nothing
            return torch.zeros(batch, size, dtype=torch.bool, device=device)
        widths = torch.randint(0, width, (batch, num, 1), device=device)
        starts = torch.randint(0, max(1, size - int(widths.max())), (batch, num, 1), device=device)
        pos = torch.arange(size, device=device)  # (size,)
        return ((starts <= pos) & (pos < starts + widths)).any(dim=1)  # (B, size)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        B, T, D = x.shape  # batch, frames, channels
        freq = self._mask(B, D, *self.freq, x.device).unsqueeze(1)  # (B, 1, D)
        time = self._mask(B, T, *self.time, x.device).unsqueeze(2)  # (B, T, 1)
        return x.masked_fill(freq | time, 0.0)


class BiLSTMCTCHead(nn.Module):
    """ASR as SUPERB (s3prl asr expert): optional SpecAugment, Linear(D, hidden_dim), a stack of
    bidirectional LSTMs of hidden_dim cells per direction with dropout after each layer, then a
    linear layer to the vocabulary."""

    def __init__(
        self,
        input_dim: int,
        vocab_size: int,
        *,
        hidden_dim: int = 1024,
        num_layers: int = 2,
        dropout: float = 0.2,
        spec_augment: SpecAugment | None = None,
    ) -> None:
        super().__init__()
        self.spec_augment = spec_augment
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
        if self.spec_augment is not None:
            x = self.spec_augment(x)
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
    """A dilated 1-d convolution over time without padding (s3prl's TDNN: a Linear over the
    concatenated context frames, the same parameters), ReLU, then BatchNorm if asked."""

    def __init__(
        self, input_dim: int, output_dim: int, kernel_size: int, dilation: int, *, batch_norm: bool = False
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(input_dim, output_dim, kernel_size, dilation=dilation)
        self.norm = nn.BatchNorm1d(output_dim) if batch_norm else nn.Identity()
        self.context = dilation * (kernel_size - 1)  # frames lost at the edges

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(F.relu(self.conv(x)))  # (B, C, T - context)


class StatisticsPooling(nn.Module):
    """Mean and standard deviation (unbiased, as torch.std) over valid frames: (B, C, T) -> (B, 2C)."""

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        valid = (~lengths_to_padding_mask(lengths, x.shape[-1])).unsqueeze(1).to(x.dtype)  # (B, 1, T)
        count = valid.sum(dim=-1)  # (B, 1)
        mean = (x * valid).sum(dim=-1) / count.clamp(min=1.0)  # (B, C)
        var = ((x - mean.unsqueeze(-1)).pow(2) * valid).sum(dim=-1) / (count - 1).clamp(min=1.0)
        return torch.cat([mean, var.clamp(min=1e-10).sqrt()], dim=-1)


class XVectorHead(nn.Module):
    """ASV as SUPERB (s3prl sv_voxceleb1 XVector + SP + UtteranceExtractor): Linear(D, C), five
    TDNN layers (context 5; 3 dilated by 2; 3 dilated by 3; 1; 1 -> agg_dim), mean+std pooling,
    then Linear(2 agg_dim, E) + ReLU: the speaker embedding. Training adds Linear(E, E) + ReLU
    before the AM-softmax (s3prl trains on linear2's output and scores linear1's)."""

    def __init__(
        self,
        input_dim: int,
        *,
        channels: int = 512,
        agg_dim: int = 1500,
        embed_dim: int = 512,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.connector = nn.Linear(input_dim, channels)
        self.frames = nn.ModuleList(
            [
                TDNNLayer(channels, channels, 5, 1, batch_norm=batch_norm),
                TDNNLayer(channels, channels, 3, 2, batch_norm=batch_norm),
                TDNNLayer(channels, channels, 3, 3, batch_norm=batch_norm),
                TDNNLayer(channels, channels, 1, 1, batch_norm=batch_norm),
                TDNNLayer(channels, agg_dim, 1, 1, batch_norm=batch_norm),
            ]
        )
        self.context = sum(layer.context for layer in self.frames)  # 14 frames
        self.pool = StatisticsPooling()
        self.embed = nn.Linear(2 * agg_dim, embed_dim)  # s3prl: linear1
        self.train_out = nn.Linear(embed_dim, embed_dim)  # s3prl: linear2 (training only)
        self.embed_dim = embed_dim

    def embedding(self, x: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, D) -> the speaker embeddings that are scored, (B, embed_dim)."""
        valid = (~lengths_to_padding_mask(lengths, x.shape[1])).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        h = (self.connector(x) * valid).transpose(1, 2)  # (B, C, T), zeros past each utterance
        if h.shape[-1] <= self.context:  # shorter than the receptive field: zeros give one frame
            h = F.pad(h, (0, self.context + 1 - h.shape[-1]))
        for layer in self.frames:
            h = layer(h)  # (B, C', T - context so far)
        valid = (lengths - self.context).clamp(min=1, max=h.shape[-1])
        return F.relu(self.embed(self.pool(h, valid)))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """(B, T, D) -> what the AM-softmax trains on, (B, embed_dim)."""
        return F.relu(self.train_out(self.embedding(x, lengths)))


class AdditiveMarginSoftmax(nn.Module):
    """AM-softmax loss (Wang et al. 2018): cross-entropy over s * (cos(theta) - m * [target])."""

    def __init__(self, embed_dim: int, num_classes: int, *, margin: float = 0.2, scale: float = 30.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.init.xavier_normal_(torch.empty(num_classes, embed_dim)))  # as s3prl
        self.margin, self.scale = margin, scale

    def logits(self, embeddings: Tensor) -> Tensor:
        """Cosine similarity to each class centre: (B, E) -> (B, V)."""
        return F.normalize(embeddings, dim=-1) @ F.normalize(self.weight, dim=-1).T

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (loss, cosine logits without margin)."""
        cosine = self.logits(embeddings)
        margin = F.one_hot(labels, cosine.shape[-1]).to(cosine.dtype) * self.margin
        return F.cross_entropy(self.scale * (cosine - margin), labels), cosine


class DiarizationHead(nn.Module):
    """SD as SUPERB (s3prl diarization Model): `num_layers` unidirectional LSTMs of `hidden_dim`
    cells (modelrc.rnn_layers / hidden_size; 0 layers: none), then a linear layer to one activity
    logit per speaker slot and frame. Unidirectional, so padding after a recording's end never
    reaches its valid frames (no packing needed)."""

    def __init__(self, input_dim: int, num_slots: int, *, hidden_dim: int = 512, num_layers: int = 1) -> None:
        super().__init__()
        self.lstm = (
            nn.LSTM(input_dim, hidden_dim, num_layers=num_layers, batch_first=True)
            if num_layers > 0
            else None
        )
        self.out = nn.Linear(hidden_dim if num_layers > 0 else input_dim, num_slots)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = x.float()
        if self.lstm is not None:
            x, _ = self.lstm(x)  # (B, T, H)
        return self.out(x), lengths  # (B, T, slots)
