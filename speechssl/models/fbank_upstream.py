"""The FBANK baseline upstream (SUPERB's "fbank" row): `load_upstream("fbank")`.

As s3prl's baseline: 80 Kaldi log-mel bins + deltas + delta-deltas (window 5),
per-utterance mean/variance normalisation; 10 ms frames. It has one "layer"
(hidden_states = [features]) and no parameters, so every featurizer works.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchaudio.functional import compute_deltas

from speechssl.models.frontends import KaldiFbank, lengths_to_padding_mask, masked_mean_var_norm
from speechssl.models.upstream_api import UpstreamModel, UpstreamOutput


def _repeat_last_valid(x: Tensor, lengths: Tensor) -> Tensor:
    """Fill padded frames with the last valid frame, so deltas near an utterance's end
    see the same replicate padding as when the utterance is processed alone."""
    T = x.shape[1]
    index = torch.minimum(
        torch.arange(T, device=x.device)[None, :], (lengths - 1).clamp(min=0)[:, None]
    )  # (B, T)
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[2]))


class FbankUpstream(UpstreamModel):
    """waveforms (B, S) -> UpstreamOutput([(B, T, num_mel_bins * (1 + delta_order))], frames)."""

    def __init__(
        self, num_mel_bins: int = 80, delta_order: int = 2, delta_window: int = 5, cmvn: bool = True
    ) -> None:
        super().__init__()
        self.fbank = KaldiFbank(num_mel_bins)
        self.delta_order = delta_order
        self.delta_window = delta_window
        self.cmvn = cmvn
        self._hidden_dim = num_mel_bins * (1 + delta_order)

    @property
    def downsample_rate(self) -> int:
        return self.fbank.hop_length  # 160 samples = 10 ms

    @property
    def num_layers(self) -> int:
        return 0  # hidden_states holds just the features

    @property
    def hidden_dim(self) -> int:
        return self._hidden_dim

    def forward(self, wavs: Tensor, wav_lens: Tensor | None = None) -> UpstreamOutput:
        if wav_lens is None:
            wav_lens = torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long, device=wavs.device)
        feats, lengths = self.fbank(wavs, wav_lens)  # (B, T, M)
        feats = _repeat_last_valid(feats, lengths)
        parts = [feats]
        for _ in range(self.delta_order):
            # compute_deltas works on (..., freq, time)
            delta = compute_deltas(parts[-1].transpose(1, 2), win_length=self.delta_window).transpose(1, 2)
            parts.append(_repeat_last_valid(delta, lengths))  # next order sees replicate padding too
        x = torch.cat(parts, dim=-1)  # (B, T, M * (1 + order))
        if self.cmvn:
            x = masked_mean_var_norm(x, lengths)
        else:
            x = x * (~lengths_to_padding_mask(lengths, x.shape[1])).unsqueeze(-1)
        return UpstreamOutput(hidden_states=[x], lengths=lengths)
