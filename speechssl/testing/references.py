"""Reference implementations (torchaudio, transformers) built with the architecture of our
configs and loaded with our weights: for parity tests and the side-by-side benchmarks.

Our state-dict keys are transformers' own (HubertModel / Wav2Vec2ForPreTraining), so
transformers loads them as they are; torchaudio needs the key renames below.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from speechssl.models.config import ConvFrontendConfig, ModelConfig
from speechssl.objectives.pretraining import PretrainModelConfig

# our HubertPretrainModel keys -> torchaudio HuBERTPretrainModel keys (first matching prefix wins)
_TA_PRETRAIN_RENAMES = (
    ("hubert.masked_spec_embed", "mask_generator.mask_embedding"),
    ("hubert.feature_extractor.", "wav2vec2.feature_extractor."),
    ("hubert.feature_projection.", "wav2vec2.encoder.feature_projection."),
    ("hubert.encoder.", "wav2vec2.encoder.transformer."),
    ("head.final_proj.", "logit_generator.final_proj."),
    ("head.label_embs_concat", "logit_generator.label_embeddings"),
)
# our SSLModel keys -> torchaudio Wav2Vec2Model keys (masked_spec_embed has no place there)
_TA_MODEL_RENAMES = (
    ("feature_extractor.", "feature_extractor."),
    ("feature_projection.", "encoder.feature_projection."),
    ("encoder.", "encoder.transformer."),
)


def _rename(
    state: dict[str, Tensor], renames: tuple[tuple[str, str], ...], drop: tuple[str, ...] = ()
) -> dict:
    out = {}
    for key, value in state.items():
        if key in drop:
            continue
        for old, new in renames:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                break
        else:
            raise KeyError(f"no torchaudio name for parameter '{key}'")
    return out


def to_torchaudio_wavlm_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """WavLM SSLModel state dict -> torchaudio's WavLM (wav2vec2 Wav2Vec2Model with WavLMSelfAttention):
    q/k/v are packed into one `attention.attention.in_proj_*` (nn.MultiheadAttention), in that order."""
    out = _rename(state, _TA_MODEL_RENAMES, drop=("masked_spec_embed",))
    for key in [k for k in out if k.endswith("attention.q_proj.weight")]:
        layer = key[: -len("q_proj.weight")]
        for kind in ("weight", "bias"):
            parts = [out.pop(f"{layer}{proj}_proj.{kind}") for proj in "qkv"]
            out[f"{layer}attention.in_proj_{kind}"] = torch.cat(parts)
        for kind in ("weight", "bias"):
            out[f"{layer}attention.out_proj.{kind}"] = out.pop(f"{layer}out_proj.{kind}")
    return out


def to_torchaudio_pretrain_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HubertPretrainModel state dict -> torchaudio HuBERTPretrainModel state dict."""
    return _rename(state, _TA_PRETRAIN_RENAMES)


def to_torchaudio_model_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """SSLModel state dict -> torchaudio Wav2Vec2Model state dict (masked_spec_embed dropped)."""
    return _rename(state, _TA_MODEL_RENAMES, drop=("masked_spec_embed",))


def _torchaudio_kwargs(model: ModelConfig) -> dict:
    fe, enc = model.frontend, model.encoder
    if not isinstance(fe, ConvFrontendConfig):
        raise ValueError("torchaudio's models have the conv waveform frontend only")
    if enc.layer_num_heads is not None or enc.layer_ffn_dims is not None or enc.activation != "gelu":
        raise ValueError("torchaudio's models need a uniform (unpruned) GELU encoder")
    return dict(
        extractor_mode=fe.mode,
        extractor_conv_layer_config=list(zip(fe.conv_dim, fe.conv_kernel, fe.conv_stride)),
        extractor_conv_bias=fe.conv_bias, encoder_embed_dim=enc.embed_dim,
        encoder_projection_dropout=enc.feature_proj_dropout, encoder_pos_conv_kernel=enc.pos_conv_kernel,
        encoder_pos_conv_groups=enc.pos_conv_groups, encoder_num_layers=enc.num_layers,
        encoder_num_heads=enc.num_heads, encoder_attention_dropout=enc.attention_dropout,
        encoder_ff_interm_features=enc.ffn_dim, encoder_ff_interm_dropout=enc.activation_dropout,
        encoder_dropout=enc.dropout, encoder_layer_norm_first=enc.layer_norm_first,
        encoder_layer_drop=enc.layerdrop,
    )  # fmt: skip


def torchaudio_model(config: ModelConfig) -> nn.Module:
    """torchaudio Wav2Vec2Model (what torchaudio.models.hubert_base builds) for `config`."""
    from torchaudio.models import wav2vec2_model

    return wav2vec2_model(**_torchaudio_kwargs(config), aux_num_out=None)


def torchaudio_wavlm_model(config: ModelConfig) -> nn.Module:
    """torchaudio's WavLM (what torchaudio.models.wavlm_base builds) for a WavLM `config`."""
    from torchaudio.models import wavlm_model

    enc = config.encoder
    if config.family != "wavlm":
        raise ValueError(f"torchaudio_wavlm_model needs a wavlm config, found family '{config.family}'")
    return wavlm_model(
        **_torchaudio_kwargs(config), encoder_num_buckets=enc.relative_position_buckets,
        encoder_max_distance=enc.relative_position_max_distance, aux_num_out=None,
    )  # fmt: skip


def transformers_model(config: ModelConfig, *, head: str = "Model", **overrides) -> nn.Module:
    """A randomly initialised transformers model of `config`'s family (SDPA attention where the
    class has it), in eval mode: head "Model" (the backbone) or a For* suffix ("ForCTC",
    "ForSequenceClassification", "ForPreTraining", ...). `overrides` go to the config class."""
    import transformers

    from speechssl.interop.transformers_io import ARCHITECTURES, config_to_transformers

    kwargs = config_to_transformers(config)
    kwargs.pop("architectures")
    kwargs.pop("model_type")
    kwargs.update(overrides)
    prefix = ARCHITECTURES[config.family][: -len("Model")]
    hf_config = getattr(transformers, f"{prefix}Config")(**kwargs)
    hf_config._attn_implementation = "sdpa" if config.family != "wavlm" else "eager"
    return getattr(transformers, f"{prefix}{head}")(hf_config).eval()


def torchaudio_hubert_pretrain(config: PretrainModelConfig) -> nn.Module:
    """torchaudio HuBERTPretrainModel with the architecture, masking and head of `config`
    (single label set, cosine head; unmasked logits only when pred_nomask_weight > 0)."""
    from torchaudio.models import hubert_pretrain_model

    obj, mask = config.hubert, config.mask
    if obj is None or obj.head != "cosine" or len(obj.num_classes) != 1:
        raise ValueError("torchaudio's HuBERTPretrainModel has one label set and the cosine head")
    return hubert_pretrain_model(
        **_torchaudio_kwargs(config.model), mask_prob=mask.mask_prob, mask_selection="static", mask_other=0.0,
        mask_length=mask.mask_length, no_mask_overlap=mask.no_overlap, mask_min_space=mask.min_space,
        mask_channel_prob=mask.channel_prob, mask_channel_selection="static", mask_channel_other=0.0,
        mask_channel_length=mask.channel_length, no_mask_channel_overlap=mask.channel_no_overlap,
        mask_channel_min_space=mask.channel_min_space, skip_masked=obj.pred_masked_weight == 0,
        skip_nomask=obj.pred_nomask_weight == 0, num_classes=obj.num_classes[0], final_dim=obj.final_dim,
        feature_grad_mult=config.model.frontend.feature_grad_mult,
    )  # fmt: skip


def transformers_pretrain(config: PretrainModelConfig) -> nn.Module:
    """transformers Wav2Vec2ForPreTraining (SDPA attention) with the architecture and
    quantizer of `config`."""
    import transformers

    from speechssl.testing.models import hf_config_dict

    obj = config.wav2vec2
    if obj is None:
        raise ValueError("transformers_pretrain needs a wav2vec2 PretrainModelConfig")
    q = obj.quantizer
    kwargs = hf_config_dict(config.model)
    kwargs.update(
        num_codevector_groups=q.num_groups, num_codevectors_per_group=q.num_vars,
        codevector_dim=q.codevector_dim, proj_codevector_dim=obj.final_dim, num_negatives=obj.num_negatives,
        contrastive_logits_temperature=obj.logit_temp, diversity_loss_weight=obj.diversity_weight,
        feat_quantizer_dropout=obj.dropout_features, mask_time_prob=max(config.mask.mask_prob, 0.05),
    )  # fmt: skip
    hf_config = transformers.Wav2Vec2Config(**kwargs)
    hf_config._attn_implementation = "sdpa"
    return transformers.Wav2Vec2ForPreTraining(hf_config)
