"""Efficient tuning of an upstream, chosen by name: one registry, one report.

    report = apply_tuning(upstream, TuningConfig(method="lora"))   # in place
    save_tuned(upstream, "exp/lora.safetensors")                   # only the tuned weights
    fresh = load_upstream(src); load_tuned(fresh, "exp/lora.safetensors")

Every method first freezes the whole upstream, then makes some parameters
trainable (new ones it injects, or a chosen subset). The conv frontend is
never trained (fairseq fine-tuning: feature_grad_mult 0). Which parameters
are tuned is recorded on the upstream (`upstream.tuning`), so the tuned
weights can be saved and loaded apart from the frozen upstream.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from speechssl.config import ConfigError, from_dict, to_dict
from speechssl.io import atomic_file
from speechssl.models.model import SSLModel
from speechssl.tuning.adapters import AdapterConfig, add_adapters
from speechssl.tuning.bitfit import BitFitConfig, bias_names
from speechssl.tuning.lora import LoRAConfig, add_lora, merge_lora
from speechssl.tuning.prefix import PrefixConfig, add_prefixes, fold_prefixes

METADATA_KEY = "speechssl_tuning"
_OPTION_FIELDS = {"adapter": "adapter", "lora": "lora", "bitfit": "bitfit", "prefix": "prefix"}


@dataclass(frozen=True, kw_only=True)
class TuningConfig:
    """Which method, and its options (only the chosen method's section is used)."""

    method: str = "frozen"  # frozen | adapter | lora | bitfit | prefix | full
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    bitfit: BitFitConfig = field(default_factory=BitFitConfig)
    prefix: PrefixConfig = field(default_factory=PrefixConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown tuning method '{self.method}'; valid: {', '.join(sorted(METHODS))}")


@dataclass(frozen=True)
class TuningReport:
    method: str
    trainable: int  # parameters that receive gradients
    total: int  # all parameters of the tuned upstream (frozen + injected)
    fraction: float  # trainable / total

    def __str__(self) -> str:
        return (
            f"{self.method}: {self.trainable:,} of {self.total:,} parameters trainable "
            f"({100 * self.fraction:.3f}%)"
        )


@dataclass(frozen=True)
class AppliedTuning:
    """What `apply_tuning` did to an upstream (stored as `upstream.tuning`)."""

    config: TuningConfig
    names: tuple[str, ...]  # qualified names of the tuned parameters


def tuning_config(
    method: str, options: Mapping[str, Any] | None = None, *, source: str | None = None
) -> TuningConfig:
    """TuningConfig from a method name and that method's options; unknown option keys are errors."""
    if method not in METHODS:
        raise ValueError(f"unknown tuning method '{method}'; valid: {', '.join(sorted(METHODS))}")
    options = dict(options or {})
    section = _OPTION_FIELDS.get(method)
    if section is None:
        if options:
            raise ConfigError(
                f"tuning method '{method}' takes no options; found {sorted(options)}"
                + (f" in {source}" if source else "")
            )
        return TuningConfig(method=method)
    return from_dict(TuningConfig, {"method": method, section: options}, source=source)


# ----------------------------------------------------------------------------- methods
# Each gets the SSLModel and returns the names (relative to it) of the parameters to train;
# parameters it injects are trained automatically.


def _frozen(model: SSLModel, config: TuningConfig) -> list[str]:
    return []


def _adapter(model: SSLModel, config: TuningConfig) -> list[str]:
    add_adapters(model.encoder.layers, config.adapter)
    return []


def _lora(model: SSLModel, config: TuningConfig) -> list[str]:
    add_lora(model.encoder.layers, config.lora)
    return []


def _prefix(model: SSLModel, config: TuningConfig) -> list[str]:
    add_prefixes(model.encoder.layers, config.prefix)
    return []


def _bitfit(model: SSLModel, config: TuningConfig) -> list[str]:
    return bias_names(model, config.bitfit, frontend_prefix="feature_extractor.")


def _full(model: SSLModel, config: TuningConfig) -> list[str]:
    return [n for n, _ in model.named_parameters() if not n.startswith("feature_extractor.")]


METHODS: dict[str, Callable[[SSLModel, TuningConfig], list[str]]] = {
    "frozen": _frozen,
    "adapter": _adapter,
    "lora": _lora,
    "bitfit": _bitfit,
    "prefix": _prefix,
    "full": _full,
}


def find_ssl_model(upstream: nn.Module) -> tuple[SSLModel, str]:
    """The SSLModel inside `upstream` (an Upstream or an SSLModel) and its name prefix."""
    if isinstance(upstream, SSLModel):
        return upstream, ""
    model = getattr(upstream, "model", None)
    if isinstance(model, SSLModel):
        return model, "model."
    raise ValueError(
        f"tuning needs an upstream with a transformer encoder (an SSLModel); found {type(upstream).__name__}"
    )


def count_parameters(module: nn.Module) -> TuningReport:
    """Trainable and total parameter counts of `module` (method from `module.tuning`, if any)."""
    total = trainable = 0
    for p in module.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    applied = getattr(module, "tuning", None)
    method = applied.config.method if isinstance(applied, AppliedTuning) else "none"
    return TuningReport(method, trainable, total, trainable / total if total else 0.0)


def apply_tuning(upstream: nn.Module, config: TuningConfig) -> TuningReport:
    """Freeze `upstream`, inject/select what `config.method` trains, record it; in place.

    "frozen" works on any upstream; the others need an SSLModel-based one."""
    if isinstance(getattr(upstream, "tuning", None), AppliedTuning):
        raise ValueError(
            f"the upstream is already tuned with '{upstream.tuning.config.method}'; "
            "apply a tuning method to a freshly loaded upstream"
        )
    upstream.requires_grad_(False)
    if config.method == "frozen" and not isinstance(getattr(upstream, "model", upstream), SSLModel):
        names: list[str] = []  # e.g. the FBANK upstream: nothing to inject
    else:
        model, prefix = find_ssl_model(upstream)
        before = {id(p) for p in model.parameters()}
        selected = set(METHODS[config.method](model, config))
        names = [prefix + n for n, p in model.named_parameters() if n in selected or id(p) not in before]
    params = dict(upstream.named_parameters())
    for name in names:
        params[name].requires_grad_(True)
    upstream.tuning = AppliedTuning(config, tuple(names))
    return count_parameters(upstream)


def applied_tuning(upstream: nn.Module) -> AppliedTuning:
    applied = getattr(upstream, "tuning", None)
    if not isinstance(applied, AppliedTuning):
        raise ValueError("the upstream has no tuning applied; call apply_tuning(upstream, config) first")
    return applied


def tuned_state_dict(upstream: nn.Module) -> dict[str, Tensor]:
    """Only the tuned parameters (detached), under their names in `upstream`."""
    params = dict(upstream.named_parameters())
    return {name: params[name].detach() for name in applied_tuning(upstream).names}


def _first(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


@torch.no_grad()
def load_tuned_state_dict(
    upstream: nn.Module, state: Mapping[str, Tensor], *, source: str = "tuned state"
) -> None:
    """Copy tuned weights into an upstream tuned with the same config. Keys must match exactly."""
    applied = applied_tuning(upstream)
    expected = set(applied.names)
    missing = [n for n in applied.names if n not in state]
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {_first(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {_first(unexpected)}")
        raise ValueError(
            f"{source} does not fit the upstream tuned with '{applied.config.method}': " + "; ".join(parts)
        )
    params = dict(upstream.named_parameters())
    for name in applied.names:
        if params[name].shape != state[name].shape:
            raise ValueError(
                f"{source}: '{name}' has shape {tuple(state[name].shape)}, "
                f"the upstream expects {tuple(params[name].shape)}"
            )
    for name in applied.names:
        params[name].copy_(state[name])


def merge_tuning(upstream: nn.Module) -> TuningReport:
    """Prepare a tuned upstream for inference: LoRA updates are folded into plain Linears
    (the upstream becomes an ordinary one again: `upstream.tuning` is removed, its state
    dict has the plain keys and can be exported), prefix MLPs are folded into their
    prefixes (the record then says mlp_dim=None). Other methods are left as they are."""
    applied = applied_tuning(upstream)
    method = applied.config.method
    if method == "lora":
        merge_lora(upstream)
        del upstream.tuning
        upstream.requires_grad_(False)
        return replace(count_parameters(upstream), method="lora (merged)")
    if method == "prefix":
        fold_prefixes(upstream)
        config = replace(applied.config, prefix=replace(applied.config.prefix, mlp_dim=None))
        names = tuple(n for n, p in upstream.named_parameters() if p.requires_grad)
        upstream.tuning = AppliedTuning(config, names)
    return count_parameters(upstream)


# ----------------------------------------------------------------------------- files


def save_tuned(upstream: nn.Module, path: str | Path) -> Path:
    """Write the tuned weights and the TuningConfig (safetensors metadata) atomically."""
    applied = applied_tuning(upstream)
    path = Path(path)
    tensors = {k: v.to("cpu").contiguous().clone() for k, v in tuned_state_dict(upstream).items()}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(to_dict(applied.config))})
    return path


def read_tuned(path: str | Path) -> tuple[TuningConfig, dict[str, Tensor]]:
    """The TuningConfig and tuned weights stored by `save_tuned`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tuned weights {path} do not exist")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if METADATA_KEY not in metadata:
            raise ValueError(
                f"{path} holds no tuning config (metadata '{METADATA_KEY}'); "
                "was it written by speechssl.tuning.save_tuned?"
            )
        state = {k: f.get_tensor(k) for k in f.keys()}
    config = from_dict(TuningConfig, json.loads(metadata[METADATA_KEY]), source=str(path))
    return config, state


def load_tuned(upstream: nn.Module, path: str | Path) -> TuningReport:
    """Apply the stored tuning to a freshly loaded `upstream` (or one already tuned with the same
    config) and load the stored weights into it."""
    config, state = read_tuned(path)
    applied = getattr(upstream, "tuning", None)
    if applied is None:
        apply_tuning(upstream, config)
    elif applied.config != config:
        raise ValueError(f"{path} was tuned with {config}, the upstream with {applied.config}")
    load_tuned_state_dict(upstream, state, source=str(path))
    return count_parameters(upstream)
