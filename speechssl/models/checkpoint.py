"""Model checkpoints: a directory with config.yaml (typed ModelConfig) + model.safetensors.

safetensors holds only tensors and config.yaml is read with yaml.safe_load into
dataclasses, so loading never executes code from the files.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from speechssl.config import ConfigError, from_dict, load_yaml, save_config
from speechssl.io import atomic_directory
from speechssl.models.config import ModelConfig
from speechssl.models.model import SSLModel, build_model
from speechssl.models.presets import PRESETS, get_preset

CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.safetensors"


def is_checkpoint_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def save_checkpoint(model_or_state: nn.Module | dict[str, Tensor], config: ModelConfig, path: str | Path) -> Path:
    """Write `path/config.yaml` and `path/model.safetensors` atomically.

    Files go to a temp dir beside `path` that is then renamed into place, so a
    crash leaves either the old checkpoint or the new one, never a mix.
    """
    path = Path(path)
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    # safetensors refuses shared or non-contiguous storage: store independent copies
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with atomic_directory(path) as tmp:
        save_config(config, tmp / CONFIG_NAME)
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "library": "speechssl"})
    return path


def load_model_config(path: str | Path) -> ModelConfig:
    """Read a ModelConfig YAML (either the mapping itself or under a `model:` section)."""
    data = load_yaml(path)
    if "model" in data and isinstance(data["model"], dict) and "family" not in data:
        data = data["model"]
    return from_dict(ModelConfig, data, source=str(path))


def check_state_keys(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Raise listing missing / unexpected / wrongly shaped keys (never load half a model)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {'; '.join(shapes)}")
    if problems:
        raise ValueError(f"{source} does not fit the model config: " + " | ".join(problems))


def load_state_into(model: SSLModel, state: dict[str, Tensor], source: str) -> SSLModel:
    check_state_keys(model, state, source)
    model.load_state_dict(state, strict=True)
    return model


def split_pretraining_state(state: dict[str, Tensor], family: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A pretraining checkpoint holds the backbone under `<family>.` (as transformers'
    Wav2Vec2ForPreTraining does) beside its objective heads -> (backbone, heads).
    A plain backbone checkpoint comes back unchanged with no heads."""
    prefix = f"{family}."
    if not any(k.startswith(prefix) for k in state):
        return state, {}
    backbone = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    heads = {k: v for k, v in state.items() if not k.startswith(prefix)}
    return backbone, heads


def load_model_with_heads(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> tuple[SSLModel, ModelConfig, dict[str, Tensor]]:
    """Like `load_model`, also returning the pretraining-head weights of a training checkpoint."""
    path = Path(path)
    if not is_checkpoint_dir(path):
        raise FileNotFoundError(f"{path} is not a speechssl checkpoint (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    config = load_model_config(path / CONFIG_NAME)
    model = build_model(config)
    state, heads = split_pretraining_state(load_file(str(path / WEIGHTS_NAME), device=str(map_location)), config.family)
    load_state_into(model, state, str(path / WEIGHTS_NAME))
    return model.eval(), config, heads


def load_model(path: str | Path, *, map_location: str | torch.device = "cpu") -> tuple[SSLModel, ModelConfig]:
    """Build the model of a checkpoint dir and load its weights -> (model in eval mode, config).
    Training checkpoints (`speechssl pretrain`) load too: their heads are left out."""
    model, config, _ = load_model_with_heads(path, map_location=map_location)
    return model, config


def resolve_model_config(spec: str | Path | ModelConfig) -> ModelConfig:
    """A ModelConfig from a preset name, a YAML file or a checkpoint dir."""
    if isinstance(spec, ModelConfig):
        return spec
    text = str(spec)
    if text in PRESETS:
        return get_preset(text)
    path = Path(text)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path} is a directory without {CONFIG_NAME}")
        return load_model_config(path / CONFIG_NAME)
    if path.is_file():
        return load_model_config(path)
    if path.suffix in (".yaml", ".yml") or os.sep in text:
        raise FileNotFoundError(f"model config {path} does not exist")
    raise ConfigError(f"'{text}' is neither a preset ({', '.join(PRESETS)}) nor a YAML file or checkpoint dir")
