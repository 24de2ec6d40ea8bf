"""Model presets as plain functions returning a ModelConfig.

The published sizes follow the fairseq configs (hubert_base_librispeech,
wav2vec2_base_librispeech, *_large_lv60 / hubert_large_ll60k, data2vec base /
large librispeech), unilm's WavLM and UniSpeech-SAT checkpoints and the
transformers configs of microsoft/wavlm-*, microsoft/unispeech-sat-* and
facebook/data2vec-audio-*. Tiny presets are sized for CPU tests and the embedded recipe.
"""

from __future__ import annotations

import dataclasses
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


def _wavlm(encoder: EncoderConfig) -> EncoderConfig:
    """WavLM's gated relative position bias: 320 buckets up to 800 frames (unilm / transformers)."""
    return dataclasses.replace(encoder, relative_position_buckets=320, relative_position_max_distance=800)


def _data2vec(encoder: EncoderConfig) -> EncoderConfig:
    """data2vec-audio's positional encoder: 5 convs of kernel 19 (fairseq conv_pos 95, depth 5),
    non-affine LayerNorm, no weight norm."""
    return dataclasses.replace(encoder, pos_conv_type="layer_norm", pos_conv_kernel=19, pos_conv_depth=5)


def _large_conv() -> ConvFrontendConfig:
    return ConvFrontendConfig(mode="layer_norm", conv_bias=True, feature_grad_mult=1.0)


def wavlm_base() -> ModelConfig:
    """WavLM Base (94.4M): HuBERT Base + gated relative position bias; group-norm conv, post-LN."""
    return ModelConfig(
        family="wavlm", frontend=ConvFrontendConfig(feature_grad_mult=0.1), encoder=_wavlm(_base_encoder())
    )


def wavlm_base_plus() -> ModelConfig:
    """WavLM Base+ (94.4M): the network of WavLM Base, trained on 94k hours."""
    return wavlm_base()


def wavlm_large() -> ModelConfig:
    """WavLM Large (315.5M): layer-norm conv with bias, pre-LN, 24 x 1024, normalised waveform."""
    return ModelConfig(
        family="wavlm", frontend=_large_conv(), encoder=_wavlm(_large_encoder()), normalize_waveform=True
    )


def unispeech_sat_base() -> ModelConfig:
    """UniSpeech-SAT Base (94.4M): the wav2vec 2.0 Base network (group-norm conv, post-LN)."""
    return ModelConfig(
        family="unispeech_sat", frontend=ConvFrontendConfig(feature_grad_mult=0.1), encoder=_base_encoder()
    )


def unispeech_sat_large() -> ModelConfig:
    """UniSpeech-SAT Large (315.4M): layer-norm conv with bias, pre-LN, 24 x 1024, normalised waveform."""
    return ModelConfig(
        family="unispeech_sat", frontend=_large_conv(), encoder=_large_encoder(), normalize_waveform=True
    )


def data2vec_audio_base() -> ModelConfig:
    """data2vec-audio Base (93.2M): layer-norm conv without bias, 5-layer positional conv, post-LN,
    normalised waveform."""
    frontend = ConvFrontendConfig(mode="layer_norm", conv_bias=False, feature_grad_mult=1.0)
    return ModelConfig(
        family="data2vec_audio",
        frontend=frontend,
        encoder=_data2vec(_base_encoder()),
        normalize_waveform=True,
    )


def data2vec_audio_large() -> ModelConfig:
    """data2vec-audio Large (313.3M): as Base at 24 x 1024, still post-LN."""
    frontend = ConvFrontendConfig(mode="layer_norm", conv_bias=False, feature_grad_mult=1.0)
    encoder = dataclasses.replace(_data2vec(_large_encoder()), layer_norm_first=False)
    return ModelConfig(family="data2vec_audio", frontend=frontend, encoder=encoder, normalize_waveform=True)


def _tiny_conv() -> ConvFrontendConfig:
    # Same kernels/strides as the real stack (320 samples per frame), narrow channels. The last
    # width (48) differs from the encoder's 64, as 512 does from 768 in Base: fairseq (and s3prl's
    # copy of it) builds its feature projection `post_extract_proj` only when the widths differ, so
    # only then can a trained tiny model be exported as `fairseq` / `s3prl` with exact hidden states.
    return ConvFrontendConfig(conv_dim=[32, 32, 32, 32, 32, 48, 48], feature_grad_mult=0.1)


def _tiny_encoder() -> EncoderConfig:
    return EncoderConfig(
        embed_dim=64, num_layers=2, num_heads=4, ffn_dim=128, pos_conv_kernel=16, pos_conv_groups=4,
        dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, feature_proj_dropout=0.1, layerdrop=0.0,
    )  # fmt: skip


def hubert_tiny() -> ModelConfig:
    """0.11M parameters (conv 48 -> 2 x 64): CPU tests; every export format carries it."""
    return ModelConfig(family="hubert", frontend=_tiny_conv(), encoder=_tiny_encoder())


def wav2vec2_tiny() -> ModelConfig:
    """hubert_tiny's network for wav2vec 2.0."""
    return ModelConfig(family="wav2vec2", frontend=_tiny_conv(), encoder=_tiny_encoder())


def wavlm_tiny() -> ModelConfig:
    """The tiny network with a small relative position bias (16 buckets up to 32 frames), 5 heads."""
    encoder = dataclasses.replace(
        _tiny_encoder(), embed_dim=60, num_heads=5, pos_conv_groups=4,
        relative_position_buckets=16, relative_position_max_distance=32,
    )  # fmt: skip
    return ModelConfig(family="wavlm", frontend=_tiny_conv(), encoder=encoder)


def data2vec_tiny() -> ModelConfig:
    """The tiny network with data2vec-audio's layer-norm conv frontend and a 2 x kernel-7 positional stack."""
    frontend = dataclasses.replace(_tiny_conv(), mode="layer_norm")
    encoder = dataclasses.replace(
        _tiny_encoder(), pos_conv_type="layer_norm", pos_conv_kernel=7, pos_conv_depth=2
    )
    return ModelConfig(family="data2vec_audio", frontend=frontend, encoder=encoder)


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
    "wavlm_base": wavlm_base,
    "wavlm_base_plus": wavlm_base_plus,
    "wavlm_large": wavlm_large,
    "unispeech_sat_base": unispeech_sat_base,
    "unispeech_sat_large": unispeech_sat_large,
    "data2vec_audio_base": data2vec_audio_base,
    "data2vec_audio_large": data2vec_audio_large,
    "wavlm_tiny": wavlm_tiny,
    "data2vec_tiny": data2vec_tiny,
}


def get_preset(name: str) -> ModelConfig:
    """ModelConfig of a preset by name; the error lists the valid names."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset '{name}'; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]()
