"""unilm's original WavLM checkpoints (`{"cfg": WavLMConfig dict, "model": state dict}`) <-> ours.

unilm/WavLM/WavLM.py saves the flat dict of its `WavLMConfig` (fairseq's field names
plus `relative_position_embedding`, `num_buckets`, `max_distance`, `gru_rel_pos` and
`normalize`) beside the state dict of its `WavLM` module, whose names are fairseq's
wav2vec 2.0 names plus the relative position bias (`self_attn.relative_attention_bias`
in layer 0, `self_attn.grep_linear` / `self_attn.grep_a` in every layer), so the
mapping is `fairseq_io.key_map`'s. s3prl's wavlm and unispeech_sat upstreams read this
same layout with a copy of that class (s3prl/upstream/wavlm/WavLM.py): a file without
`relative_position_embedding` is s3prl's UniSpeech-SAT, whose network is wav2vec 2.0's,
and is read as family "unispeech_sat". These files hold no pretraining heads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from speechssl.interop.fairseq_io import (
    PosConvStyle,
    StateDict,
    fairseq_cfg_from_model_config,
    fairseq_to_ours,
    model_config_from_fairseq,
    ours_to_fairseq,
)
from speechssl.interop.safe_pickle import load_checkpoint, to_plain
from speechssl.models.config import ModelConfig

__all__ = ["WAVLM_LAYOUT_FAMILIES", "is_wavlm_checkpoint", "load_wavlm", "to_wavlm"]

logger = logging.getLogger(__name__)

# Families whose network the `WavLM` class builds (with / without the relative position bias).
WAVLM_LAYOUT_FAMILIES = ("wavlm", "unispeech_sat")
# fairseq model-cfg fields that unilm's WavLMConfig does not have
_NOT_WAVLM_FIELDS = ("_name", "layer_type", "pos_conv_depth")
_GATE = ".self_attn.grep_"  # grep_linear / grep_a: the gate of the relative position bias


def is_wavlm_checkpoint(ckpt: dict[str, Any]) -> bool:
    """unilm's layout: a flat config dict under 'cfg' (fairseq's has a 'model' section) and a state dict."""
    cfg = to_plain(ckpt.get("cfg"))
    return isinstance(cfg, dict) and "model" not in cfg and isinstance(ckpt.get("model"), dict)


def load_wavlm(
    path: str | Path,
    *,
    ours_pos_conv: PosConvStyle = "parametrizations",
    ckpt: dict[str, Any] | None = None,
) -> tuple[ModelConfig, StateDict, dict[str, Any]]:
    """Read a unilm WavLM / s3prl WavLM or UniSpeech-SAT `.pt` -> (config, our state dict, extras).

    extras: "fairseq_model_cfg" (the WavLMConfig dict, for export), "fairseq_task_cfg"
    ({"normalize"}), empty "pretraining" / "finetuning" and, when the file has a gate but no
    bias to gate (gru_rel_pos without relative_position_embedding: unused by the original
    too), those weights under "unused". Unknown or missing keys raise CheckpointKeyError."""
    source = str(path)
    ckpt = load_checkpoint(path) if ckpt is None else ckpt  # `ckpt`: the file, already unpickled
    if not is_wavlm_checkpoint(ckpt):
        raise ValueError(
            f"{source}: not a unilm WavLM checkpoint (expected a flat 'cfg' dict and a 'model' state dict);"
            f" keys: {', '.join(sorted(map(str, ckpt)))}"
        )
    cfg = to_plain(ckpt["cfg"])
    relative = bool(cfg.get("relative_position_embedding", False))
    family = "wavlm" if relative else "unispeech_sat"
    task_cfg = {"normalize": bool(cfg.get("normalize", False))}
    config = model_config_from_fairseq(cfg, task_cfg, family=family, source=source)
    weights = dict(ckpt["model"])
    unused = {}
    if not relative:
        unused = {k: weights.pop(k) for k in list(weights) if _GATE in k}
        if unused:
            logger.info("%s: gate weights without a relative position bias (unused) kept in extras", source)
    state_dict, extras = fairseq_to_ours(weights, config, ours_pos_conv=ours_pos_conv, source=source)
    extras.update(fairseq_model_cfg=cfg, fairseq_task_cfg=task_cfg)
    if unused:
        extras["unused"] = unused
    return config, state_dict, extras


def to_wavlm(
    config: ModelConfig,
    state_dict: StateDict,
    *,
    extras: dict[str, Any] | None = None,
    fairseq_pos_conv: PosConvStyle = "legacy",
) -> dict[str, Any]:
    """ModelConfig + our state dict -> unilm's `{"cfg", "model"}` dict (for torch.save), which
    unilm's WavLM.py and s3prl's wavlm / unispeech_sat upstreams load strictly.

    The config fields we do not model (mask settings, ...) come from `extras["fairseq_model_cfg"]`
    when the model was imported; pretraining heads are not written (the class has none)."""
    if config.family not in WAVLM_LAYOUT_FAMILIES:
        families = " and ".join(WAVLM_LAYOUT_FAMILIES)
        raise ValueError(f"unilm's WavLM layout holds only {families} models, not {config.family}")
    previous = (extras or {}).get("fairseq_model_cfg") or {}
    model_cfg, _ = fairseq_cfg_from_model_config(config, previous)
    cfg = {**previous, **model_cfg, "normalize": config.normalize_waveform}
    for name in _NOT_WAVLM_FIELDS:
        cfg.pop(name, None)
    return {"cfg": cfg, "model": ours_to_fairseq(state_dict, config, fairseq_pos_conv=fairseq_pos_conv)}
