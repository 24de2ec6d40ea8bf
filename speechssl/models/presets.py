"""Model presets as plain functions returning a ModelConfig.

The published sizes follow the fairseq configs (hubert_base_librispeech,
wav2vec2_base_librispeech, *_large_lv60 / hubert_large_ll60k). Tiny presets
are sized for CPU tests and the embedded recipe.
"""

from __future__ import annotations

from collections.abc import Callable

from speechssl.models.config import ConvFrontendConfig, EncoderConfig, FbankFrontendConfig, ModelConfig


def _base_encoder() -> EncoderConfig:
    return EncoderConfig(
        embed_dim=768, num_layers=12, num_heads=12, ffn_dim=3072, layer_norm_first=False,
        dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, feature_proj_dropout=0.1, layerdrop=0.05,
    )  # fmt: skip


def _large_encoder() -> EncoderConfig:
    return EncoderConfig(
        embed_dim=1024, num_layers=24, num_heads=16, ffn_dim=4096, layer_norm_first=True,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feature_proj_dropout=0.0, layerdrop=0.0,
    )  # fmt: skip


def hubert_base() -> ModelConfig:
    """HuBERT Base (95M with heads): group-norm conv, post-LN, 12 x 768."""
    return ModelConfig(
        family="hubert", frontend=ConvFrontendConfig(feature_grad_mult=0.1), encoder=_base_encoder()
    )


def wav2vec2_base() -> ModelConfig:
    """wav2vec 2.0 Base: same network as HuBERT Base."""
    return ModelConfig(
        family="wav2vec2", frontend=ConvFrontendConfig(feature_grad_mult=0.1), encoder=_base_encoder()
    )


def hubert_large() -> ModelConfig:
    """HuBERT Large (LL-60k): layer-norm conv with bias, pre-LN, 24 x 1024, normalised waveform."""
    frontend = ConvFrontendConfig(mode="layer_norm", conv_bias=True, feature_grad_mult=1.0)
    return ModelConfig(family="hubert", frontend=frontend, encoder=_large_encoder(), normalize_waveform=True)


def wav2vec2_large_lv60() -> ModelConfig:
    """wav2vec 2.0 Large (LV-60): layer-norm conv with bias, pre-LN, 24 x 1024, normalised waveform."""
    frontend = ConvFrontendConfig(mode="layer_norm", conv_bias=True, feature_grad_mult=1.0)
    return ModelConfig(
        family="wav2vec2", frontend=frontend, encoder=_large_encoder(), normalize_waveform=True
    )


def _tiny_conv() -> ConvFrontendConfig:
    # Same kernels/strides as the real stack (320 samples per frame), narrow channels.
    return ConvFrontendConfig(conv_dim=[32, 32, 32, 32, 32, 64, 64], feature_grad_mult=0.1)


def _tiny_encoder() -> EncoderConfig:
    return EncoderConfig(
        embed_dim=64, num_layers=2, num_heads=4, ffn_dim=128, pos_conv_kernel=16, pos_conv_groups=4,
        dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, feature_proj_dropout=0.1, layerdrop=0.0,
    )  # fmt: skip


def hubert_tiny() -> ModelConfig:
    """~0.11M parameters: CPU tests and the embedded mini_synth recipe."""
    return ModelConfig(family="hubert", frontend=_tiny_conv(), encoder=_tiny_encoder())


def wav2vec2_tiny() -> ModelConfig:
    return ModelConfig(family="wav2vec2", frontend=_tiny_conv(), encoder=_tiny_encoder())


def hubert_tiny_fbank() -> ModelConfig:
    """Fbank frontend (80 mel, 50 Hz) + the tiny encoder: the fast CPU pretraining path."""
    frontend = FbankFrontendConfig(num_mel_bins=80, frame_rate=50, subsampler_dim=64)
    return ModelConfig(family="hubert", frontend=frontend, encoder=_tiny_encoder())


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "hubert_base": hubert_base,
    "hubert_large": hubert_large,
    "wav2vec2_base": wav2vec2_base,
    "wav2vec2_large_lv60": wav2vec2_large_lv60,
    "hubert_tiny": hubert_tiny,
    "wav2vec2_tiny": wav2vec2_tiny,
    "hubert_tiny_fbank": hubert_tiny_fbank,
}


def get_preset(name: str) -> ModelConfig:
    """ModelConfig of a preset by name; the error lists the valid names."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset '{name}'; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]()
