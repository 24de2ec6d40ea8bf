"""s3prl's converted HuBERT / wav2vec 2.0 / data2vec-audio checkpoints <-> our ModelConfig and state dict.

s3prl converts a fairseq checkpoint (s3prl/upstream/{hubert,wav2vec2,data2vec}/convert.py)
into a fairseq-free file: {"task_cfg": dict, "model_cfg": dict,
"model_weight": fairseq-named state dict, "dictionaries_symbols": [[str]]
(HuBERT only)}. The weights keep fairseq's names, so the mapping is
`fairseq_io`'s; only the envelope differs. data2vec's file keeps fairseq's `_ema`
entry, which s3prl deletes before loading (and so do we).

s3prl's WavLM and UniSpeech-SAT upstreams read unilm's `{"cfg", "model"}` layout
instead: `to_s3prl` writes that through `wavlm_io` for those families.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from speechssl.interop.fairseq_io import (
    EMA_KEY,
    PosConvStyle,
    StateDict,
    _family,
    fairseq_cfg_from_model_config,
    fairseq_to_ours,
    model_config_from_fairseq,
    ours_to_fairseq,
)
from speechssl.interop.safe_pickle import load_checkpoint, to_plain
from speechssl.interop.wavlm_io import WAVLM_LAYOUT_FAMILIES, to_wavlm
from speechssl.models.config import ModelConfig

__all__ = ["load_s3prl", "to_s3prl", "is_s3prl_checkpoint"]

_REQUIRED = ("task_cfg", "model_cfg", "model_weight")


def is_s3prl_checkpoint(ckpt: dict[str, Any]) -> bool:
    """True for s3prl's converted layout (fairseq files have 'model' instead of 'model_weight')."""
    return all(k in ckpt for k in _REQUIRED)


def _guess_family(ckpt: dict[str, Any], model_cfg: dict[str, Any], source: str) -> str:
    name = model_cfg.get("_name")
    if name:
        return _family(str(name), source)
    weights = ckpt.get("model_weight") or {}
    if EMA_KEY in weights or "average_top_k_layers" in model_cfg:  # only data2vec has these
        return "data2vec_audio"
    # s3prl's hubert converter always writes dictionaries_symbols; wav2vec2's never does
    return "hubert" if "dictionaries_symbols" in ckpt or "label_rate" in model_cfg else "wav2vec2"


def load_s3prl(
    path: str | Path,
    *,
    ours_pos_conv: PosConvStyle = "parametrizations",
    ckpt: dict[str, Any] | None = None,
) -> tuple[ModelConfig, StateDict, dict[str, Any]]:
    """Read an s3prl converted `.pt` -> (config, state dict in our names, extras).

    extras is as in `load_fairseq`: "pretraining" (final_proj, label
    embeddings, quantizer, ...), "finetuning" (empty), the raw
    "fairseq_model_cfg" / "fairseq_task_cfg" and "dictionaries_symbols".
    """
    source = str(path)
    ckpt = load_checkpoint(path) if ckpt is None else ckpt  # `ckpt`: the file, already unpickled
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise ValueError(
            f"{source}: not an s3prl converted checkpoint: missing {', '.join(missing)} "
            f"(found keys: {', '.join(sorted(map(str, ckpt)))})"
        )
    model_cfg, task_cfg = to_plain(ckpt["model_cfg"]), to_plain(ckpt["task_cfg"])
    if not isinstance(model_cfg, dict) or not isinstance(task_cfg, dict):
        raise ValueError(f"{source}: model_cfg and task_cfg must be mappings")
    family = _guess_family(ckpt, model_cfg, source)
    config = model_config_from_fairseq(model_cfg, task_cfg, family=family, source=source)
    state_dict, extras = fairseq_to_ours(
        ckpt["model_weight"], config, ours_pos_conv=ours_pos_conv, source=source
    )
    extras.update(
        fairseq_model_cfg=model_cfg,
        fairseq_task_cfg=task_cfg,
        dictionaries_symbols=ckpt.get("dictionaries_symbols", []),
    )
    return config, state_dict, extras


def _placeholder_heads(config: ModelConfig, dtype: torch.dtype) -> tuple[StateDict, dict[str, Any]]:
    """Zero pretraining heads so that s3prl's strict `load_state_dict` accepts an encoder-only export.

    s3prl's models always build `final_proj` (and `project_q` for wav2vec 2.0);
    they do not affect hidden states. Returns (weights, model_cfg overrides).
    """
    dim, conv_dim = config.encoder.embed_dim, config.frontend.output_dim
    heads = {
        "final_proj.weight": torch.zeros(dim, dim, dtype=dtype),
        "final_proj.bias": torch.zeros(dim, dtype=dtype),
    }
    overrides: dict[str, Any] = {"final_dim": dim}
    if config.family == "wav2vec2":
        heads["project_q.weight"] = torch.zeros(dim, conv_dim, dtype=dtype)
        heads["project_q.bias"] = torch.zeros(dim, dtype=dtype)
        overrides.update(quantize_targets=False, quantize_input=False, target_glu=False)
    else:
        overrides.update(target_glu=False, untie_final_proj=False)
    return heads, overrides


def to_s3prl(
    config: ModelConfig,
    state_dict: StateDict,
    *,
    extras: dict[str, Any] | None = None,
    fairseq_pos_conv: PosConvStyle = "legacy",
) -> dict[str, Any]:
    """ModelConfig + our state dict -> the checkpoint dict s3prl's upstream for the family loads
    (for torch.save): unilm's {"cfg", "model"} for WavLM / UniSpeech-SAT (`wavlm_io.to_wavlm`),
    the converted {"task_cfg", "model_cfg", "model_weight"} for the others.

    With `extras` from load_fairseq / load_s3prl, the pretraining heads, the
    extra fairseq config fields and HuBERT's label dictionaries are kept;
    without them, zero placeholder heads are written (see _placeholder_heads)
    and HuBERT's dictionaries are [None] (s3prl then builds no label embeddings).
    data2vec gets no heads: s3prl removes final_proj before its strict load, and
    an empty `_ema` entry, which s3prl deletes first.
    """
    extras = extras or {}
    if config.family in WAVLM_LAYOUT_FAMILIES:
        return to_wavlm(config, state_dict, extras=extras, fairseq_pos_conv=fairseq_pos_conv)
    previous = extras.get("fairseq_model_cfg") or {}
    model_cfg, task_cfg = fairseq_cfg_from_model_config(config, previous)
    model_cfg = {**previous, **model_cfg}
    task_cfg = {**(extras.get("fairseq_task_cfg") or {}), **task_cfg}
    weights = ours_to_fairseq(state_dict, config, fairseq_pos_conv=fairseq_pos_conv)
    if config.family == "data2vec_audio":
        weights[EMA_KEY] = {}
        return {"task_cfg": task_cfg, "model_cfg": model_cfg, "model_weight": weights}
    pretraining = extras.get("pretraining") or {}
    symbols = extras.get("dictionaries_symbols") or []
    if pretraining:
        weights.update(pretraining)
    else:
        dtype = next(iter(state_dict.values())).dtype
        heads, overrides = _placeholder_heads(config, dtype)
        weights.update(heads)
        model_cfg.update(overrides)
        symbols = []
    if config.family == "hubert":
        model_cfg.setdefault("label_rate", 50.0)
        task_cfg.setdefault("label_rate", model_cfg["label_rate"])
    out: dict[str, Any] = {"task_cfg": task_cfg, "model_cfg": model_cfg, "model_weight": weights}
    if config.family == "hubert":
        out["dictionaries_symbols"] = symbols if "label_embs_concat" in weights else [None]
    return out
