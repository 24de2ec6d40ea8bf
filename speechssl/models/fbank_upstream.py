"""The FBANK baselines (SUPERB's "fbank" rows): `load_upstream("fbank" | "fbank_no_cmvn" |
"fbank_global_cmvn")`.

As s3prl's baseline (upstream/baseline, fbank.yaml / fbank_no_cmvn.yaml): Kaldi log-mel fbank
(80 bins, 25 ms / 10 ms) of the waveform as loaded (float in [-1, 1], no 32768 scaling: that is
what s3prl's extractor sees), + deltas + delta-deltas (window 5), then
- "utterance" CMVN (`fbank`, SUPERB's row): (x - mean) / (1e-10 + std), std unbiased, per utterance;
- "none" (`fbank_no_cmvn`, s3prl's name);
- "global" (`fbank_global_cmvn`): the same with the train split's mean and std, which the
  downstream runner computes once per experiment (speechssl.downstream.runner) and sets with
  `set_global_stats`; without them the upstream refuses to run.
It has one "layer" (hidden_states = [features]) and no parameters, so every featurizer works.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torchaudio.functional import compute_deltas

from speechssl.errors import SpeechSSLError
from speechssl.models.frontends import KaldiFbank, lengths_to_padding_mask
from speechssl.models.upstream_api import UpstreamModel, UpstreamOutput

CmvnMode = Literal["utterance", "none", "global"]
CMVN_EPS = 1e-10  # s3prl's baseline CMVN: added to the std, not the variance


def _repeat_last_valid(x: Tensor, lengths: Tensor) -> Tensor:
    """Fill padded frames with the last valid frame, so deltas near an utterance's end
    see the same replicate padding as when the utterance is processed alone."""
    T = x.shape[1]
    index = torch.minimum(
        torch.arange(T, device=x.device)[None, :], (lengths - 1).clamp(min=0)[:, None]
    )  # (B, T)
    return torch.gather(x, 1, index[..., None].expand(-1, -1, x.shape[2]))


def utterance_cmvn(x: Tensor, lengths: Tensor) -> Tensor:
    """s3prl's per-utterance CMVN over the valid frames (unbiased std, eps on the std);
    padded frames become 0. x: (batch, frames, channels)."""
    valid = (~lengths_to_padding_mask(lengths, x.shape[1])).unsqueeze(-1).to(x.dtype)
    count = valid.sum(dim=1, keepdim=True)
    mean = (x * valid).sum(dim=1, keepdim=True) / count.clamp(min=1.0)
    var = ((x - mean).pow(2) * valid).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1.0)
    return (x - mean) / (CMVN_EPS + var.sqrt()) * valid


class FbankUpstream(UpstreamModel):
    """waveforms (B, S) -> UpstreamOutput([(B, T, num_mel_bins * (1 + delta_order))], frames)."""

    def __init__(
        self,
        num_mel_bins: int = 80,
        delta_order: int = 2,
        delta_window: int = 5,
        cmvn: CmvnMode = "utterance",
        waveform_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if cmvn not in ("utterance", "none", "global"):
            raise ValueError(f"cmvn must be 'utterance', 'none' or 'global', found {cmvn!r}")
        self.fbank = KaldiFbank(num_mel_bins, waveform_scale=waveform_scale)
        self.delta_order = delta_order
        self.delta_window = delta_window
        self.cmvn = cmvn
        self._hidden_dim = num_mel_bins * (1 + delta_order)
        # the train split's statistics (cmvn "global"); not in state dicts: EXP/task/fbank_cmvn.npz
        self.register_buffer("global_mean", None, persistent=False)
        self.register_buffer("global_std", None, persistent=False)

    @property
    def downsample_rate(self) -> int:
        return self.fbank.hop_length  # 160 samples = 10 ms

    @property
    def num_layers(self) -> int:
        return 0  # hidden_states holds just the features

    @property
    def hidden_dim(self) -> int:
        return self._hidden_dim

    @property
    def needs_train_stats(self) -> bool:
        return self.cmvn == "global"

    def set_global_stats(self, mean: Tensor, std: Tensor) -> None:
        """The train split's per-channel mean and std (global CMVN)."""
        for name, value in (("mean", mean), ("std", std)):
            if tuple(value.shape) != (self._hidden_dim,):
                raise ValueError(
                    f"global CMVN {name} has shape {tuple(value.shape)}, expected ({self._hidden_dim},)"
                )
        device = self.fbank.mel_banks.device
        self.global_mean = mean.detach().float().to(device)
        self.global_std = std.detach().float().to(device)

    def raw_features(self, wavs: Tensor, wav_lens: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Log-mels + deltas before any CMVN: (B, T, D) with padded frames 0, and frames per utterance."""
        if wav_lens is None:
            wav_lens = torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long, device=wavs.device)
        feats, lengths = self.fbank(wavs, wav_lens)  # (B, T, M)
        feats = _repeat_last_valid(feats, lengths)
        parts = [feats]
        for _ in range(self.delta_order):
            # compute_deltas works on (..., freq, time); replicate padding as torchaudio's ComputeDeltas
            delta = compute_deltas(parts[-1].transpose(1, 2), win_length=self.delta_window).transpose(1, 2)
            parts.append(_repeat_last_valid(delta, lengths))  # next order sees replicate padding too
        x = torch.cat(parts, dim=-1)  # (B, T, M * (1 + order))
        return x * (~lengths_to_padding_mask(lengths, x.shape[1])).unsqueeze(-1), lengths

    def forward(self, wavs: Tensor, wav_lens: Tensor | None = None) -> UpstreamOutput:
        x, lengths = self.raw_features(wavs, wav_lens)
        if self.cmvn == "utterance":
            x = utterance_cmvn(x, lengths)
        elif self.cmvn == "global":
            if self.global_mean is None or self.global_std is None:
                raise SpeechSSLError(
                    "upstream 'fbank_global_cmvn' needs the train split's statistics, which only "
                    "`speechssl downstream train` computes (EXP/task/fbank_cmvn.npz); "
                    "use 'fbank' or 'fbank_no_cmvn' here"
                )
            valid = (~lengths_to_padding_mask(lengths, x.shape[1])).unsqueeze(-1).to(x.dtype)
            x = (x - self.global_mean) / (CMVN_EPS + self.global_std) * valid
        return UpstreamOutput(hidden_states=[x], lengths=lengths)
