"""YAML <-> typed dataclass configs, strict about keys.

A misspelt key is the most common silent bug in research configs, so every
key must name a field: `unknown key 'mask_prb' in conf/x.yaml (section model);
did you mean 'mask_prob'?`. Nested dataclasses map onto YAML sections; lists
are YAML lists; tuples come back as tuples. A key or value that came from a
`--set key=value` override is blamed on that option, not on the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from speechssl.errors import SpeechSSLError
from speechssl.io import atomic_write_text

T = TypeVar("T")


class ConfigError(SpeechSSLError, ValueError):
    """A config file or override that does not fit its dataclass."""


def _describe(source: str | None, section: str) -> str:
    where = f" in {source}" if source else ""
    return f"{where} (section {section})" if section else where


def _override_of(name: str, overrides: Sequence[str]) -> str | None:
    """The `--set` item that set dotted key `name` or a section above it (the last one wins, as
    `apply_override` applies them in order); None when the value came from the file."""
    parts = re.sub(r"\[\d+\]", "", name).split(".")
    keys = [item.split("=", 1)[0].strip() for item in overrides]
    for depth in range(len(parts), 0, -1):
        prefix = ".".join(parts[:depth])
        for key, item in reversed(list(zip(keys, overrides))):
            if key == prefix:
                return item
    return None


def _where(source: str | None, section: str, name: str, overrides: Sequence[str]) -> str:
    """` in --set a.b=1 (section a)` for a key an override set, else ` in FILE (section a)`."""
    item = _override_of(name, overrides)
    return _describe(f"--set {item}", section) if item is not None else _describe(source, section)


def _with_overrides(source: str | None, section: str, overrides: Sequence[str]) -> str | None:
    """`FILE with --set ...` naming the overrides inside `section` (the whole config when ''): a
    validation error of the section may come from the file or from them."""
    keys = [o.split("=", 1)[0].strip() for o in overrides]
    inside = [
        o for o, k in zip(overrides, keys) if not section or k == section or k.startswith(f"{section}.")
    ]
    return " with ".join([*([source] if source else []), *(f"--set {o}" for o in inside)]) or None


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _convert(value: Any, tp: Any, source: str | None, section: str, overrides: Sequence[str] = ()) -> Any:
    tp, optional = _unwrap_optional(tp)
    where = _where(source, "", section, overrides)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(f"'{section}' may not be null{where}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping for '{section}'{where}, found {value!r}")
        return from_dict(tp, value, source=source, section=section, overrides=overrides)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(
                f"expected a list for '{section}'{where}, found {value!r}"
                " (lists are YAML lists, not comma-joined strings)"
            )
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"expected {len(args)} items for '{section}'{where}, found {len(value)}")
            items = [
                _convert(v, a, source, f"{section}[{i}]", overrides)
                for i, (v, a) in enumerate(zip(value, args))
            ]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(v, item_tp, source, f"{section}[{i}]", overrides) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping for '{section}'{where}, found {value!r}")
        return dict(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 reads `1e-3` (no dot) as a string; it is a float to anyone writing a config
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"expected float for '{section}'{where}, found {value!r}") from None
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"expected int for '{section}'{where}, found {value!r}")
    if tp in (int, str, bool, float) and not isinstance(value, tp):
        raise ConfigError(f"expected {tp.__name__} for '{section}'{where}, found {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"'{section}' must be one of {', '.join(map(repr, allowed))}{where}, found {value!r}"
            )
    return value


def _merge_sections(cls: type, base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, descending only into sections typed as one dataclass (a union
    section such as the frontend is taken whole: its keys depend on the chosen type)."""
    hints = typing.get_type_hints(cls)
    merged = dict(base)
    for key, value in override.items():
        tp = hints.get(key)
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and dataclasses.is_dataclass(tp):
            value = _merge_sections(tp, merged[key], value)
        merged[key] = value
    return merged


def _over_field_default(f: dataclasses.Field, tp: Any, value: Any) -> Any:
    """A partial section fills in from the field's own default (e.g. a fine-tuning config's
    `trainer` default with 20k steps), not from the section class's defaults."""
    if not isinstance(value, dict) or not dataclasses.is_dataclass(tp):
        return value
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    elif f.default is not dataclasses.MISSING:
        default = f.default
    else:
        return value
    if not dataclasses.is_dataclass(default):
        return value
    return _merge_sections(tp, to_dict(default), value)


def from_dict(
    cls: type[T],
    data: dict[str, Any],
    *,
    source: str | None = None,
    section: str = "",
    overrides: Sequence[str] = (),
) -> T:
    """Build dataclass `cls` from a mapping; unknown keys raise ConfigError. `overrides`: the
    `key=value` items applied to `data` (apply_override); an error about a key one of them set
    names that `--set` option instead of `source`."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        name = f"{section}.{key}" if section else str(key)
        where = _where(source, section, name, overrides)
        renamed = getattr(cls, "RENAMED_KEYS", {}).get(key)  # a key an earlier release used
        if key not in fields and renamed is not None:
            raise ConfigError(f"unknown key '{key}'{where}: {key} is now {renamed}")
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(fields))}"
            raise ConfigError(f"unknown key '{key}'{where}{hint}")
        value = _over_field_default(fields[key], hints[key], value)
        kwargs[key] = _convert(value, hints[key], source, name, overrides)
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{err}{_describe(source, section)}") from None
    except ValueError as err:  # __post_init__ validation: from the file or an override of the section
        raise ConfigError(f"{err}{_describe(_with_overrides(source, section, overrides), section)}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Dataclass -> plain YAML-able dict (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(config)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; an empty file is an empty mapping."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory: give a YAML config file")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, found {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] | None = None) -> T:
    """Read `path` (None: the defaults) into `cls`, then apply `key.sub=value` overrides
    (values parsed as YAML)."""
    data = load_yaml(path) if path is not None else {}
    for item in overrides or []:
        apply_override(data, item)
    return from_dict(cls, data, source=None if path is None else str(path), overrides=overrides or ())


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one `a.b.c=value` override to a nested mapping in place."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value (e.g. optim.lr=1e-4)")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{item}': '{part}' is not a section")
    node[parts[-1]] = yaml.safe_load(raw)


def config_yaml(config: Any) -> str:
    """A dataclass config as the YAML `save_config` writes (a run compares it with EXP/config.yaml)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def save_config(config: Any, path: str | Path) -> None:
    """Write a dataclass config as YAML (atomic: temp file, then rename)."""
    atomic_write_text(path, config_yaml(config))
