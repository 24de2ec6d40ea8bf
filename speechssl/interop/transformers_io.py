"""transformers directories (config.json + weights) <-> speechssl ModelConfig + state dict.

Our state-dict keys are HubertModel / Wav2Vec2Model / WavLMModel / UniSpeechSatModel /
Data2VecAudioModel's own, so import strips the backbone prefix of a For* model ("hubert.",
"wav2vec2.", "wavlm.", "unispeech_sat.", "data2vec_audio.") and renames old-style
weight-norm keys (weight_g / weight_v) to the parametrization keys transformers 5.x writes.
Reading needs neither transformers nor any code from the directory: config.json
is JSON, weights are safetensors or a `torch.load(weights_only=True)` file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from speechssl.data.audio import SAMPLE_RATE
from speechssl.interop.safe_pickle import load_state_dict_file
from speechssl.models.checkpoint import load_safetensors
from speechssl.models.config import ConvFrontendConfig, EncoderConfig, ModelConfig
from speechssl.outputs import output_directory

# config.json model_type -> our family, and the family's transformers classes (base model,
# the attribute its For* models keep it under).
MODEL_TYPES = {
    "hubert": "hubert",
    "wav2vec2": "wav2vec2",
    "wavlm": "wavlm",
    "unispeech-sat": "unispeech_sat",
    "data2vec-audio": "data2vec_audio",
}
SUPPORTED_MODEL_TYPES = tuple(MODEL_TYPES)
ARCHITECTURES = {
    "hubert": "HubertModel",
    "wav2vec2": "Wav2Vec2Model",
    "wavlm": "WavLMModel",
    "unispeech_sat": "UniSpeechSatModel",
    "data2vec_audio": "Data2VecAudioModel",
}
# Weights of heads on top of the backbone, returned separately: the pretraining objective's
# (Wav2Vec2ForPreTraining / UniSpeechSatForPreTraining: quantizer, projections, UniSpeech-SAT's
# speaker projection and cluster embeddings) and every other head of a For* model (CTC lm_head,
# sequence / frame classification projector + classifier + layer_weights, x-vector TDNN, ...).
PRETRAINING_PREFIXES = (
    "quantizer.",
    "project_q.",
    "project_hid.",
    "speaker_proj.",
    "label_embeddings_concat",
    "layer_norm_for_extract.",
)
FINETUNING_PREFIXES = ("lm_head.",)
_PREFIXES = ("hubert.", "wav2vec2.", "wavlm.", "unispeech_sat.", "data2vec_audio.")
_WEIGHT_NORM_RENAMES = {
    "encoder.pos_conv_embed.conv.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv_embed.conv.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
}
_ACTIVATION_NAMES = {
    "gelu": "gelu",
    "relu": "relu",
    "swish": "swish",
    "silu": "swish",
    "gelu_new": "gelu_new",
}


def is_transformers_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and any(
        (path / name).is_file()
        for name in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    )


# Our ModelConfig fields as config.json names them (for errors about a config that does not fit).
HF_NAMES = {
    "num_layers": "num_hidden_layers",
    "embed_dim": "hidden_size",
    "ffn_dim": "intermediate_size",
    "pos_conv_kernel": "num_conv_pos_embeddings",
    "conv_dim": "conv_dim",
    "conv_kernel": "conv_kernel",
}


def hf_names(config: ModelConfig) -> dict[str, str]:
    """HF_NAMES for this family: data2vec-audio's kernel is `conv_pos_kernel_size` (its
    `num_conv_pos_embeddings` is the depth of the conv stack)."""
    if config.family == "data2vec_audio":
        return {**HF_NAMES, "pos_conv_kernel": "conv_pos_kernel_size"}
    return HF_NAMES


class _Reader:
    """Typed reads of config.json values: a wrong type, a negative size or a string for an
    int is a one-line error naming the file and the key (never a traceback from deep inside)."""

    def __init__(self, hf: dict[str, Any], source: str):
        self.hf, self.source = hf, source

    def error(self, key: str, expected: str) -> ValueError:
        return ValueError(f"{self.source}: '{key}' must be {expected}, found {self.hf.get(key)!r}")

    def require(self, key: str) -> Any:
        if key not in self.hf:
            raise ValueError(f"{self.source}: config.json has no '{key}'")
        return self.hf[key]

    def int(self, key: str, default: Any = None, *, minimum: int = 1) -> int:
        value = self.require(key) if default is None else self.hf.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self.error(key, f"an integer >= {minimum}")
        return value

    def ints(self, key: str) -> list[int]:
        value = self.require(key)
        if (
            not isinstance(value, list)
            or not value
            or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in value)
        ):
            raise self.error(key, "a non-empty list of positive integers")
        return value

    def float(self, key: str, default: float, *, low: float, high: float, open_high: bool = False) -> float:
        value = self.hf.get(key, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < low or value > high or (open_high and value == high):
            raise self.error(key, f"a number in [{low}, {high}{')' if open_high else ']'}")
        return float(value)

    def bool(self, key: str, default: bool) -> bool:
        value = self.hf.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, "true or false")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...] | dict[str, str]) -> str:
        value = self.hf.get(key, default)
        if not isinstance(value, str) or value not in choices:
            raise self.error(key, f"one of {', '.join(choices)}")
        return value


def config_from_transformers(
    hf: dict[str, Any], *, source: str = "config.json", normalize: bool = False
) -> ModelConfig:
    """Map a HubertConfig / Wav2Vec2Config / WavLMConfig / UniSpeechSatConfig / Data2VecAudioConfig
    dict onto ModelConfig; refuse what we cannot compute and any value of the wrong type or range,
    naming the key."""
    if not isinstance(hf, dict):
        raise ValueError(f"{source}: expected a JSON object at the top level, found {type(hf).__name__}")
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{source}: model_type '{model_type}' is not supported; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    read = _Reader(hf, source)
    unsupported = {
        "feat_extract_activation": hf.get("feat_extract_activation", "gelu") != "gelu",
        "conv_pos_batch_norm": read.bool("conv_pos_batch_norm", False),
        "feat_proj_layer_norm": not read.bool("feat_proj_layer_norm", True),
        "add_adapter": read.bool("add_adapter", False),
        "adapter_attn_dim": hf.get("adapter_attn_dim") is not None,
    }
    bad = [k for k, v in unsupported.items() if v]
    if bad:
        raise ValueError(
            f"{source}: unsupported transformers option(s): {', '.join(f'{k}={hf.get(k)!r}' for k in bad)}"
        )
    family = MODEL_TYPES[model_type]
    activation = read.choice("hidden_act", "gelu", _ACTIVATION_NAMES)
    if family == "data2vec_audio":  # always a layer-norm conv stack and a post-LN encoder
        norm, stable = "layer", False
    else:
        norm = read.choice("feat_extract_norm", "group", ("group", "layer"))
        stable = read.bool("do_stable_layer_norm", False)
    conv_dim, conv_kernel, conv_stride = (
        read.ints("conv_dim"),
        read.ints("conv_kernel"),
        read.ints("conv_stride"),
    )
    if not len(conv_dim) == len(conv_kernel) == len(conv_stride):
        raise ValueError(
            f"{source}: 'conv_dim', 'conv_kernel' and 'conv_stride' must have the same length, "
            f"found {len(conv_dim)}, {len(conv_kernel)} and {len(conv_stride)}"
        )
    if "num_feat_extract_layers" in hf and read.int("num_feat_extract_layers") != len(conv_dim):
        raise read.error("num_feat_extract_layers", f"the length of 'conv_dim' ({len(conv_dim)})")
    hidden, heads = read.int("hidden_size"), read.int("num_attention_heads")
    groups = read.int("num_conv_pos_embedding_groups", 16)
    if hidden % heads:
        raise read.error("num_attention_heads", f"a divisor of hidden_size ({hidden})")
    if hidden % groups:
        raise read.error("num_conv_pos_embedding_groups", f"a divisor of hidden_size ({hidden})")
    position: dict[str, Any] = {}
    if family == "data2vec_audio":  # num_conv_pos_embeddings is the depth of the conv stack here
        position = dict(
            pos_conv_type="layer_norm",
            pos_conv_kernel=read.int("conv_pos_kernel_size", 19),
            pos_conv_depth=read.int("num_conv_pos_embeddings", 5),
        )
    else:
        position = dict(pos_conv_kernel=read.int("num_conv_pos_embeddings", 128))
    if family == "wavlm":
        buckets = read.int("num_buckets", 320, minimum=4)
        distance = read.hf.get("max_bucket_distance", 800)
        if isinstance(distance, int) and not isinstance(distance, bool) and distance <= buckets // 4:
            stated = "" if "num_buckets" in read.hf else ", transformers' default: config.json omits it"
            raise read.error(
                "max_bucket_distance",
                f"an integer > num_buckets // 4 = {buckets // 4} (num_buckets {buckets}{stated})",
            )
        position.update(
            relative_position_buckets=buckets,
            relative_position_max_distance=read.int("max_bucket_distance", 800, minimum=buckets // 4 + 1),
        )
    frontend = ConvFrontendConfig(
        conv_dim=conv_dim,
        conv_kernel=conv_kernel,
        conv_stride=conv_stride,
        conv_bias=read.bool("conv_bias", False),
        mode="group_norm" if norm == "group" else "layer_norm",
        feature_grad_mult=1.0,
    )
    encoder = EncoderConfig(
        embed_dim=hidden,
        num_layers=read.int("num_hidden_layers"),
        num_heads=heads,
        ffn_dim=read.int("intermediate_size"),
        layer_norm_first=stable,
        pos_conv_groups=groups,
        **position,
        dropout=read.float("hidden_dropout", 0.1, low=0.0, high=1.0, open_high=True),
        attention_dropout=read.float("attention_dropout", 0.1, low=0.0, high=1.0, open_high=True),
        activation_dropout=read.float("activation_dropout", 0.1, low=0.0, high=1.0, open_high=True),
        feature_proj_dropout=read.float("feat_proj_dropout", 0.0, low=0.0, high=1.0, open_high=True),
        layerdrop=read.float("layerdrop", 0.1, low=0.0, high=1.0, open_high=True),
        activation=_ACTIVATION_NAMES[activation],
        layer_norm_eps=read.float("layer_norm_eps", 1e-5, low=0.0, high=1.0),
    )
    return ModelConfig(family=family, frontend=frontend, encoder=encoder, normalize_waveform=normalize)


def config_to_transformers(config: ModelConfig) -> dict[str, Any]:
    """ModelConfig -> config.json dict for the family's transformers model (conv frontend, no pruning)."""
    fe, enc = config.frontend, config.encoder
    if not isinstance(fe, ConvFrontendConfig):
        raise ValueError("transformers has no fbank frontend: only conv-frontend models can be exported")
    if enc.layer_num_heads is not None or enc.layer_ffn_dims is not None:
        raise ValueError(
            "transformers has no per-layer head counts / FFN widths: cannot export a pruned model"
        )
    model_type = next(t for t, f in MODEL_TYPES.items() if f == config.family)
    position: dict[str, Any] = {"num_conv_pos_embeddings": enc.pos_conv_kernel}
    if config.family == "data2vec_audio":
        if fe.mode != "layer_norm" or enc.layer_norm_first:
            raise ValueError(
                "transformers' Data2VecAudioModel has a layer-norm conv frontend and a post-LN encoder only: "
                f"cannot export frontend mode '{fe.mode}' with layer_norm_first={enc.layer_norm_first}"
            )
        position = {
            "num_conv_pos_embeddings": enc.pos_conv_depth,
            "conv_pos_kernel_size": enc.pos_conv_kernel,
        }
    if config.family == "wavlm":
        position.update(
            num_buckets=enc.relative_position_buckets, max_bucket_distance=enc.relative_position_max_distance
        )
    return {
        "architectures": [ARCHITECTURES[config.family]],
        "model_type": model_type,
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
        **position,
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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None


def _read_weights(path: Path) -> dict[str, Tensor]:
    if (path / "model.safetensors").is_file():
        return load_safetensors(path / "model.safetensors")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        data = _read_json(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{index}: expected a 'weight_map' object of tensor name -> shard file")
        state: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if Path(shard).name != shard or shard in (".", ".."):
                raise ValueError(f"{index}: shard '{shard}' is not a file name in {path}")
            if not (path / shard).is_file():
                raise FileNotFoundError(f"{index}: shard {path / shard} does not exist")
            state.update(load_safetensors(path / shard))
        return state
    # pickle-based format: tensors only, never arbitrary objects (refused naming the file)
    return load_state_dict_file(path / "pytorch_model.bin")


def split_transformers_state(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """HF keys -> (backbone state with our keys, {"pretraining": {...}, "finetuning": {...}} head
    weights under transformers' names). In a For* model (its keys carry a backbone prefix) every
    key outside the backbone is a head: pretraining ones by name, all others fine-tuning heads."""
    backbone: dict[str, Tensor] = {}
    extras: dict[str, Any] = {"pretraining": {}, "finetuning": {}}
    prefixed = any(key.startswith(_PREFIXES) for key in state)
    for key, value in state.items():
        if key.startswith(PRETRAINING_PREFIXES):
            extras["pretraining"][key] = value
            continue
        prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
        if key.startswith(FINETUNING_PREFIXES) or (prefixed and prefix is None):
            extras["finetuning"][key] = value
            continue
        if prefix is not None:
            key = key[len(prefix) :]
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
        raise FileNotFoundError(
            f"{path} is not a transformers model dir (needs config.json and model weights)"
        )
    hf = _read_json(path / "config.json")
    normalize = False
    preprocessor = path / "preprocessor_config.json"
    if preprocessor.is_file():
        pre = _read_json(preprocessor)
        if not isinstance(pre, dict):
            raise ValueError(
                f"{preprocessor}: expected a JSON object at the top level, found {type(pre).__name__}"
            )
        normalize = _Reader(pre, str(preprocessor)).bool("do_normalize", False)
    config = config_from_transformers(hf, source=str(path / "config.json"), normalize=normalize)
    backbone, extras = split_transformers_state(_read_weights(path))
    return config, backbone, extras


def complete_masked_spec_embed(state: dict[str, Tensor], model_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers omits masked_spec_embed when mask_time_prob == 0: our init's uniform draw then,
    from a fixed seed, so that every load of the same files gives the same weights (an
    experiment's upstream fingerprint, a feature cache key)."""
    if "masked_spec_embed" not in state and "masked_spec_embed" in model_state:
        fixed = torch.Generator().manual_seed(0)
        fill = torch.empty_like(model_state["masked_spec_embed"]).uniform_(generator=fixed)
        state = {**state, "masked_spec_embed": fill}
    return state


def save_transformers(
    model_or_state: Any,
    config: ModelConfig,
    path: str | Path,
    *,
    command: str = "export",
    overwrite: bool = False,
) -> Path:
    """Write a transformers directory (config.json, preprocessor_config.json, model.safetensors)
    that the family's transformers model (HubertModel, Wav2Vec2Model, WavLMModel, UniSpeechSatModel,
    Data2VecAudioModel; AutoModel) loads with from_pretrained; atomic (temp dir, then rename) as
    `command`'s output (`speechssl.outputs.output_directory`: a re-run replaces its own files and
    keeps anything else already there); the CLI checks `path` first (`check_output`)."""
    path = Path(path)
    hf_config = config_to_transformers(config)
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    preprocessor = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": SAMPLE_RATE,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": config.normalize_waveform,
        "return_attention_mask": True,
    }
    with output_directory(path, command, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        (tmp / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return path
