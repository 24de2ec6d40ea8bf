"""Strict YAML -> dataclass configs: a misspelt key is an error, never ignored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from speechssl.config import ConfigError, from_dict, load_config, save_config, to_dict


@dataclass(frozen=True, kw_only=True)
class MaskSection:
    mask_prob: float = 0.65
    mask_length: int = 10


@dataclass(frozen=True, kw_only=True)
class ToyConfig:
    name: str = "toy"
    conv_dim: tuple[int, ...] = (32, 32)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    lr: float = 1e-3
    mask: MaskSection = field(default_factory=MaskSection)
    note: str | None = None

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, found {self.lr}")


def test_misspelt_key_names_key_file_section_and_suggestion(tmp_path):
    path = tmp_path / "hubert_tiny.yaml"
    path.write_text("mask:\n  mask_prb: 0.5\n")
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'mask_prb' in .*hubert_tiny.yaml \(section mask\); did you mean 'mask_prob'\?",
    ):
        load_config(ToyConfig, path)


def test_unknown_key_without_close_match_lists_valid_keys():
    with pytest.raises(
        ConfigError, match=r"unknown key 'zzz'.*valid keys: conv_dim, lr, mask, name, note, precision"
    ):
        from_dict(ToyConfig, {"zzz": 1})


def test_types_lists_literals_and_validation_are_checked():
    with pytest.raises(ConfigError, match="comma-joined"):
        from_dict(ToyConfig, {"conv_dim": "32,32"})
    with pytest.raises(ConfigError, match=r"'precision' must be one of 'fp32', 'bf16', 'fp16'"):
        from_dict(ToyConfig, {"precision": "fp8"})
    with pytest.raises(ConfigError, match="expected int for 'mask.mask_length'"):
        from_dict(ToyConfig, {"mask": {"mask_length": "ten"}})
    with pytest.raises(ConfigError, match="lr must be positive"):
        from_dict(ToyConfig, {"lr": -1})


def test_round_trip_and_overrides(tmp_path):
    cfg = from_dict(ToyConfig, {"conv_dim": [8, 16, 16], "lr": 2, "mask": {"mask_prob": 0.3}})
    assert cfg.conv_dim == (8, 16, 16) and isinstance(cfg.lr, float)
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    assert load_config(ToyConfig, path) == cfg
    over = load_config(ToyConfig, path, overrides=["mask.mask_length=3", "note=hello"])
    assert over.mask.mask_length == 3 and over.note == "hello"
    assert to_dict(over)["conv_dim"] == [8, 16, 16]
    with pytest.raises(ConfigError, match="key=value"):
        load_config(ToyConfig, path, overrides=["mask.mask_length"])
    with pytest.raises(ConfigError, match="unknown key 'mask_lenght'.*did you mean 'mask_length'"):
        load_config(ToyConfig, path, overrides=["mask.mask_lenght=3"])


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_config(ToyConfig, path)


@dataclass(frozen=True, kw_only=True)
class Outer:
    mask: MaskSection = field(default_factory=lambda: MaskSection(mask_prob=0.3, mask_length=4))


def test_partial_section_keeps_the_fields_own_default():
    assert from_dict(Outer, {"mask": {"mask_length": 7}}).mask == MaskSection(mask_prob=0.3, mask_length=7)


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\n")  # YAML 1.1 reads this as a string
    assert load_config(ToyConfig, path).lr == 1e-3
    with pytest.raises(ConfigError, match="expected float for 'lr'"):
        from_dict(ToyConfig, {"lr": "fast"})


@dataclass(frozen=True, kw_only=True)
class ConvSection:
    type: str = "conv"
    conv_dim: int = 8


@dataclass(frozen=True, kw_only=True)
class FbankSection:
    type: str = "fbank"
    num_mel_bins: int = 80


@dataclass(frozen=True, kw_only=True)
class Net:
    frontend: ConvSection | FbankSection = field(default_factory=ConvSection)
    mask: MaskSection = field(default_factory=MaskSection)


@dataclass(frozen=True, kw_only=True)
class Run:
    net: Net = field(default_factory=lambda: Net(mask=MaskSection(mask_length=3)))


def test_a_union_section_is_replaced_whole_not_merged_with_the_other_type():
    run = from_dict(
        Run, {"net": {"frontend": {"type": "fbank", "num_mel_bins": 40}, "mask": {"mask_prob": 0.1}}}
    )
    assert run.net.frontend == {"type": "fbank", "num_mel_bins": 40}  # raw: the owner picks the class by type
    assert run.net.mask == MaskSection(mask_prob=0.1, mask_length=3)  # nested default of the parent's factory


def test_an_override_is_blamed_for_its_own_key_and_value_not_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 0.01\nmask:\n  mask_prob: 0.5\n")
    with pytest.raises(
        ConfigError, match=r"^unknown key 'mask_lenght' in --set mask.mask_lenght=3 \(section mask\); did you"
    ):
        load_config(ToyConfig, path, ["mask.mask_lenght=3"])
    with pytest.raises(ConfigError, match=r"^unknown key 'lrr' in --set lrr=1; did you mean 'lr'\?$"):
        load_config(ToyConfig, path, ["lrr=1"])
    with pytest.raises(
        ConfigError, match=r"^expected int for 'mask.mask_length' in --set mask=\{mask_length: x\}"
    ):
        load_config(ToyConfig, path, ["mask={mask_length: x}"])  # a whole section set by the override
    with pytest.raises(ConfigError, match=r"^expected int for 'conv_dim\[1\]' in --set conv_dim=\[1, x\]"):
        load_config(ToyConfig, path, ["conv_dim=[1, x]"])
    # a key the file set stays the file's, whatever else was overridden
    path.write_text("mask:\n  mask_prb: 0.5\n")
    with pytest.raises(ConfigError, match=r"^unknown key 'mask_prb' in .*run.yaml \(section mask\)"):
        load_config(ToyConfig, path, ["mask.mask_length=3"])
    # a validation error may come from the file or the override: both are named
    path.write_text("lr: 0.5\n")
    with pytest.raises(
        ConfigError, match=r"^lr must be positive, found -1.0 in .*run.yaml with --set lr=-1$"
    ):
        load_config(ToyConfig, path, ["lr=-1"])


def test_a_missing_or_directory_config_is_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^config file .*nope.yaml does not exist$"):
        load_config(ToyConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"is a directory: give a YAML config file$"):
        load_config(ToyConfig, tmp_path)
