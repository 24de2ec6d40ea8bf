"""Typed configs of the wav2vec 2.0 / HuBERT / WavLM / UniSpeech-SAT / data2vec-audio models.

One `ModelConfig` describes the network only (frontend + transformer
encoder). Pretraining objectives (masking, quantizer, HuBERT heads) live in
`speechssl.objectives` with their own configs that hold a `ModelConfig`, so
an exported or distilled model never carries training-only settings.

Field comments give the fairseq / transformers names, because users compare
configs with those of published checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from speechssl.config import from_dict

ACTIVATIONS = ("gelu", "relu", "gelu_new", "swish")
FAMILIES = ("hubert", "wav2vec2", "wavlm", "unispeech_sat", "data2vec_audio")


@dataclass(frozen=True, kw_only=True)
class ConvFrontendConfig:
    """The strided 1-D conv waveform encoder of wav2vec 2.0 / HuBERT."""

    type: Literal["conv"] = "conv"
    conv_dim: list[int] = field(
        default_factory=lambda: [512] * 7
    )  # fairseq: conv_feature_layers; HF: conv_dim
    conv_kernel: list[int] = field(default_factory=lambda: [10, 3, 3, 3, 3, 2, 2])  # HF: conv_kernel
    conv_stride: list[int] = field(default_factory=lambda: [5, 2, 2, 2, 2, 2, 2])  # HF: conv_stride
    conv_bias: bool = False  # fairseq: conv_bias; HF: conv_bias
    # fairseq extractor_mode "default" = group_norm (GroupNorm in layer 0 only),
    # "layer_norm" = LayerNorm over channels after every conv; HF feat_extract_norm "group"/"layer".
    mode: Literal["group_norm", "layer_norm"] = "group_norm"
    feature_grad_mult: float = 1.0  # fairseq: feature_grad_mult (0 = frozen frontend, no graph)

    def __post_init__(self) -> None:
        n = len(self.conv_dim)
        if n == 0 or len(self.conv_kernel) != n or len(self.conv_stride) != n:
            raise ValueError(
                "conv_dim, conv_kernel and conv_stride must be non-empty lists of the same length, found "
                f"{len(self.conv_dim)}, {len(self.conv_kernel)} and {len(self.conv_stride)} items"
            )
        values = [*self.conv_dim, *self.conv_kernel, *self.conv_stride]
        if any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in values):
            raise ValueError(
                "conv_dim, conv_kernel and conv_stride must be positive integers, found "
                f"{self.conv_dim}, {self.conv_kernel} and {self.conv_stride}"
            )
        if self.feature_grad_mult < 0:
            raise ValueError(f"feature_grad_mult must be >= 0, found {self.feature_grad_mult}")

    @property
    def output_dim(self) -> int:
        return self.conv_dim[-1]

    @property
    def downsample_rate(self) -> int:
        return math.prod(self.conv_stride)


@dataclass(frozen=True, kw_only=True)
class FbankFrontendConfig:
    """Log-mel fbank (Kaldi-compatible, 100 Hz) + conv subsampler (Fast-HuBERT / MelHuBERT style)."""

    type: Literal["fbank"] = "fbank"
    num_mel_bins: int = 80
    frame_rate: Literal[50, 25] = 50  # output frames per second: 1 or 2 stride-2 conv layers
    subsampler_dim: int = 256  # channels of every subsampler conv layer (= output_dim)
    subsampler_kernel: int = 3
    normalize: bool = True  # utterance mean/variance normalisation over valid frames
    waveform_scale: float = 32768.0  # Kaldi convention: fbank of int16-range samples
    feature_grad_mult: float = 1.0  # scales gradients into the subsampler, as for the conv frontend

    def __post_init__(self) -> None:
        if self.num_mel_bins <= 0 or self.subsampler_dim <= 0:
            raise ValueError("num_mel_bins and subsampler_dim must be positive")
        if self.subsampler_kernel < 1 or self.subsampler_kernel % 2 == 0:
            raise ValueError(f"subsampler_kernel must be odd and positive, found {self.subsampler_kernel}")
        if self.feature_grad_mult < 0:
            raise ValueError(f"feature_grad_mult must be >= 0, found {self.feature_grad_mult}")

    @property
    def num_subsample_layers(self) -> int:
        return {50: 1, 25: 2}[self.frame_rate]

    @property
    def output_dim(self) -> int:
        return self.subsampler_dim

    @property
    def downsample_rate(self) -> int:
        return 160 * 2**self.num_subsample_layers  # 10 ms fbank shift at 16 kHz, then stride 2 per layer


FrontendConfig = ConvFrontendConfig | FbankFrontendConfig
FRONTEND_CONFIGS: dict[str, type] = {"conv": ConvFrontendConfig, "fbank": FbankFrontendConfig}


def frontend_config_from_dict(data: dict[str, Any], *, source: str | None = None) -> FrontendConfig:
    """Pick the frontend config class by its `type` key; the error lists the valid names."""
    kind = data.get("type", "conv")
    if kind not in FRONTEND_CONFIGS:
        raise ValueError(f"unknown frontend type '{kind}'; valid types: {', '.join(FRONTEND_CONFIGS)}")
    return from_dict(FRONTEND_CONFIGS[kind], data, source=source, section="frontend")


@dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """Feature projection + conv positional embedding + transformer layers."""

    embed_dim: int = 768  # fairseq: encoder_embed_dim; HF: hidden_size
    num_layers: int = 12  # fairseq: encoder_layers; HF: num_hidden_layers
    num_heads: int = 12  # fairseq: encoder_attention_heads; HF: num_attention_heads
    ffn_dim: int = 3072  # fairseq: encoder_ffn_embed_dim; HF: intermediate_size
    layer_norm_first: bool = False  # fairseq: layer_norm_first; HF: do_stable_layer_norm (pre-LN)
    pos_conv_kernel: int = 128  # fairseq: conv_pos; HF: num_conv_pos_embeddings
    pos_conv_groups: int = 16  # fairseq: conv_pos_groups; HF: num_conv_pos_embedding_groups
    dropout: float = 0.1  # fairseq: dropout; HF: hidden_dropout
    attention_dropout: float = 0.1  # fairseq: attention_dropout; HF: attention_dropout
    activation_dropout: float = 0.0  # fairseq: activation_dropout; HF: activation_dropout
    feature_proj_dropout: float = 0.1  # fairseq: dropout_input; HF: feat_proj_dropout
    layerdrop: float = 0.05  # fairseq: encoder_layerdrop; HF: layerdrop
    activation: str = "gelu"  # fairseq: activation_fn; HF: hidden_act
    layer_norm_eps: float = 1e-5  # HF: layer_norm_eps
    # "weight_norm": one weight-normed grouped conv + GELU (wav2vec 2.0, HuBERT, WavLM, UniSpeech-SAT);
    # "layer_norm": data2vec-audio's stack of `pos_conv_depth` grouped convs, each followed by a
    # non-affine LayerNorm and GELU, no weight norm (HF conv_pos_kernel_size = pos_conv_kernel and
    # num_conv_pos_embeddings = pos_conv_depth; fairseq conv_pos_depth, kernel conv_pos / depth).
    pos_conv_type: Literal["weight_norm", "layer_norm"] = "weight_norm"
    pos_conv_depth: int = 1  # fairseq: conv_pos_depth; HF (data2vec-audio): num_conv_pos_embeddings
    # WavLM gated relative position bias; 0 = none. unilm: num_buckets; HF: num_buckets (320).
    relative_position_buckets: int = 0
    relative_position_max_distance: int = 800  # unilm: max_distance; HF: max_bucket_distance
    # Pruned (heterogeneous) models: per-layer head count / FFN width; 0 removes the block.
    layer_num_heads: list[int] | None = None
    layer_ffn_dims: list[int] | None = None
    # Pruned WavLM: per layer, the original index of each head it keeps (DPHuBERT remaining_heads).
    # A kept head's gate reads that head's chunk of the layer input and its column of the shared
    # bias table. None: heads 0..H-1 in order.
    layer_head_index: list[list[int]] | None = None

    def __post_init__(self) -> None:
        names = ("embed_dim", "num_layers", "num_heads", "ffn_dim", "pos_conv_kernel", "pos_conv_groups")
        for name in (*names, "pos_conv_depth", "relative_position_max_distance"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, found {value!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be positive, found {self.layer_norm_eps}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) is not divisible by num_heads ({self.num_heads})")
        if self.embed_dim % self.pos_conv_groups:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) is not divisible by pos_conv_groups ({self.pos_conv_groups})"
            )
        if self.pos_conv_type not in ("weight_norm", "layer_norm"):
            raise ValueError(
                f"pos_conv_type must be 'weight_norm' or 'layer_norm', found {self.pos_conv_type!r}"
            )
        if self.pos_conv_type == "weight_norm" and self.pos_conv_depth != 1:
            raise ValueError(
                f"pos_conv_depth {self.pos_conv_depth} needs pos_conv_type 'layer_norm' (the weight-normed "
                "positional conv is a single layer)"
            )
        buckets = self.relative_position_buckets
        if not isinstance(buckets, int) or isinstance(buckets, bool) or buckets < 0 or 0 < buckets < 4:
            raise ValueError(
                f"relative_position_buckets must be 0 (none) or an integer >= 4, found {buckets!r}"
            )
        if buckets and self.relative_position_max_distance <= buckets // 4:
            raise ValueError(
                f"relative_position_max_distance ({self.relative_position_max_distance}) must exceed "
                f"relative_position_buckets // 4 ({buckets // 4}), the largest exactly-bucketed distance"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{self.activation}'; valid: {', '.join(ACTIVATIONS)}")
        for name in (
            "dropout",
            "attention_dropout",
            "activation_dropout",
            "feature_proj_dropout",
            "layerdrop",
        ):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), found {value}")
        for name in ("layer_num_heads", "layer_ffn_dims"):
            values = getattr(self, name)
            if values is not None and (len(values) != self.num_layers or min(values, default=0) < 0):
                raise ValueError(
                    f"{name} must list one non-negative value per layer ({self.num_layers}), found {values}"
                )
        if self.layer_head_index is not None:
            index = self.layer_head_index
            if len(index) != self.num_layers or any(
                len(kept) != self.heads_of(i)
                or any(not 0 <= h < self.num_heads for h in kept)
                or sorted(set(kept)) != list(kept)
                for i, kept in enumerate(index)
            ):
                raise ValueError(
                    "layer_head_index must list, per layer, its layer_num_heads increasing head indices "
                    f"below num_heads ({self.num_heads}), found {index}"
                )

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def heads_of(self, layer: int) -> int:
        return self.num_heads if self.layer_num_heads is None else self.layer_num_heads[layer]

    def ffn_dim_of(self, layer: int) -> int:
        return self.ffn_dim if self.layer_ffn_dims is None else self.layer_ffn_dims[layer]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A wav2vec 2.0-style network: frontend -> feature projection -> transformer encoder.

    `frontend` may be given as a mapping with a `type` key ("conv" | "fbank").
    Objective settings (mask, quantizer, HuBERT heads) are NOT here: they are
    in `speechssl.objectives`' PretrainConfig, which holds a ModelConfig.
    """

    # Which published model this network is (and the transformers class it exports as); it also
    # pins the architecture: wavlm has the relative position bias, data2vec_audio the layer-norm
    # positional conv stack, the others neither.
    family: Literal["hubert", "wav2vec2", "wavlm", "unispeech_sat", "data2vec_audio"] = "hubert"
    frontend: ConvFrontendConfig | FbankFrontendConfig = field(default_factory=ConvFrontendConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    # Zero-mean / unit-variance per utterance before the frontend (HF do_normalize,
    # fairseq task.normalize); True for HuBERT Large and wav2vec 2.0 Large LV-60.
    normalize_waveform: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.frontend, dict):
            object.__setattr__(self, "frontend", frontend_config_from_dict(self.frontend))
        if not isinstance(self.frontend, (ConvFrontendConfig, FbankFrontendConfig)):
            raise ValueError(f"frontend must be a frontend config or mapping, found {self.frontend!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"unknown model family '{self.family}'; valid families: {', '.join(FAMILIES)}")
        enc = self.encoder
        if (self.family == "wavlm") != (enc.relative_position_buckets > 0):
            raise ValueError(
                "relative_position_buckets must be > 0 for family 'wavlm' and 0 for any other family, found "
                f"{enc.relative_position_buckets} for '{self.family}'"
            )
        if (self.family == "data2vec_audio") != (enc.pos_conv_type == "layer_norm"):
            raise ValueError(
                "pos_conv_type must be 'layer_norm' for family 'data2vec_audio' and 'weight_norm' for any "
                f"other family, found '{enc.pos_conv_type}' for '{self.family}'"
            )

    @property
    def downsample_rate(self) -> int:
        return self.frontend.downsample_rate
