"""Tiny model configs and perturbed reference models for parity tests.

Parity on freshly initialised weights can hide a missed mapping (a LayerNorm
left at 1/0 equals one never loaded), so `perturb_` moves EVERY parameter and
buffer-free weight away from its init before a comparison.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from speechssl.data.audio import SAMPLE_RATE
from speechssl.models.config import ConvFrontendConfig, EncoderConfig, ModelConfig

TINY_CONV_DIM = [16, 16, 16, 16, 16, 24, 24]


def tiny_config(
    *,
    family: str = "hubert",
    mode: str = "group_norm",
    conv_bias: bool = False,
    layer_norm_first: bool = False,
    num_heads: int = 4,
    pos_conv_kernel: int = 16,
    pos_conv_groups: int = 4,
    embed_dim: int = 32,
    num_layers: int = 2,
) -> ModelConfig:
    """A ~50k-parameter model with the real conv strides (320 samples per frame); dropout off."""
    return ModelConfig(
        family=family,  # type: ignore[arg-type]
        frontend=ConvFrontendConfig(conv_dim=list(TINY_CONV_DIM), conv_bias=conv_bias, mode=mode),  # type: ignore[arg-type]
        encoder=EncoderConfig(
            embed_dim=embed_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            ffn_dim=2 * embed_dim,
            layer_norm_first=layer_norm_first,
            pos_conv_kernel=pos_conv_kernel,
            pos_conv_groups=pos_conv_groups,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            feature_proj_dropout=0.0,
            layerdrop=0.0,
        ),  # fmt: skip
    )


def hf_config_dict(config: ModelConfig) -> dict[str, Any]:
    """transformers config kwargs for the same network (for HubertConfig / Wav2Vec2Config)."""
    from speechssl.interop.transformers_io import config_to_transformers

    kwargs = config_to_transformers(config)
    kwargs.pop("architectures")
    kwargs.pop("model_type")
    return kwargs


def build_hf_model(config: ModelConfig, *, pretraining: bool = False) -> nn.Module:
    """A randomly initialised transformers HubertModel / Wav2Vec2Model (or Wav2Vec2ForPreTraining)
    with the architecture of `config`, using SDPA attention, in eval mode."""
    import transformers

    kwargs = hf_config_dict(config)
    if config.family == "hubert":
        cls, cfg_cls = transformers.HubertModel, transformers.HubertConfig
    else:
        cfg_cls = transformers.Wav2Vec2Config
        cls = transformers.Wav2Vec2ForPreTraining if pretraining else transformers.Wav2Vec2Model
        if pretraining:
            kwargs.update(codevector_dim=16, proj_codevector_dim=16, num_codevectors_per_group=8)
    hf_config = cfg_cls(**kwargs)
    hf_config._attn_implementation = "sdpa"
    return cls(hf_config).eval()


@torch.no_grad()
def perturb_(module: nn.Module, *, scale: float = 0.1, seed: int = 0) -> nn.Module:
    """Add seeded Gaussian noise to every parameter (in place) so that no weight sits at its init."""
    generator = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


def random_waves(lengths: list[int], *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Right-padded (B, max_len) batch of noise-like waveforms and their lengths (long)."""
    generator = torch.Generator().manual_seed(seed)
    wavs = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        t = torch.arange(n) / SAMPLE_RATE
        tone = 0.3 * torch.sin(2 * torch.pi * (120 + 40 * i) * t)
        wavs[i, :n] = tone + 0.1 * torch.randn(n, generator=generator)
    return wavs, torch.tensor(lengths, dtype=torch.long)
