"""Inputs and model builders shared by the benchmark groups (same seed, same weights)."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from speechssl.data.audio import SAMPLE_RATE
from speechssl.models import ModelConfig, SSLModel, build_model, get_preset


def waves(seconds: list[float], *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Right-padded (B, S) noise batch with zeros past each length, and lengths (B,) in samples."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([round(s * SAMPLE_RATE) for s in seconds], dtype=torch.long)
    wavs = 0.1 * torch.randn(len(seconds), int(lengths.max()), generator=generator)
    wavs = wavs.masked_fill(torch.arange(wavs.shape[1])[None, :] >= lengths[:, None], 0.0)
    return wavs, lengths


def padded_batch(seconds: float, batch: int) -> list[float]:
    """`batch` utterances, the longest `seconds`, the others 10 % shorter each (a padded batch)."""
    return [round(seconds * (1.0 - 0.1 * i), 3) for i in range(batch)]


def model_config(preset: str, num_layers: int | None = None, *, no_layerdrop: bool = True) -> ModelConfig:
    """A preset, optionally with fewer transformer layers; LayerDrop off so every step does the same work."""
    config = get_preset(preset)
    encoder = config.encoder
    if num_layers is not None:
        encoder = replace(encoder, num_layers=num_layers)
    if no_layerdrop:
        encoder = replace(encoder, layerdrop=0.0)
    return replace(config, encoder=encoder)


def seeded_model(config: ModelConfig, seed: int = 0) -> SSLModel:
    torch.manual_seed(seed)
    return build_model(config)
