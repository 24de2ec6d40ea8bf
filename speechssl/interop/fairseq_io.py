"""fairseq wav2vec 2.0 / HuBERT / data2vec-audio / UniSpeech-SAT checkpoints <-> our config and state dict.

fairseq is not a dependency: the `.pt` file is read with the weights-only
allow-list of `safe_pickle`, the config (argparse args in old files,
`cfg.model` / `cfg.task` in newer ones) is mapped onto `ModelConfig`, and
parameter names are renamed through one explicit table built from the config
(`key_map`). Because the table lists every expected key, a file with a key we
do not know, or without one we need, is an error naming those keys.

Our names are transformers' HubertModel / Wav2Vec2Model / WavLMModel /
UniSpeechSatModel / Data2VecAudioModel names without their prefix; the fairseq
names are those of fairseq's (and s3prl's fairseq-free copy of) `HubertModel` /
`Wav2Vec2Model` / `Data2VecAudioModel`, of microsoft/UniSpeech's fairseq fork
(`UniSpeechSATModel`) and of unilm's WavLM (the same names plus the relative
position bias: `self_attn.relative_attention_bias`, `self_attn.grep_linear`,
`self_attn.grep_a`).

data2vec-audio (fairseq `data2vec_audio`, data2vec 1.0) is read; its EMA teacher
(`_ema`, a second copy of the encoder used only as the pretraining target) is
dropped, since nothing here continues data2vec pretraining and it doubles the
memory. data2vec 2.0 (`data2vec_multi`) is a different network and is refused.
"""

from __future__ import annotations

import ast
import logging
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from speechssl.data.audio import SAMPLE_RATE
from speechssl.errors import SpeechSSLError
from speechssl.interop.safe_pickle import load_checkpoint, to_plain
from speechssl.models.config import ConvFrontendConfig, EncoderConfig, ModelConfig

__all__ = [
    "CheckpointKeyError",
    "parse_conv_layers",
    "format_conv_layers",
    "model_config_from_fairseq",
    "fairseq_cfg_from_model_config",
    "key_map",
    "fairseq_to_ours",
    "ours_to_fairseq",
    "fairseq_drops_projection",
    "load_fairseq",
    "to_fairseq",
    "config_from_checkpoint",
    "PRETRAINING_PREFIXES",
]

logger = logging.getLogger(__name__)

StateDict = dict[str, Tensor]
PosConvStyle = Literal["legacy", "parametrizations"]

# Parameters fairseq's pretraining model holds beyond the encoder: the wav2vec 2.0
# quantizer and projections, HuBERT's label embeddings and final projection.
# They go to `extras["pretraining"]` under their fairseq names.
PRETRAINING_PREFIXES = (
    "quantizer.",
    "input_quantizer.",
    "project_q.",
    "project_inp.",
    "final_proj.",
    "label_embs_concat",
    "target_glu.",
    "spk_proj.",  # UniSpeech-SAT's utterance-mixing speaker projection
    "encoder.layer_norm_for_extract.",  # UniSpeech-SAT Large: LayerNorm of its speaker-loss layer
)
EMA_KEY = "_ema"  # data2vec's EMA teacher: a dict of encoder weights, dropped on import
_FINETUNE_PREFIX = "w2v_encoder.w2v_model."  # fairseq *_ctc / *_seq2seq wrap the SSL model here

DEFAULT_CONV_LAYERS = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"

# fairseq Wav2Vec2Config / HubertConfig defaults for the fields we read; old
# argparse checkpoints omit fields that were added later.
_FAIRSEQ_DEFAULTS: dict[str, Any] = {
    "extractor_mode": "default",
    "conv_feature_layers": DEFAULT_CONV_LAYERS,
    "conv_bias": False,
    "feature_grad_mult": 1.0,
    "encoder_layers": 12,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "activation_fn": "gelu",
    "layer_type": "transformer",
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.0,
    "encoder_layerdrop": 0.0,
    "dropout_input": 0.0,
    "layer_norm_first": False,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "pos_conv_depth": 1,
    "relative_position_embedding": False,
    "num_buckets": 320,
    "max_distance": 1280,
    "gru_rel_pos": False,
}
# fairseq model name (`_name`) -> our family; *_ctc / *_seq2seq fine-tunings wrap one of these.
FAIRSEQ_NAMES = {
    "hubert": "hubert",
    "wav2vec2": "wav2vec2",
    "data2vec_audio": "data2vec_audio",
    "unispeech_sat": "unispeech_sat",
}
# fairseq task written with each family (the pretraining task its model was registered with)
_TASK_NAMES = {
    "hubert": "hubert_pretraining",
    "wav2vec2": "audio_pretraining",
    "data2vec_audio": "audio_pretraining",
    "unispeech_sat": "unispeech_sat_pretraining",
}


class CheckpointKeyError(SpeechSSLError, KeyError):
    """Missing or unexpected parameter names; the message lists them."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


# --------------------------------------------------------------------------- config


def parse_conv_layers(spec: str, *, source: str = "conv_feature_layers") -> list[tuple[int, int, int]]:
    """fairseq's `conv_feature_layers` string -> [(dim, kernel, stride), ...].

    fairseq eval()s this string; we accept only its grammar (lists of int
    3-tuples joined by `+` and repeated by `* int`) through the ast.
    """

    def fail(why: str) -> ValueError:
        return ValueError(f"{source}: cannot parse conv_feature_layers {spec!r}: {why}")

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
                return left + right
            if isinstance(node.op, ast.Mult) and isinstance(left, list) and type(right) is int:
                return left * right
            if isinstance(node.op, ast.Mult) and type(left) is int and isinstance(right, list):
                return right * left
            raise fail("only list + list and list * int are allowed")
        raise fail(f"unsupported expression {type(node).__name__}")

    try:
        tree = ast.parse(spec.strip(), mode="eval")
    except SyntaxError as err:
        raise fail(str(err)) from None
    layers = value(tree.body)
    if not isinstance(layers, list) or not layers:
        raise fail("expected a non-empty list")
    for layer in layers:
        if not (isinstance(layer, tuple) and len(layer) == 3 and all(type(v) is int for v in layer)):
            raise fail(f"expected (dim, kernel, stride) int tuples, found {layer!r}")
    return layers


def format_conv_layers(conv_dim: list[int], conv_kernel: list[int], conv_stride: list[int]) -> str:
    """Inverse of parse_conv_layers, in fairseq's compact `[(d,k,s)] * n + ...` form."""
    runs: list[tuple[tuple[int, int, int], int]] = []
    for layer in zip(conv_dim, conv_kernel, conv_stride):
        if runs and runs[-1][0] == layer:
            runs[-1] = (layer, runs[-1][1] + 1)
        else:
            runs.append((layer, 1))
    parts = [f"[({d},{k},{s})]" + (f" * {n}" if n > 1 else "") for (d, k, s), n in runs]
    return " + ".join(parts)


def _family(name: str, source: str) -> str:
    if name in FAIRSEQ_NAMES:
        return FAIRSEQ_NAMES[name]
    if name.startswith("hubert"):
        return "hubert"
    if name.startswith("wav2vec2") or name == "wav2vec_ctc" or name == "wav2vec2_ctc":
        return "wav2vec2"
    if name.startswith("data2vec"):
        raise ValueError(
            f"{source}: unsupported fairseq model '{name}' (data2vec 2.0 is a different network; of"
            " data2vec only 1.0 audio, 'data2vec_audio', is supported)"
        )
    raise ValueError(
        f"{source}: unsupported fairseq model '{name}' "
        f"(supported: {', '.join(FAIRSEQ_NAMES)} and their _ctc fine-tunings)"
    )


def _int(cfg: dict[str, Any], key: str, source: str) -> int:
    """An integer field of a fairseq/unilm cfg: an int (or a float with no fraction, as old argparse
    configs write them); anything else is an error naming the key, never silently truncated."""
    value = cfg[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{source}: {key} must be an integer, found {value!r}")
    return value


def _positional_fields(cfg: dict[str, Any], family: str, source: str) -> dict[str, Any]:
    """EncoderConfig fields of the positional encoders: the conv (one weight-normed conv, or
    data2vec's stack of `pos_conv_depth` layer-normed convs of kernel max(3, conv_pos // depth),
    as fairseq's TransformerEncoder builds it) and WavLM's relative position bias."""
    depth = _int(cfg, "pos_conv_depth", source)
    if depth < 1:
        raise ValueError(f"{source}: pos_conv_depth must be >= 1, found {depth}")
    if (family == "data2vec_audio") != (depth > 1):
        raise ValueError(
            f"{source}: unsupported fairseq model '{family}' with pos_conv_depth {depth} (data2vec_audio has"
            " a stack of pos_conv_depth > 1 layer-normed convs; the other families one weight-normed conv)"
        )
    fields: dict[str, Any] = {"pos_conv_kernel": _int(cfg, "conv_pos", source)}
    if depth > 1:
        fields.update(
            pos_conv_type="layer_norm",
            pos_conv_depth=depth,
            pos_conv_kernel=max(3, _int(cfg, "conv_pos", source) // depth),
        )
    relative = bool(cfg["relative_position_embedding"])
    if relative != (family == "wavlm"):
        raise ValueError(
            f"{source}: relative_position_embedding={relative} is not supported for {family} (only WavLM"
            " has a relative position bias)"
        )
    if relative:
        if not bool(cfg["gru_rel_pos"]):
            raise ValueError(f"{source}: gru_rel_pos=False is not supported (WavLM's bias is always gated)")
        fields.update(
            relative_position_buckets=_int(cfg, "num_buckets", source),
            relative_position_max_distance=_int(cfg, "max_distance", source),
        )
    return fields


def _check_supported(cfg: dict[str, Any], source: str) -> None:
    """Options of fairseq / unilm / UniSpeech-SAT models that change the network and that we do not build."""
    if cfg["layer_type"] != "transformer":
        raise ValueError(f"{source}: layer_type '{cfg['layer_type']}' is not supported (only 'transformer')")
    structure = cfg.get("structure_type", "transformer")  # UniSpeech-SAT's name for it
    if structure != "transformer":
        raise ValueError(f"{source}: structure_type '{structure}' is not supported (only 'transformer')")
    expand = cfg.get("expand_attention_head_size", -1)  # UniSpeech-SAT: wider q/k heads
    if expand not in (-1, None):
        raise ValueError(f"{source}: expand_attention_head_size {expand} is not supported (only -1)")
    if cfg.get("streaming"):
        raise ValueError(f"{source}: streaming (chunked attention) models are not supported")


def model_config_from_fairseq(
    model_cfg: dict[str, Any], task_cfg: dict[str, Any], *, family: str, source: str = "<cfg>"
) -> ModelConfig:
    """fairseq `cfg.model` (+ `cfg.task` for `normalize`) -> ModelConfig (inference settings kept).

    Also reads unilm's flat WavLMConfig dict (same field names; `normalize` inside it)."""
    cfg = {**_FAIRSEQ_DEFAULTS, **{k: v for k, v in model_cfg.items() if v is not None}}
    _check_supported(cfg, source)
    modes = {"default": "group_norm", "layer_norm": "layer_norm"}
    if str(cfg["extractor_mode"]) not in modes:
        raise ValueError(
            f"{source}: unknown extractor_mode '{cfg['extractor_mode']}'; valid: default, layer_norm"
        )
    layers = parse_conv_layers(str(cfg["conv_feature_layers"]), source=source)
    frontend = ConvFrontendConfig(
        conv_dim=[d for d, _, _ in layers],
        conv_kernel=[k for _, k, _ in layers],
        conv_stride=[s for _, _, s in layers],
        conv_bias=bool(cfg["conv_bias"]),
        mode=modes[str(cfg["extractor_mode"])],
        feature_grad_mult=float(cfg["feature_grad_mult"]),
    )
    encoder = EncoderConfig(
        embed_dim=_int(cfg, "encoder_embed_dim", source),
        num_layers=_int(cfg, "encoder_layers", source),
        num_heads=_int(cfg, "encoder_attention_heads", source),
        ffn_dim=_int(cfg, "encoder_ffn_embed_dim", source),
        layer_norm_first=bool(cfg["layer_norm_first"]),
        pos_conv_groups=_int(cfg, "conv_pos_groups", source),
        dropout=float(cfg["dropout"]),
        attention_dropout=float(cfg["attention_dropout"]),
        activation_dropout=float(cfg["activation_dropout"]),
        feature_proj_dropout=float(cfg["dropout_input"]),
        layerdrop=float(cfg["encoder_layerdrop"]),
        activation=str(cfg["activation_fn"]),
        **_positional_fields(cfg, family, source),
    )
    return ModelConfig(
        family=family,  # type: ignore[arg-type]
        frontend=frontend,
        encoder=encoder,
        normalize_waveform=bool(task_cfg.get("normalize", False)),
    )


def _positional_cfg(enc: EncoderConfig, previous: dict[str, Any]) -> dict[str, Any]:
    """Inverse of _positional_fields; an imported conv_pos that gives the same kernel is kept."""
    if enc.pos_conv_type == "weight_norm":
        return {"conv_pos": enc.pos_conv_kernel, "pos_conv_depth": 1}
    if enc.pos_conv_depth < 2:
        raise ValueError(
            "fairseq builds one weight-normed positional conv when pos_conv_depth is 1, not data2vec's"
            f" layer-normed stack: this model's stack of depth {enc.pos_conv_depth} has no fairseq form"
            " (formats that carry it: hf, onnx, torchscript)"
        )
    if enc.pos_conv_kernel < 3:
        raise ValueError(
            f"fairseq's positional conv stack has kernels of at least 3 (max(3, conv_pos // depth));"
            f" this model's is {enc.pos_conv_kernel}"
        )
    conv_pos = previous.get("conv_pos")
    if not (isinstance(conv_pos, int) and max(3, conv_pos // enc.pos_conv_depth) == enc.pos_conv_kernel):
        conv_pos = enc.pos_conv_kernel * enc.pos_conv_depth
    return {"conv_pos": conv_pos, "pos_conv_depth": enc.pos_conv_depth}


def fairseq_cfg_from_model_config(
    config: ModelConfig, previous: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """ModelConfig -> (fairseq `cfg.model`, `cfg.task`) as plain dicts.

    `previous`: the model cfg this model was imported with (keeps data2vec's conv_pos when it
    gives the same kernel). WavLM's fields are written too: unilm's WavLMConfig reads them."""
    front, enc = config.frontend, config.encoder
    if not isinstance(front, ConvFrontendConfig):
        raise ValueError("fairseq models have a conv waveform frontend; this model uses an fbank frontend")
    if enc.layer_num_heads is not None or enc.layer_ffn_dims is not None:
        raise ValueError(
            "fairseq models have the same heads / FFN width in every layer; this model is pruned"
        )
    if enc.layer_norm_eps != 1e-5:
        raise ValueError(f"fairseq layer norms use eps 1e-5; this model uses {enc.layer_norm_eps}")
    model_cfg = {
        "_name": config.family,
        "extractor_mode": "default" if front.mode == "group_norm" else "layer_norm",
        "conv_feature_layers": format_conv_layers(front.conv_dim, front.conv_kernel, front.conv_stride),
        "conv_bias": front.conv_bias,
        "feature_grad_mult": front.feature_grad_mult,
        "encoder_layers": enc.num_layers,
        "encoder_embed_dim": enc.embed_dim,
        "encoder_ffn_embed_dim": enc.ffn_dim,
        "encoder_attention_heads": enc.num_heads,
        "activation_fn": enc.activation,
        "layer_type": "transformer",
        "dropout": enc.dropout,
        "attention_dropout": enc.attention_dropout,
        "activation_dropout": enc.activation_dropout,
        "encoder_layerdrop": enc.layerdrop,
        "dropout_input": enc.feature_proj_dropout,
        "layer_norm_first": enc.layer_norm_first,
        "conv_pos_groups": enc.pos_conv_groups,
        **_positional_cfg(enc, previous or {}),
    }
    if config.family in ("wavlm", "unispeech_sat"):  # both configs have the relative-position fields
        relative = enc.relative_position_buckets > 0
        model_cfg.update(relative_position_embedding=relative, gru_rel_pos=relative)
        if relative:
            model_cfg.update(
                num_buckets=enc.relative_position_buckets, max_distance=enc.relative_position_max_distance
            )
    task_name = _TASK_NAMES.get(config.family, "audio_pretraining")
    task_cfg = {"_name": task_name, "normalize": config.normalize_waveform, "sample_rate": SAMPLE_RATE}
    return model_cfg, task_cfg


# --------------------------------------------------------------------------- keys

_LAYER_RENAMES = {  # ours (transformers) -> fairseq, inside encoder.layers.{i}.
    "attention.q_proj": "self_attn.q_proj",
    "attention.k_proj": "self_attn.k_proj",
    "attention.v_proj": "self_attn.v_proj",
    "attention.out_proj": "self_attn.out_proj",
    "layer_norm": "self_attn_layer_norm",
    "feed_forward.intermediate_dense": "fc1",
    "feed_forward.output_dense": "fc2",
    "final_layer_norm": "final_layer_norm",
}
_POS_CONV_WEIGHT = {  # weight norm (dim=2): magnitude g and direction v
    "legacy": ("weight_g", "weight_v"),
    "parametrizations": ("parametrizations.weight.original0", "parametrizations.weight.original1"),
}


def key_map(
    config: ModelConfig,
    *,
    projection: bool = True,
    ours_pos_conv: PosConvStyle = "parametrizations",
    fairseq_pos_conv: PosConvStyle = "legacy",
) -> dict[str, str]:
    """Every parameter of the encoder: our name -> fairseq name.

    projection: whether the fairseq model has `post_extract_proj` (fairseq
    omits it when the conv width equals encoder_embed_dim). The two
    `*_pos_conv` arguments pick the weight-norm naming on each side.
    """
    front, enc = config.frontend, config.encoder
    if not isinstance(front, ConvFrontendConfig):
        raise ValueError("fairseq key names exist only for the conv waveform frontend")
    pairs: dict[str, str] = {}

    def both(ours: str, theirs: str, params: tuple[str, ...] = ("weight", "bias")) -> None:
        for p in params:
            pairs[f"{ours}.{p}"] = f"{theirs}.{p}"

    for i in range(len(front.conv_dim)):
        ours, theirs = f"feature_extractor.conv_layers.{i}", f"feature_extractor.conv_layers.{i}"
        both(f"{ours}.conv", f"{theirs}.0", ("weight", "bias") if front.conv_bias else ("weight",))
        if front.mode == "layer_norm":  # Sequential(conv, dropout, Sequential(T, Fp32LayerNorm, T), GELU)
            both(f"{ours}.layer_norm", f"{theirs}.2.1")
        elif i == 0:  # "default": Sequential(conv, dropout, Fp32GroupNorm, GELU) in layer 0 only
            both(f"{ours}.layer_norm", f"{theirs}.2")
    both("feature_projection.layer_norm", "layer_norm")
    if projection:
        both("feature_projection.projection", "post_extract_proj")
    if enc.pos_conv_type == "layer_norm":
        # data2vec: pos_conv_depth x Sequential(conv, SamePad, T, LayerNorm(affine=False), T, GELU)
        for j in range(enc.pos_conv_depth):
            both(f"encoder.pos_conv_embed.layers.{j}.conv", f"encoder.pos_conv.{j}.0")
    else:
        g_ours, v_ours = _POS_CONV_WEIGHT[ours_pos_conv]
        g_theirs, v_theirs = _POS_CONV_WEIGHT[fairseq_pos_conv]
        pairs[f"encoder.pos_conv_embed.conv.{g_ours}"] = f"encoder.pos_conv.0.{g_theirs}"
        pairs[f"encoder.pos_conv_embed.conv.{v_ours}"] = f"encoder.pos_conv.0.{v_theirs}"
        pairs["encoder.pos_conv_embed.conv.bias"] = "encoder.pos_conv.0.bias"
    both("encoder.layer_norm", "encoder.layer_norm")
    for i in range(enc.num_layers):
        for ours, theirs in _LAYER_RENAMES.items():
            both(f"encoder.layers.{i}.{ours}", f"encoder.layers.{i}.{theirs}")
        if enc.relative_position_buckets:  # WavLM: every layer gates the bias of layer 0
            both(
                f"encoder.layers.{i}.attention.gru_rel_pos_linear",
                f"encoder.layers.{i}.self_attn.grep_linear",
            )
            pairs[f"encoder.layers.{i}.attention.gru_rel_pos_const"] = f"encoder.layers.{i}.self_attn.grep_a"
    if enc.relative_position_buckets:
        both(
            "encoder.layers.0.attention.rel_attn_embed",
            "encoder.layers.0.self_attn.relative_attention_bias",
            ("weight",),
        )
    pairs["masked_spec_embed"] = "mask_emb"
    return pairs


def _pos_conv_style(keys: Any) -> PosConvStyle:
    return "parametrizations" if any(".parametrizations.weight." in k for k in keys) else "legacy"


def _describe_keys(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def fairseq_to_ours(
    state_dict: StateDict,
    config: ModelConfig,
    *,
    ours_pos_conv: PosConvStyle = "parametrizations",
    source: str = "<state_dict>",
) -> tuple[StateDict, dict[str, StateDict]]:
    """fairseq-named encoder weights -> (our state dict, extras).

    extras["pretraining"]: quantizer / projections / label embeddings (fairseq
    names); extras["finetuning"]: the fine-tuning head of a *_ctc checkpoint
    (e.g. `w2v_encoder.proj.weight`). Unknown or missing keys raise
    CheckpointKeyError listing them.
    """
    encoder_sd: StateDict = {}
    extras: dict[str, StateDict] = {"pretraining": {}, "finetuning": {}}
    finetuned = any(k.startswith(_FINETUNE_PREFIX) for k in state_dict)
    for key, value in state_dict.items():
        if key.rpartition(".")[2] == EMA_KEY:  # data2vec's EMA teacher: see the module docstring
            logger.info("%s: data2vec EMA teacher weights ('%s') dropped", source, key)
            continue
        if finetuned:
            if key.startswith(_FINETUNE_PREFIX):
                key = key[len(_FINETUNE_PREFIX) :]
            else:
                extras["finetuning"][key] = value
                continue
        if key.startswith(PRETRAINING_PREFIXES):
            extras["pretraining"][key] = value
        else:
            encoder_sd[key] = value
    if extras["finetuning"]:
        logger.info(
            "%s: fine-tuning head kept in extras['finetuning']: %s",
            source,
            _describe_keys(list(extras["finetuning"])),
        )

    projection = _always_projects(config) or "post_extract_proj.weight" in encoder_sd
    names = key_map(
        config,
        projection=projection,
        ours_pos_conv=ours_pos_conv,
        fairseq_pos_conv=_pos_conv_style(encoder_sd),
    )
    theirs_to_ours = {v: k for k, v in names.items()}
    unknown = [k for k in encoder_sd if k not in theirs_to_ours]
    missing = [k for k in theirs_to_ours if k not in encoder_sd]
    if unknown:
        raise CheckpointKeyError(
            f"{source}: unexpected keys for this {config.family} config: {_describe_keys(unknown)}"
        )
    if missing:
        raise CheckpointKeyError(f"{source}: missing keys: {_describe_keys(missing)}")
    ours = {theirs_to_ours[k]: v for k, v in encoder_sd.items()}
    if not projection:  # fairseq skips the projection when widths match; ours always has one
        dim = config.encoder.embed_dim
        ref = ours["feature_projection.layer_norm.weight"]
        ours["feature_projection.projection.weight"] = torch.eye(dim, dtype=ref.dtype)
        ours["feature_projection.projection.bias"] = torch.zeros(dim, dtype=ref.dtype)
    return ours, extras


def _always_projects(config: ModelConfig) -> bool:
    """fairseq's Data2VecAudioModel builds post_extract_proj whatever the widths; the others skip it
    when the conv width equals encoder_embed_dim."""
    return config.family == "data2vec_audio"


def _is_identity(weight: Tensor, bias: Tensor | None) -> bool:
    eye = torch.eye(weight.shape[0], dtype=weight.dtype)
    return weight.shape == eye.shape and torch.equal(weight, eye) and (bias is None or not bias.any())


def fairseq_drops_projection(config: ModelConfig, state_dict: StateDict) -> bool:
    """Whether fairseq's model for `config` has no `post_extract_proj` (conv width == embed_dim,
    not data2vec-audio) while our projection in `state_dict` is not the identity: such a model
    has no exact fairseq / s3prl form."""
    if _always_projects(config) or config.frontend.output_dim != config.encoder.embed_dim:
        return False
    weight = state_dict.get("feature_projection.projection.weight")
    return weight is not None and not _is_identity(
        weight, state_dict.get("feature_projection.projection.bias")
    )


def ours_to_fairseq(
    state_dict: StateDict, config: ModelConfig, *, fairseq_pos_conv: PosConvStyle = "legacy"
) -> StateDict:
    """Our encoder state dict -> fairseq names (inverse of fairseq_to_ours).

    An identity projection between equal widths is dropped, as fairseq builds
    no `post_extract_proj` then; any other projection there cannot be exported.
    """
    sd = dict(state_dict)
    projection = _always_projects(config) or config.frontend.output_dim != config.encoder.embed_dim
    if not projection:
        w, b = (
            sd.pop("feature_projection.projection.weight", None),
            sd.pop("feature_projection.projection.bias", None),
        )
        if w is not None and not _is_identity(w, b):
            raise ValueError(
                "fairseq has no feature projection when the conv width equals embed_dim "
                f"({config.encoder.embed_dim}); this model's projection is not the identity"
                " (export it as hf, onnx or torchscript)"
            )
    names = key_map(
        config, projection=projection, ours_pos_conv=_pos_conv_style(sd), fairseq_pos_conv=fairseq_pos_conv
    )
    unknown = [k for k in sd if k not in names]
    missing = [k for k in names if k not in sd]
    if unknown:
        raise CheckpointKeyError(f"unexpected keys in our state dict: {_describe_keys(unknown)}")
    if missing:
        raise CheckpointKeyError(f"missing keys in our state dict: {_describe_keys(missing)}")
    return {names[k]: v for k, v in sd.items()}


# --------------------------------------------------------------------------- files


def _split_cfg(ckpt: dict[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model cfg, task cfg) from a new-style `cfg` or an old-style `args` checkpoint."""
    cfg = to_plain(ckpt.get("cfg"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        return cfg["model"], cfg.get("task") or {}
    args = to_plain(ckpt.get("args"))
    if isinstance(args, dict):
        # argparse era: one flat namespace; the model name is `arch`, the task options sit beside it
        return {**args, "_name": args.get("arch", args.get("_name", ""))}, args
    raise ValueError(f"{source}: no fairseq config found (expected a 'cfg' with a 'model' section or 'args')")


def _inner_ssl_cfg(model_cfg: dict[str, Any], task_cfg: dict[str, Any], source: str):
    """For a fine-tuned (*_ctc) checkpoint, the config of the wrapped SSL model."""
    w2v_args = to_plain(model_cfg.get("w2v_args"))
    if not isinstance(w2v_args, dict):
        raise ValueError(
            f"{source}: fine-tuned model '{model_cfg.get('_name')}' has no embedded w2v_args; "
            "load the pretrained checkpoint it was fine-tuned from instead"
        )
    if isinstance(w2v_args.get("model"), dict):
        return w2v_args["model"], {
            **(w2v_args.get("task") or {}),
            **{"normalize": task_cfg.get("normalize", False)},
        }
    return {**w2v_args, "_name": w2v_args.get("arch", "")}, {"normalize": task_cfg.get("normalize", False)}


def config_from_checkpoint(
    ckpt: dict[str, Any], source: str
) -> tuple[ModelConfig, dict[str, Any], dict[str, Any]]:
    """A loaded fairseq checkpoint dict -> (ModelConfig, fairseq model cfg, fairseq task cfg)."""
    model_cfg, task_cfg = _split_cfg(ckpt, source)
    name = str(model_cfg.get("_name") or "")
    if name.endswith(("_ctc", "_seq2seq")):
        model_cfg, task_cfg = _inner_ssl_cfg(model_cfg, task_cfg, source)
        name = str(model_cfg.get("_name") or "")
    family = _family(name, source)
    return model_config_from_fairseq(model_cfg, task_cfg, family=family, source=source), model_cfg, task_cfg


def load_fairseq(
    path: str | Path,
    *,
    ours_pos_conv: PosConvStyle = "parametrizations",
    ckpt: dict[str, Any] | None = None,
) -> tuple[ModelConfig, StateDict, dict[str, Any]]:
    """Read a fairseq HuBERT / wav2vec 2.0 / data2vec-audio / UniSpeech-SAT `.pt` (pretrained or
    *_ctc fine-tuned).

    Returns (config, state dict in our names, extras). extras holds
    "pretraining" and "finetuning" weights (fairseq names), the raw
    "fairseq_model_cfg" / "fairseq_task_cfg" dicts and, for HuBERT, the label
    "dictionaries_symbols". Never runs code from the file.
    """
    source = str(path)
    ckpt = load_checkpoint(path) if ckpt is None else ckpt  # `ckpt`: the file, already unpickled
    if not isinstance(ckpt.get("model"), dict):
        raise ValueError(f"{source}: not a fairseq checkpoint (no 'model' state dict); keys: {sorted(ckpt)}")
    config, model_cfg, task_cfg = config_from_checkpoint(ckpt, source)
    state_dict, extras = fairseq_to_ours(ckpt["model"], config, ours_pos_conv=ours_pos_conv, source=source)
    dictionaries = (ckpt.get("task_state") or {}).get("dictionaries") or []
    out: dict[str, Any] = {
        **extras,
        "fairseq_model_cfg": model_cfg,
        "fairseq_task_cfg": task_cfg,
        "dictionaries_symbols": [
            list(getattr(d, "symbols", [])) if d is not None else None for d in dictionaries
        ],
    }
    return config, state_dict, out


def to_fairseq(
    config: ModelConfig,
    state_dict: StateDict,
    *,
    extras: dict[str, Any] | None = None,
    fairseq_pos_conv: PosConvStyle = "legacy",
) -> dict[str, Any]:
    """ModelConfig + our state dict -> a fairseq-style checkpoint dict (for torch.save).

    The config is stored as plain dicts under `cfg.model` / `cfg.task`, as
    current fairseq writes it. `extras["pretraining"]` weights (fairseq names)
    and `extras["fairseq_model_cfg"]` fields we do not model (final_dim,
    quantizer sizes, ...) are carried over, so import -> export keeps them.
    """
    if config.family not in FAIRSEQ_NAMES.values():
        raise ValueError(
            f"{config.family} has no fairseq checkpoint format (unilm's WavLM is not a fairseq model:"
            " wavlm_io.to_wavlm writes its original file)"
        )
    extras = extras or {}
    previous = extras.get("fairseq_model_cfg") or {}
    model_cfg, task_cfg = fairseq_cfg_from_model_config(config, previous)
    model_cfg = {
        k: v for k, v in {**previous, **model_cfg}.items() if k != "normalize"
    }  # unilm's, a task field
    task_cfg = {**(extras.get("fairseq_task_cfg") or {}), **task_cfg}
    if config.family in ("hubert", "unispeech_sat"):  # their model cfg's label_rate interpolates
        # task.label_rate, and HubertModel reads it when it is built (feat2tar_ratio): 50 Hz units
        task_cfg.setdefault("label_rate", model_cfg.setdefault("label_rate", 50))
    weights = ours_to_fairseq(state_dict, config, fairseq_pos_conv=fairseq_pos_conv)
    weights.update(extras.get("pretraining") or {})
    return {
        "args": None,
        "cfg": {"_name": None, "model": model_cfg, "task": task_cfg},
        "model": weights,
        "optimizer_history": [],
        "extra_state": {},
        "last_optimizer_state": None,
    }
