"""Model checkpoints: a directory with config.yaml (typed ModelConfig) + model.safetensors
(+ manifest.json: size and sha256 of each file).

safetensors holds only tensors and config.yaml is read with yaml.safe_load into
dataclasses, so loading never executes code from the files.

Every load checks what it reads before it builds anything:
- the manifest, where one exists (training checkpoints, and every dir `save_checkpoint` writes):
  sizes always; sha256 with `verify="sha256"`, and by default (`"auto"`) whenever the weights
  are at most `AUTO_SHA256_BYTES` (hashing is ~1 GB/s, cheaper than building the model; a bit
  flip keeps the size, so only the checksum sees one that leaves the weights finite);
- the declared sizes against the tensor shapes in the weights file's header, on the meta
  device, so a config that declares a huge model allocates nothing;
- every floating tensor is finite (a flipped exponent bit, a diverged run): NaN weights would
  otherwise give all-NaN features with exit 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from speechssl.config import ConfigError, from_dict, load_yaml, save_config
from speechssl.errors import OutputExistsError, SpeechSSLError
from speechssl.io import atomic_directory
from speechssl.models.config import ConvFrontendConfig, ModelConfig
from speechssl.models.model import SSLModel, build_model
from speechssl.models.presets import PRESETS, get_preset

CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "model.safetensors"
MANIFEST_NAME = "manifest.json"
VerifyLevel = Literal["auto", "size", "sha256"]
VERIFY_LEVELS = ("auto", "size", "sha256")
AUTO_SHA256_BYTES = 1 << 30  # "auto" hashes weights up to 1 GiB (every base-size model; ~1 s)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.")
_CONV_KEY = re.compile(r"^feature_extractor\.conv_layers\.(\d+)\.conv\.weight$")


class CheckpointError(SpeechSSLError, ValueError):
    """A checkpoint that is missing, incomplete, corrupt, or does not fit its config."""


# --- manifest ---------------------------------------------------------------------------------
def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path, extra: Mapping[str, object] | None = None) -> None:
    """Record size + sha256 of every file in `directory` (synced first) in manifest.json (last)."""
    files = {}
    for f in sorted(directory.iterdir()):
        if f.name == MANIFEST_NAME or not f.is_file():
            continue
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
        files[f.name] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    (directory / MANIFEST_NAME).write_text(json.dumps({**(extra or {}), "files": files}, indent=1))


def read_manifest(ckpt: str | Path) -> dict[str, dict]:
    """The `files` of `ckpt/manifest.json` ({name: {"bytes", "sha256"}}), its shape checked:
    anything else (not JSON, a list, missing keys, negative sizes, names with a path) is a
    CheckpointError naming the file, never a traceback."""
    path = Path(ckpt) / MANIFEST_NAME

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {ckpt} is corrupt: {MANIFEST_NAME} {what}")

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise bad("is not UTF-8 text") from None
    except ValueError as err:
        raise bad(f"is not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise bad("must be a JSON object with a 'files' object (name -> {bytes, sha256})")
    files = data["files"]
    for name, entry in files.items():
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise bad(f"lists '{name}', which is not a file name in the checkpoint dir")
        if not isinstance(entry, dict):
            raise bad(f"entry '{name}' must be an object with 'bytes' and 'sha256', found {entry!r}")
        size, digest = entry.get("bytes"), entry.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad(f"entry '{name}': 'bytes' must be a non-negative integer, found {size!r}")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise bad(f"entry '{name}': 'sha256' must be 64 hex digits, found {digest!r}")
    return files


def verify_manifest(
    ckpt: str | Path,
    *,
    level: VerifyLevel = "sha256",
    names: tuple[str, ...] | None = None,
    required: tuple[str, ...] = (WEIGHTS_NAME,),
) -> None:
    """Check `ckpt`'s files against its manifest (which must exist); raise CheckpointError.

    `names`: the files to check (None: every file the manifest lists); `required`: files the
    manifest must list (an empty manifest verifies nothing, so it is an error). `level`:
    "size" checks sizes only, "sha256" also the checksums, "auto" the checksums of files that
    together are at most AUTO_SHA256_BYTES.
    """
    ckpt = Path(ckpt)
    if level not in VERIFY_LEVELS:
        raise ValueError(f"verify must be one of {', '.join(VERIFY_LEVELS)}, found {level!r}")
    files = read_manifest(ckpt)
    if not files:
        raise CheckpointError(f"checkpoint {ckpt} is corrupt: {MANIFEST_NAME} lists no files")
    for name in required:
        if name not in files:
            raise CheckpointError(f"checkpoint {ckpt} is corrupt: {MANIFEST_NAME} does not list {name}")
    checked = [n for n in files if names is None or n in names]
    for name in checked:
        path = ckpt / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {ckpt} is corrupt: {name} is missing")
        size = path.stat().st_size
        if size != files[name]["bytes"]:
            raise CheckpointError(
                f"checkpoint {ckpt} is corrupt: {name} has {size} bytes, "
                f"expected {files[name]['bytes']} (truncated?)"
            )
    if level == "size" or (level == "auto" and sum(files[n]["bytes"] for n in checked) > AUTO_SHA256_BYTES):
        return
    for name in checked:
        if sha256_file(ckpt / name) != files[name]["sha256"]:
            raise CheckpointError(
                f"checkpoint {ckpt} is corrupt: {name} does not match its sha256 checksum "
                "(damaged on disk or in a copy)"
            )


# --- weights ----------------------------------------------------------------------------------
def check_finite(state: Mapping[str, Tensor], source: str | Path) -> None:
    """Raise CheckpointError naming `source` and the first floating tensor holding NaN or inf."""
    for key, value in state.items():
        if isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{source}: weight '{key}' holds NaN or inf values (a damaged file, or a run that diverged);"
                " use an earlier checkpoint"
            )


def read_safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header, without reading the data."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({str(err).splitlines()[0]})"
        ) from None


def load_safetensors(path: str | Path, *, device: str = "cpu") -> dict[str, Tensor]:
    """load_file with a one-line error naming the file for a damaged one."""
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({str(err).splitlines()[0]})"
        ) from None


# Config fields the shape check names, as our ModelConfig spells them.
OUR_NAMES = {
    "num_layers": "encoder.num_layers",
    "embed_dim": "encoder.embed_dim",
    "ffn_dim": "encoder.ffn_dim",
    "pos_conv_kernel": "encoder.pos_conv_kernel",
    "conv_dim": "frontend.conv_dim",
    "conv_kernel": "frontend.conv_kernel",
}


def _declared_vs_found(config: ModelConfig, shapes: Mapping[str, tuple[int, ...]]):
    """(field, declared, found in the weights, key) for the sizes the weights show directly."""
    enc = config.encoder
    layers = {int(m.group(1)) for k in shapes if (m := _LAYER_KEY.match(k))}
    if layers:
        yield "num_layers", enc.num_layers, max(layers) + 1, "encoder.layers.*"
    if "encoder.layer_norm.weight" in shapes:
        yield "embed_dim", enc.embed_dim, shapes["encoder.layer_norm.weight"][0], "encoder.layer_norm.weight"
    ffn_key = "encoder.layers.0.feed_forward.intermediate_dense.weight"
    if enc.layer_ffn_dims is None and ffn_key in shapes:
        yield "ffn_dim", enc.ffn_dim, shapes[ffn_key][0], ffn_key
    for key in (
        "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
        "encoder.pos_conv_embed.conv.weight",
        "encoder.pos_conv_embed.layers.0.conv.weight",  # data2vec-audio's stack
    ):
        if key in shapes and len(shapes[key]) == 3:
            yield "pos_conv_kernel", enc.pos_conv_kernel, shapes[key][2], key
            break
    if isinstance(config.frontend, ConvFrontendConfig):
        convs = {int(m.group(1)): s for k, s in shapes.items() if (m := _CONV_KEY.match(k))}
        if convs:
            declared, count = len(config.frontend.conv_dim), max(convs) + 1
            if declared != count:  # a list of 10000 values is not worth printing
                yield (
                    "conv_dim",
                    f"[{declared} values]",
                    f"{count} conv layers",
                    "feature_extractor.conv_layers.*",
                )
                return
            dims = [convs[i][0] if i in convs else None for i in range(max(convs) + 1)]
            kernels = [convs[i][-1] if i in convs else None for i in range(max(convs) + 1)]
            yield (
                "conv_dim",
                list(config.frontend.conv_dim),
                dims,
                "feature_extractor.conv_layers.*.conv.weight",
            )
            yield (
                "conv_kernel",
                list(config.frontend.conv_kernel),
                kernels,
                "feature_extractor.conv_layers.*.conv.weight",
            )


def check_config_fits(
    config: ModelConfig,
    shapes: Mapping[str, tuple[int, ...]],
    *,
    weights: str | Path,
    config_source: str | Path,
    names: Mapping[str, str] | None = None,
) -> None:
    """Raise CheckpointError unless the model `config` declares has exactly the tensor shapes
    in `weights` (keys as our model names them). Runs before any model is built: the declared
    sizes are compared first, then the full state of a model built on the meta device (no
    memory), so a config declaring hidden_size 1e6 or 10000 layers costs nothing.
    `names` maps our field names to the config file's (transformers: hidden_size ...)."""
    names = {**OUR_NAMES, **(names or {})}
    for field, declared, found, key in _declared_vs_found(config, shapes):
        if declared != found:
            raise CheckpointError(
                f"{config_source} declares {names[field]}={declared}, but {weights} holds {found} ({key}):"
                " the config does not belong to these weights"
            )
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(config).state_dict().items()}
    problems = _key_problems(expected, shapes)
    if problems:
        raise CheckpointError(f"{weights} does not fit {config_source}: " + " | ".join(problems))


def _key_problems(expected: Mapping[str, tuple], found: Mapping[str, tuple]) -> list[str]:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(found[k])} vs model {tuple(v)}"
        for k, v in expected.items()
        if k in found and tuple(found[k]) != tuple(v)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {'; '.join(shapes)}")
    return problems


# --- checkpoint dirs --------------------------------------------------------------------------
def is_checkpoint_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def save_checkpoint(
    model_or_state: nn.Module | dict[str, Tensor], config: ModelConfig, path: str | Path
) -> Path:
    """Write `path/config.yaml`, `path/model.safetensors` and `path/manifest.json` atomically.

    Files go to a temp dir beside `path` that is then renamed into place, so a
    crash leaves either the old checkpoint or the new one, never a mix; a full disk
    is a one-line WriteFailedError naming `path`, with the temp dir removed. Only a checkpoint is
    ever replaced: an existing `path` that holds anything else is refused.
    """
    path = Path(path)
    if path.is_dir() and any(path.iterdir()) and not is_checkpoint_dir(path):
        raise OutputExistsError(
            f"{path} holds files that are not a speechssl checkpoint: save the checkpoint elsewhere"
        )
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    # safetensors refuses shared or non-contiguous storage: store independent copies
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with atomic_directory(path) as tmp:
        save_config(config, tmp / CONFIG_NAME)
        # one metadata key: safetensors writes the map in a random order, and the same weights must
        # give the same bytes (sha256, cmp of two runs' results)
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        write_manifest(tmp)
    return path


def load_model_config(path: str | Path) -> ModelConfig:
    """Read a ModelConfig YAML (either the mapping itself or under a `model:` section)."""
    data = load_yaml(path)
    if "model" in data and isinstance(data["model"], dict) and "family" not in data:
        data = data["model"]
    return from_dict(ModelConfig, data, source=str(path))


def check_state_keys(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Raise listing missing / unexpected / wrongly shaped keys (never load half a model)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = _key_problems(expected, {k: tuple(v.shape) for k, v in state.items()})
    if problems:
        raise CheckpointError(f"{source} does not fit the model config: " + " | ".join(problems))


def load_state_into(model: SSLModel, state: dict[str, Tensor], source: str) -> SSLModel:
    check_state_keys(model, state, source)
    model.load_state_dict(state, strict=True)
    return model


def split_pretraining_state(state: dict, family: str) -> tuple[dict, dict]:
    """A pretraining checkpoint holds the backbone under `<family>.` (as transformers'
    Wav2Vec2ForPreTraining does) beside its objective heads -> (backbone, heads).
    A plain backbone checkpoint comes back unchanged with no heads. (Works on shape dicts too.)"""
    prefix = f"{family}."
    if not any(k.startswith(prefix) for k in state):
        return state, {}
    backbone = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    heads = {k: v for k, v in state.items() if not k.startswith(prefix)}
    return backbone, heads


def verify_checkpoint_dir(path: str | Path, verify: VerifyLevel = "auto") -> None:
    """The manifest check of a model load: the files read (config.yaml, model.safetensors) against
    manifest.json where the dir has one (older and hand-made dirs have none)."""
    path = Path(path)
    if (path / MANIFEST_NAME).exists():
        verify_manifest(path, level=verify, names=(CONFIG_NAME, WEIGHTS_NAME))


def load_model_with_heads(
    path: str | Path, *, map_location: str | torch.device = "cpu", verify: VerifyLevel = "auto"
) -> tuple[SSLModel, ModelConfig, dict[str, Tensor]]:
    """Like `load_model`, also returning the pretraining-head weights of a training checkpoint."""
    path = Path(path)
    if not is_checkpoint_dir(path):
        raise FileNotFoundError(
            f"{path} is not a speechssl checkpoint (needs {CONFIG_NAME} and {WEIGHTS_NAME})"
        )
    verify_checkpoint_dir(path, verify)
    config = load_model_config(path / CONFIG_NAME)
    weights = path / WEIGHTS_NAME
    backbone_shapes, _ = split_pretraining_state(read_safetensors_shapes(weights), config.family)
    check_config_fits(config, backbone_shapes, weights=weights, config_source=path / CONFIG_NAME)
    full = load_safetensors(weights, device=str(map_location))
    check_finite(full, weights)
    state, heads = split_pretraining_state(full, config.family)
    model = build_model(config)
    load_state_into(model, state, str(weights))
    return model.eval(), config, heads


def load_model(
    path: str | Path, *, map_location: str | torch.device = "cpu", verify: VerifyLevel = "auto"
) -> tuple[SSLModel, ModelConfig]:
    """Build the model of a checkpoint dir and load its weights -> (model in eval mode, config).
    Training checkpoints (`speechssl pretrain`) load too: their heads are left out. `verify`:
    how far the manifest is checked (see the module docstring)."""
    model, config, _ = load_model_with_heads(path, map_location=map_location, verify=verify)
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
    raise ConfigError(
        f"'{text}' is neither a preset ({', '.join(PRESETS)}) nor a YAML file or checkpoint dir"
    )
