"""WavLM's utterance mixing: part of an utterance is overlapped with another utterance of the
batch or with noise, and the labels stay those of the primary utterance (denoising masked
prediction).

Semantics follow UniSpeech-SAT / WavLM's `mixing_collated_audios` (microsoft/UniSpeech): with
probability `mix_prob` an utterance gets one interferer; with probability `noise_prob` that is a
noise clip (SNR drawn from `noise_snr`, -5..20 dB), otherwise another utterance of the batch
(`utterance_snr`, -5..5 dB); the overlapped region is at most `max_mixed_fraction` (one half) of
the primary utterance. Where we differ, on purpose:

- the interferer is taken from the batch as it was *before* any mixing (the original mixes in
  place, so an utterance earlier in the batch arrives already mixed): every mix then holds
  exactly two sources and does not depend on the order of the batch;
- an utterance is never mixed with itself (the original draws the partner from the whole batch);
  a batch of one utterance mixes with noise only;
- the region lies inside the valid samples of both signals (the original may place it in
  padding), and it is at least one sample long (the original may draw 0);
- the energy ratio is measured over the overlapped region (the original uses whole padded rows),
  so the SNR one hears in the mixed region is the drawn one; a silent region mixes nothing.

Every draw is one fixed-size `torch.rand` per batch from the given generator (the trainer's
global one when None), so a resumed run draws the same mixes; no host syncs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from speechssl.models.devices import host_to_device
from speechssl.objectives.masking import uniform


@dataclass(frozen=True, kw_only=True)
class MixingConfig:
    """Utterance mixing (UniSpeech-SAT names in comments)."""

    mix_prob: float = 0.2  # mixing_prob: utterances that get an interferer
    noise_prob: float = 0.0  # mixing_noise_prob: of those, the share mixed with noise (needs --noise)
    utterance_snr: list[float] = field(default_factory=lambda: [-5.0, 5.0])  # dB, uniform
    noise_snr: list[float] = field(default_factory=lambda: [-5.0, 20.0])  # dB, uniform
    max_mixed_fraction: float = 0.5  # mixing_max_len 2: at most half of the primary is overlapped

    def __post_init__(self) -> None:
        for name in ("mix_prob", "noise_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], found {value}")
        for name in ("utterance_snr", "noise_snr"):
            value = list(getattr(self, name))
            if len(value) != 2 or not all(math.isfinite(v) for v in value) or value[0] > value[1]:
                raise ValueError(f"{name} must be [low, high] in dB with low <= high, found {value}")
        if not 0.0 < self.max_mixed_fraction <= 1.0:
            raise ValueError(f"max_mixed_fraction must be in (0, 1], found {self.max_mixed_fraction}")


class NoiseBank(NamedTuple):
    """Noise clips for mixing, zero-padded: clips (N, S) and their valid samples (N,)."""

    clips: Tensor
    lengths: Tensor

    @classmethod
    def from_list(cls, clips: list[Tensor]) -> NoiseBank:
        if not clips:
            raise ValueError("a noise bank needs at least one clip")
        width = max(int(c.shape[-1]) for c in clips)
        padded = torch.stack([F.pad(c.float().reshape(-1), (0, width - c.shape[-1])) for c in clips])
        return cls(padded, torch.tensor([int(c.shape[-1]) for c in clips], dtype=torch.long))

    def to(self, device: torch.device | str) -> NoiseBank:
        return NoiseBank(self.clips.to(device), self.lengths.to(device))


class MixInfo(NamedTuple):
    """What `mix_batch` did, per utterance (B,)."""

    mixed: Tensor  # bool: an interferer was added
    noise: Tensor  # bool: the interferer is a noise clip (else the utterance `partner`)
    partner: Tensor  # long: the batch row mixed in (meaningful where mixed & ~noise)
    clip: Tensor  # long: the noise clip mixed in (meaningful where mixed & noise)
    start: Tensor  # long: first mixed sample of the primary
    length: Tensor  # long: mixed samples
    source_start: Tensor  # long: first sample taken from the interferer
    snr_db: Tensor  # float: drawn energy ratio, primary over interferer, in the mixed region
    scale: Tensor  # float: gain applied to the interferer (0 where not mixed)


def _uniform_int(u: Tensor, high: Tensor) -> Tensor:
    """u in [0, 1) -> an integer in [0, high) (high >= 1; 0 where high < 1)."""
    return (u * high.clamp(min=1)).floor().long().clamp(min=0).minimum((high - 1).clamp(min=0))


def mix_batch(
    wavs: Tensor,
    lengths: Tensor,
    config: MixingConfig,
    *,
    noise: NoiseBank | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, MixInfo]:
    """wavs: (B, S) raw waveforms; lengths: (B,) valid samples. Returns the mixed batch (a new
    tensor; padding stays 0) and what was mixed. See the module docstring for the semantics."""
    B, S = wavs.shape  # batch, samples
    device = wavs.device
    L = host_to_device(lengths, device).long()  # from the host: no device sync
    u = uniform(8, B, device=device, generator=generator)  # one fixed-size draw per batch
    rows = torch.arange(B, device=device)
    mixed = u[0] < config.mix_prob
    if noise is not None and config.noise_prob > 0:
        use_noise = u[1] < config.noise_prob
        if B == 1:  # no other utterance to mix with
            use_noise = torch.ones_like(use_noise)
    else:
        use_noise = torch.zeros(B, dtype=torch.bool, device=device)
        if B == 1:
            mixed = torch.zeros_like(mixed)
    # never the utterance itself: one of the B - 1 others
    partner = (rows + 1 + _uniform_int(u[2], torch.full_like(rows, max(B - 1, 1)))) % B
    clean = wavs  # interferers come from the batch before mixing
    secondary = clean[partner]  # (B, S)
    secondary_len = L[partner]
    clip = torch.zeros_like(rows)
    if noise is not None:
        bank = noise.to(device)
        clip = _uniform_int(u[3], torch.full_like(rows, bank.clips.shape[0]))
        width = max(S, bank.clips.shape[1])
        noise_rows = F.pad(bank.clips[clip].to(wavs.dtype), (0, width - bank.clips.shape[1]))
        secondary = torch.where(use_noise[:, None], noise_rows, F.pad(secondary, (0, width - S)))
        secondary_len = torch.where(use_noise, bank.lengths[clip], secondary_len)
    max_len = torch.minimum((config.max_mixed_fraction * L).floor().long(), secondary_len)
    mixed = mixed & (max_len >= 1)
    length = 1 + _uniform_int(u[4], max_len)  # in [1, max_len]
    start = _uniform_int(u[5], L - length + 1)
    source_start = _uniform_int(u[6], secondary_len - length + 1)
    lo_u, hi_u = config.utterance_snr
    lo_n, hi_n = config.noise_snr
    snr = torch.where(use_noise, lo_n + u[7] * (hi_n - lo_n), lo_u + u[7] * (hi_u - lo_u))

    t = torch.arange(S, device=device)[None, :]  # (1, S)
    region = (t >= start[:, None]) & (t < (start + length)[:, None]) & mixed[:, None]  # (B, S)
    index = (source_start[:, None] + t - start[:, None]).clamp(0, secondary.shape[1] - 1)  # (B, S)
    interferer = secondary.gather(1, index) * region  # (B, S), zero outside the region
    n = length.clamp(min=1).double()
    primary_power = (wavs.double().pow(2) * region).sum(dim=1) / n
    interferer_power = interferer.double().pow(2).sum(dim=1) / n
    audible = (primary_power > 0) & (interferer_power > 0)
    mixed = mixed & audible
    ratio = primary_power / (interferer_power.clamp(min=1e-30) * torch.pow(10.0, snr.double() / 10))
    scale = torch.where(mixed, ratio.sqrt(), 0.0)
    out = wavs + (scale[:, None] * interferer.double()).to(wavs.dtype)
    info = MixInfo(mixed, use_noise & mixed, partner, clip, start, length, source_start, snr, scale.float())
    return out, info
