"""Continued pretraining: start a fresh pretraining run from the weights of a released model.

`init_pretrain_model(model, source)` loads any `load_upstream` source (speechssl checkpoint dir,
pretraining checkpoints with their heads included; transformers dir; fairseq / s3prl / unilm
`.pt`) into a freshly built pretraining model (speechssl.objectives.pretraining). Only weights
load: the optimizer, the learning-rate schedule, the quantizer temperature and data2vec's EMA
schedule start fresh (the run is a new run, not a resume).

- The backbone must be the config's architecture: the first differing config field, or else
  the first differing parameter name or shape, is a one-line InitFromError.
- Each head (a child module of the pretraining model other than the backbone: HuBERT's /
  WavLM's `head`, wav2vec 2.0's `quantizer`, `project_hid`, `project_q`, data2vec's
  `final_proj`) loads as a whole when the source has all its weights with the same shapes,
  and otherwise starts fresh with a log line that names it and says why. The source's head
  names are translated: fairseq's `final_proj` (HuBERT: `head.final_proj`, wav2vec 2.0:
  `project_hid`), `label_embs_concat`, `quantizer.vars` (our `quantizer.codevectors`);
  transformers' Wav2Vec2ForPreTraining names are ours.
- fairseq HuBERT's label embeddings have one row per symbol of its label dictionaries, which
  begin with 4 special symbols (<s>, <pad>, </s>, <unk>) that are never targets, and list the
  units in dict.km.txt's order. Row u of ours is unit u's: the rows are picked by symbol
  (the specials dropped), so the class count compared with the units is the number of units.
- data2vec's EMA teacher is not read from the source: it restarts as a copy of the loaded
  student (`reset_teacher`), as fairseq builds it at the start of a run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from speechssl.config import load_yaml
from speechssl.errors import SpeechSSLError
from speechssl.interop.upstream import load_upstream, require_network
from speechssl.models.config import ModelConfig
from speechssl.models.model import SSLModel

__all__ = ["InitFromError", "InitReport", "init_pretrain_model", "check_backbone_fits"]

logger = logging.getLogger(__name__)

# Config fields that do not change what the weights mean (regularisation, gradient scaling).
TRAINING_ONLY_FIELDS = {
    "dropout", "attention_dropout", "activation_dropout", "feature_proj_dropout", "layerdrop",
    "feature_grad_mult",
}  # fmt: skip
TEACHER_PREFIX = "ema."  # data2vec's EMA teacher (Data2VecPretrainModel.ema): rebuilt, never read


class InitFromError(SpeechSSLError, ValueError):
    """The --init-from source does not fit the config's architecture."""


@dataclass
class InitReport:
    """What `init_pretrain_model` did: the parts that loaded and those that started fresh (why)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    fresh: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)  # source head weights no part of the model took

    def lines(self) -> list[str]:
        out = [f"--init-from {self.source}: loaded {', '.join(self.loaded)}"]
        out += [f"--init-from {self.source}: {name} starts fresh: {why}" for name, why in self.fresh.items()]
        if self.unused:
            out.append(
                f"--init-from {self.source}: source weights not used: {', '.join(sorted(self.unused))}"
            )
        return out


# --------------------------------------------------------------------------- backbone
def _backbone(model: nn.Module) -> tuple[str, SSLModel]:
    """(attribute name, module) of the pretraining model's SSLModel."""
    name = getattr(model, "backbone_name", None)
    if isinstance(name, str) and isinstance(getattr(model, name, None), SSLModel):
        return name, getattr(model, name)
    for child_name, child in model.named_children():
        if isinstance(child, SSLModel):
            return child_name, child
    raise TypeError(f"{type(model).__name__} holds no SSLModel backbone")


def _architecture(config: Any, prefix: str) -> dict[str, Any]:
    """Flattened config fields that decide what the weights mean (`model.encoder.num_layers`: ...)."""
    out: dict[str, Any] = {}
    for f in fields(config):
        if f.name in TRAINING_ONLY_FIELDS:
            continue
        value = getattr(config, f.name)
        if is_dataclass(value):
            out.update(_architecture(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def check_backbone_fits(ours: ModelConfig, theirs: ModelConfig, source: str) -> None:
    """One-line InitFromError naming the first architecture field where `theirs` (the source) differs
    from the config; the family alone may differ (HuBERT from a wav2vec 2.0 network is the same
    network), which is logged."""
    a, b = _architecture(ours, "model."), _architecture(theirs, "model.")
    a.pop("model.family"), b.pop("model.family")
    for key in a:
        if key not in b or a[key] != b[key]:
            raise InitFromError(
                f"--init-from {source}: its backbone does not fit the config: {key} is "
                f"{b.get(key, '(absent)')!r} there, {a[key]!r} in the config"
            )
    if ours.family != theirs.family:
        logger.info(
            "--init-from %s: a %s network continues as %s (the same architecture)",
            source, theirs.family, ours.family,
        )  # fmt: skip


def _check_state_fits(target: dict[str, Tensor], state: dict[str, Tensor], source: str) -> None:
    for key, value in target.items():
        if key not in state:
            raise InitFromError(f"--init-from {source}: its backbone has no {key} (the config's model has)")
        if tuple(state[key].shape) != tuple(value.shape):
            raise InitFromError(
                f"--init-from {source}: {key} has shape {tuple(state[key].shape)} there, "
                f"{tuple(value.shape)} in the config's model"
            )
    extra = [k for k in state if k not in target]
    if extra:
        raise InitFromError(
            f"--init-from {source}: its backbone has {extra[0]}, which the config's model has not"
        )


# --------------------------------------------------------------------------- heads
def _heads(model: nn.Module, backbone: str) -> dict[str, dict[str, Tensor]]:
    """Head name -> its state (our keys, prefixed by the head name) for every child with weights."""
    state = model.state_dict()
    groups: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        name = key.split(".", 1)[0]
        if name == backbone or key.startswith(TEACHER_PREFIX):
            continue
        groups.setdefault(name, {})[key] = value
    return groups


def _fairseq_names(extras: dict[str, Any], heads: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
    """fairseq / s3prl pretraining weights under our names, for the heads this model has."""
    ours: dict[str, Tensor] = {}
    final_proj = (
        "head.final_proj." if "head" in heads else "project_hid." if "project_hid" in heads else "final_proj."
    )
    for key, value in (extras.get("pretraining") or {}).items():
        if key.startswith("final_proj."):
            ours[final_proj + key[len("final_proj.") :]] = value
        elif key == "label_embs_concat":
            ours["head.label_embs_concat"] = value
        elif key == "quantizer.vars":
            ours["quantizer.codevectors"] = value
        else:
            ours[key] = value
    return ours


def _source_classes(source: str) -> list[int] | None:
    """The label class counts a speechssl pretraining checkpoint dir was trained with, if it says."""
    path = Path(source) / "config.yaml"
    if not path.is_file():
        return None
    try:
        data = load_yaml(path)
    except (OSError, ValueError):  # a config we cannot read here was already read by load_upstream
        return None
    for section in ("hubert", "wavlm"):
        counts = (data.get(section) or {}).get("num_classes") if isinstance(data, dict) else None
        if isinstance(counts, list):
            return [int(c) for c in counts]
    return None


def _label_rows(
    embs: Tensor, symbols: list[Any] | None, num_classes: list[int], source_classes: list[int] | None
) -> tuple[Tensor | None, str]:
    """The source's label embeddings as our rows (row u = unit u of each label set), or (None, why)."""
    want = sum(num_classes)
    if symbols:
        sets = [s for s in symbols if s is not None]
        if len(sets) != len(symbols) or len(sets) != len(num_classes):
            return None, f"the source has {len(symbols)} label set(s), the units {len(num_classes)}"
        if sum(len(s) for s in sets) != embs.shape[0]:
            return None, (
                f"the source's {embs.shape[0]} label embeddings do not match its label dictionaries "
                f"({sum(len(s) for s in sets)} symbols)"
            )
        rows, offset = [], 0
        for i, (syms, k) in enumerate(zip(sets, num_classes)):
            units = {str(s): offset + r for r, s in enumerate(syms) if str(s).isdigit()}
            if len(units) != k or any(str(u) not in units for u in range(k)):
                return None, (
                    f"label set {i} of the source has {len(units)} units ({len(syms)} rows with fairseq's "
                    f"{len(syms) - len(units)} special symbols), the units have {k} classes"
                )
            rows += [units[str(u)] for u in range(k)]
            offset += len(syms)
        return embs[torch.tensor(rows)], ""
    if source_classes is not None and source_classes != list(num_classes):
        return None, f"the source has {source_classes} label classes, the units have {list(num_classes)}"
    if embs.shape[0] != want:
        return None, f"the source has {embs.shape[0]} label classes, the units have {want}"
    return embs, ""


def _load_group(
    name: str, target: dict[str, Tensor], state: dict[str, Tensor]
) -> tuple[dict[str, Tensor] | None, str]:
    """The group's weights from `state` (all of them, with the target's shapes), or (None, why)."""
    missing = [k for k in target if k not in state]
    if len(missing) == len(target):
        return None, "the source has no such weights"
    if missing:
        return None, f"the source lacks {missing[0]}"
    for key, value in target.items():
        if tuple(state[key].shape) != tuple(value.shape):
            return None, f"{key} has shape {tuple(state[key].shape)} there, {tuple(value.shape)} here"
    return {k: state[k] for k in target}, ""


# --------------------------------------------------------------------------- entry point
@torch.no_grad()
def init_pretrain_model(model: nn.Module, source: str | Path) -> InitReport:
    """Load `source`'s backbone (and heads, where it has them) into the freshly built pretraining
    `model` (see the module docstring); log and return what loaded and what starts fresh."""
    source = str(source)
    up = require_network(load_upstream(source), source, "--init-from")
    backbone_name, backbone = _backbone(model)
    check_backbone_fits(backbone.config, up.config, source)
    state = up.model.state_dict()
    _check_state_fits(backbone.state_dict(), state, source)
    backbone.load_state_dict(state)
    report = InitReport(source, loaded=["backbone"])

    heads = _heads(model, backbone_name)
    extras = up.extras or {}
    fairseq = "fairseq_model_cfg" in extras
    theirs = _fairseq_names(extras, heads) if fairseq else dict(extras.get("pretraining") or {})
    used: set[str] = set()
    for name, target in heads.items():
        candidate = dict(theirs)
        if name == "head" and "head.label_embs_concat" in target and "head.label_embs_concat" in theirs:
            symbols = extras.get("dictionaries_symbols") if fairseq else None
            rows, why = _label_rows(
                theirs["head.label_embs_concat"], symbols or None, list(model.head.num_classes),
                None if fairseq else _source_classes(source),
            )  # fmt: skip
            if rows is None:
                report.fresh[name] = why
                used.update(k for k in theirs if k.startswith(f"{name}."))
                continue
            candidate["head.label_embs_concat"] = rows
        elif name == "head" and "head.final_proj.weight" in target and "head.label_embs_concat" not in target:
            # the linear head: final_proj rows are the classes
            rows_there = theirs.get("head.final_proj.weight")
            want = sum(model.head.num_classes)
            if (
                rows_there is not None
                and rows_there.shape[0] != want
                and "head.label_embs_concat" not in theirs
            ):
                report.fresh[name] = (
                    f"the source has {rows_there.shape[0]} label classes, the units have {want}"
                )
                used.update(k for k in theirs if k.startswith(f"{name}."))
                continue
        weights, why = _load_group(name, target, candidate)
        if weights is None:
            report.fresh[name] = why
        else:
            model.load_state_dict(weights, strict=False)
            report.loaded.append(name)
        used.update(k for k in theirs if k.split(".", 1)[0] == name)
    report.unused.extend(k for k in theirs if k not in used and not k.startswith(TEACHER_PREFIX))
    if hasattr(model, "reset_teacher"):
        model.reset_teacher()  # data2vec: the teacher starts as the loaded student
        report.fresh.setdefault("ema", "the EMA teacher restarts as a copy of the loaded student")
    for line in report.lines():
        logger.info(line)
    return report
