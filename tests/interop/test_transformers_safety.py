"""transformers dirs as a hostile or careless user hands them over (issue 12, items 10 and 12):
a pickled `pytorch_model.bin` that holds code is refused naming the file and never run; odd
config.json values are one-line errors naming the key; a config.json declaring a huge model is
refused from the weights' shapes before anything is built."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

import speechssl
from speechssl.interop.safe_pickle import UnsafeCheckpointError
from speechssl.interop.transformers_io import save_transformers
from speechssl.models import build_model, get_preset
from speechssl.models.checkpoint import CheckpointError

CONFIG = get_preset("hubert_tiny")


@pytest.fixture
def hf_dir(tmp_path):
    path = tmp_path / "hf"
    save_transformers(build_model(CONFIG), CONFIG, path)
    return path


class _Evil:
    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pytorch_model_bin_holding_code_is_refused_naming_the_file_and_never_run(hf_dir, tmp_path, legacy):
    flag = tmp_path / "pwned"
    state = {f"hubert.{k}": v for k, v in build_model(CONFIG).state_dict().items()}
    state["hubert.evil"] = _Evil(flag)
    (hf_dir / "model.safetensors").unlink()
    torch.save(state, hf_dir / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError) as info:
        speechssl.load_upstream(hf_dir)
    message = str(info.value)
    assert message.startswith(f"{hf_dir / 'pytorch_model.bin'}: refusing to unpickle ")
    assert "system" in message and "holds code or objects that are not weights" in message
    assert "weights_only" not in message and "\n" not in message
    assert not flag.exists()


def test_a_truncated_pytorch_model_bin_is_one_line_naming_the_file(hf_dir):
    state = {f"hubert.{k}": v for k, v in build_model(CONFIG).state_dict().items()}
    (hf_dir / "model.safetensors").unlink()
    torch.save(state, hf_dir / "pytorch_model.bin")
    data = (hf_dir / "pytorch_model.bin").read_bytes()
    (hf_dir / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=r"hf/pytorch_model.bin is not a readable PyTorch checkpoint \(truncated"
    ):
        speechssl.load_upstream(hf_dir)


def test_a_plain_pickle_is_not_called_code_and_names_no_torch_advice(hf_dir, recwarn):
    import pickle

    (hf_dir / "model.safetensors").unlink()
    (hf_dir / "pytorch_model.bin").write_bytes(pickle.dumps({"a": [1, 2]}, protocol=4))
    with pytest.raises(
        CheckpointError,
        match=r"pytorch_model.bin is not a readable PyTorch checkpoint: its pickle cannot"
        r" be read as weights \(Unsupported operand \d+\); nothing in it was run$",
    ):
        speechssl.load_upstream(hf_dir)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


def test_a_fairseq_pt_holding_code_is_refused_naming_the_file(tmp_path):
    flag = tmp_path / "pwned"
    torch.save({"model": {}, "cfg": {}, "args": _Evil(flag)}, tmp_path / "hubert.pt")
    with pytest.raises(
        UnsafeCheckpointError, match=r"hubert.pt: refusing to unpickle \S*system: the file holds code"
    ):
        speechssl.load_upstream(tmp_path / "hubert.pt")
    assert not flag.exists()


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("hidden_size", "64", "'hidden_size' must be an integer >= 1, found '64'"),
        ("num_hidden_layers", -2, "'num_hidden_layers' must be an integer >= 1, found -2"),
        ("intermediate_size", 12.5, "'intermediate_size' must be an integer >= 1, found 12.5"),
        ("num_attention_heads", 5, "'num_attention_heads' must be a divisor of hidden_size (64), found 5"),
        ("num_attention_heads", 0, "'num_attention_heads' must be an integer >= 1, found 0"),
        (
            "num_conv_pos_embedding_groups",
            3,
            "'num_conv_pos_embedding_groups' must be a divisor of hidden_size (64)",
        ),
        ("hidden_act", "tanh", "'hidden_act' must be one of gelu, relu, swish, silu, gelu_new, found 'tanh'"),
        ("hidden_act", None, "'hidden_act' must be one of"),
        ("conv_dim", "512", "'conv_dim' must be a non-empty list of positive integers, found '512'"),
        (
            "conv_stride",
            [5, 2, 2, 2, 2, 2, -2],
            "'conv_stride' must be a non-empty list of positive integers",
        ),
        ("conv_kernel", [10, 3], "'conv_dim', 'conv_kernel' and 'conv_stride' must have the same length"),
        ("hidden_dropout", 1.5, "'hidden_dropout' must be a number in [0.0, 1.0), found 1.5"),
        ("layer_norm_eps", "1e-5", "'layer_norm_eps' must be a number in [0.0, 1.0], found '1e-5'"),
        ("do_stable_layer_norm", "false", "'do_stable_layer_norm' must be true or false, found 'false'"),
        ("feat_extract_norm", "batch", "'feat_extract_norm' must be one of group, layer, found 'batch'"),
        (
            "num_feat_extract_layers",
            3,
            "'num_feat_extract_layers' must be the length of 'conv_dim' (7), found 3",
        ),
    ],
)
def test_odd_config_values_are_one_line_errors_naming_the_key(hf_dir, key, value, expected):
    config = json.loads((hf_dir / "config.json").read_text())
    config[key] = value
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError) as info:
        speechssl.load_upstream(hf_dir)
    assert str(info.value).startswith(f"{hf_dir / 'config.json'}: {expected}")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[1, 2]", "config.json: expected a JSON object at the top level, found list"),
        ('{"model_type": "hubert",\n "hidden_size": 64,,}', r"config.json:2: not valid JSON"),
    ],
)
def test_a_config_json_that_is_not_an_object_names_the_file(hf_dir, text, expected):
    (hf_dir / "config.json").write_text(text)
    with pytest.raises(ValueError, match=expected):
        speechssl.load_upstream(hf_dir)


@pytest.mark.parametrize(
    "key, value",
    [("hidden_size", 1_000_000), ("num_hidden_layers", 10_000), ("intermediate_size", 50_000_000)],
)
def test_a_huge_declared_config_json_is_refused_before_anything_is_built(hf_dir, key, value):
    config = json.loads((hf_dir / "config.json").read_text())
    config[key] = value
    (hf_dir / "config.json").write_text(json.dumps(config))
    start = time.monotonic()
    with pytest.raises(
        CheckpointError, match=rf"config.json declares {key}={value}, but .*hf/model.safetensors holds"
    ):
        speechssl.load_upstream(hf_dir)
    assert time.monotonic() - start < 5  # no 1e6 x 1e6 matrix, no 10000 layers
