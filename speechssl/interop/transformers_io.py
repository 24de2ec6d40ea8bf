"""transformers directories (config.json + weights) <-> speechssl ModelConfig + state dict.

Our state-dict keys are HubertModel / Wav2Vec2Model's own, so import strips
the "hubert." / "wav2vec2." prefix and renames old-style weight-norm keys
(weight_g / weight_v) to the parametrization keys transformers 5.x writes.
Reading needs neither transformers nor any code from the directory: config.json
is JSON, weights are safetensors or a `torch.load(weights_only=True)` file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from speechssl.io import atomic_directory
from speechssl.models.config import ConvFrontendConfig, EncoderConfig, ModelConfig

SUPPORTED_MODEL_TYPES = ("hubert", "wav2vec2")
# Weights of heads on top of the backbone, returned separately (Wav2Vec2ForPreTraining's
# quantizer and projections for the wav2vec 2.0 objective; CTC heads of fine-tuned models).
PRETRAINING_PREFIXES = ("quantizer.", "project_q.", "project_hid.")
FINETUNING_PREFIXES = ("lm_head.",)
_PREFIXES = ("hubert.", "wav2vec2.")
_WEIGHT_NORM_RENAMES = {
    "encoder.pos_conv_embed.conv.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv_embed.conv.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
}
_ACTIVATION_NAMES = {"gelu": "gelu", "relu": "relu", "swish": "swish", "silu": "swish", "gelu_new": "gelu_new"}


def is_transformers_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and any(
        (path / name).is_file()
        for name in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    )


def _require(hf: dict[str, Any], key: str, source: str) -> Any:
    if key not in hf:
        raise ValueError(f"{source}: config.json has no '{key}'")
    return hf[key]


def config_from_transformers(hf: dict[str, Any], *, source: str = "config.json", normalize: bool = False) -> ModelConfig:
    """Map a HubertConfig / Wav2Vec2Config dict onto ModelConfig; refuse what we cannot compute."""
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{source}: model_type '{model_type}' is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    unsupported = {
        "feat_extract_activation": hf.get("feat_extract_activation", "gelu") != "gelu",
        "conv_pos_batch_norm": bool(hf.get("conv_pos_batch_norm", False)),
        "feat_proj_layer_norm": not hf.get("feat_proj_layer_norm", True),
        "add_adapter": bool(hf.get("add_adapter", False)),
        "adapter_attn_dim": hf.get("adapter_attn_dim") is not None,
        "hidden_act": hf.get("hidden_act", "gelu") not in _ACTIVATION_NAMES,
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(f"{source}: unsupported transformers option(s): {', '.join(f'{k}={hf.get(k)!r}' for k in bad)}")
    norm = hf.get("feat_extract_norm", "group")
    if norm not in ("group", "layer"):
        raise ValueError(f"{source}: feat_extract_norm must be 'group' or 'layer', found {norm!r}")
    frontend = ConvFrontendConfig(
        conv_dim=list(_require(hf, "conv_dim", source)),
        conv_kernel=list(_require(hf, "conv_kernel", source)),
        conv_stride=list(_require(hf, "conv_stride", source)),
        conv_bias=bool(hf.get("conv_bias", False)),
        mode="group_norm" if norm == "group" else "layer_norm",
        feature_grad_mult=1.0,
    )
    encoder = EncoderConfig(
        embed_dim=_require(hf, "hidden_size", source),
        num_layers=_require(hf, "num_hidden_layers", source),
        num_heads=_require(hf, "num_attention_heads", source),
        ffn_dim=_require(hf, "intermediate_size", source),
        layer_norm_first=bool(hf.get("do_stable_layer_norm", False)),
        pos_conv_kernel=hf.get("num_conv_pos_embeddings", 128),
        pos_conv_groups=hf.get("num_conv_pos_embedding_groups", 16),
        dropout=float(hf.get("hidden_dropout", 0.1)),
        attention_dropout=float(hf.get("attention_dropout", 0.1)),
        activation_dropout=float(hf.get("activation_dropout", 0.1)),
        feature_proj_dropout=float(hf.get("feat_proj_dropout", 0.0)),
        layerdrop=float(hf.get("layerdrop", 0.1)),
        activation=_ACTIVATION_NAMES[hf.get("hidden_act", "gelu")],
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
    )
    return ModelConfig(family=model_type, frontend=frontend, encoder=encoder, normalize_waveform=normalize)


def config_to_transformers(config: ModelConfig) -> dict[str, Any]:
    """ModelConfig -> config.json dict for HubertModel / Wav2Vec2Model (conv frontend, no pruning)."""
    fe, enc = config.frontend, config.encoder
    if not isinstance(fe, ConvFrontendConfig):
        raise ValueError("transformers has no fbank frontend: only conv-frontend models can be exported")
    if enc.layer_num_heads is not None or enc.layer_ffn_dims is not None:
        raise ValueError("transformers has no per-layer head counts / FFN widths: cannot export a pruned model")
    architecture = "HubertModel" if config.family == "hubert" else "Wav2Vec2Model"
    return {
        "architectures": [architecture],
        "model_type": config.family,
        "conv_dim": list(fe.conv_dim),
        "conv_kernel": list(fe.conv_kernel),
        "conv_stride": list(fe.conv_stride),
        "num_feat_extract_layers": len(fe.conv_dim),
        "conv_bias": fe.conv_bias,
        "feat_extract_norm": "group" if fe.mode == "group_norm" else "layer",
        "feat_extract_activation": "gelu",
        "hidden_size": enc.embed_dim,
        "num_hidden_layers": enc.num_layers,
        "num_attention_heads": enc.num_heads,
        "intermediate_size": enc.ffn_dim,
        "do_stable_layer_norm": enc.layer_norm_first,
        "num_conv_pos_embeddings": enc.pos_conv_kernel,
        "num_conv_pos_embedding_groups": enc.pos_conv_groups,
        "hidden_dropout": enc.dropout,
        "attention_dropout": enc.attention_dropout,
        "activation_dropout": enc.activation_dropout,
        "feat_proj_dropout": enc.feature_proj_dropout,
        "layerdrop": enc.layerdrop,
        "hidden_act": enc.activation,
        "layer_norm_eps": enc.layer_norm_eps,
        "feat_proj_layer_norm": True,
        "mask_time_prob": 0.05,  # so that transformers creates masked_spec_embed
    }


def _read_weights(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if (path / "model.safetensors").is_file():
        return load_file(str(path / "model.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, Tensor] = {}
        for shard in shards:
            state.update(load_file(str(path / shard)))
        return state
    # pickle-based format: tensors only, never arbitrary objects
    return torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)


def split_transformers_state(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """HF keys -> (backbone state with our keys, {"pretraining": {...}, "finetuning": {...}} head
    weights under transformers' names)."""
    backbone: dict[str, Tensor] = {}
    extras: dict[str, Any] = {"pretraining": {}, "finetuning": {}}
    for key, value in state.items():
        if key.startswith(PRETRAINING_PREFIXES):
            extras["pretraining"][key] = value
            continue
        if key.startswith(FINETUNING_PREFIXES):
            extras["finetuning"][key] = value
            continue
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        backbone[_WEIGHT_NORM_RENAMES.get(key, key)] = value
    return backbone, extras


def load_transformers(path: str | Path) -> tuple[ModelConfig, dict[str, Tensor], dict[str, Any]]:
    """Read a transformers model directory -> (ModelConfig, backbone state dict, extra weights).

    extras["pretraining"] keeps transformers' names (`quantizer.codevectors`,
    `quantizer.weight_proj.weight`, `project_q.weight`, `project_hid.weight`, ...);
    extras["finetuning"] holds `lm_head.*` of CTC models.
    `normalize_waveform` comes from preprocessor_config.json's `do_normalize` when present.
    """
    path = Path(path)
    if not is_transformers_dir(path):
        raise FileNotFoundError(f"{path} is not a transformers model dir (needs config.json and model weights)")
    hf = json.loads((path / "config.json").read_text())
    normalize = False
    preprocessor = path / "preprocessor_config.json"
    if preprocessor.is_file():
        normalize = bool(json.loads(preprocessor.read_text()).get("do_normalize", False))
    config = config_from_transformers(hf, source=str(path / "config.json"), normalize=normalize)
    backbone, extras = split_transformers_state(_read_weights(path))
    return config, backbone, extras


def complete_masked_spec_embed(state: dict[str, Tensor], model_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers omits masked_spec_embed when mask_time_prob == 0; keep our init then."""
    if "masked_spec_embed" not in state and "masked_spec_embed" in model_state:
        state = {**state, "masked_spec_embed": model_state["masked_spec_embed"]}
    return state


def save_transformers(model_or_state: Any, config: ModelConfig, path: str | Path) -> Path:
    """Write a transformers directory (config.json, preprocessor_config.json, model.safetensors)
    that HubertModel / Wav2Vec2Model.from_pretrained loads; atomic (temp dir, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    hf_config = config_to_transformers(config)
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    preprocessor = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": 16000,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": config.normalize_waveform,
        "return_attention_mask": True,
    }
    with atomic_directory(path) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return path
