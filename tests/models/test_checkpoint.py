"""Checkpoint dirs: exact round trip, atomic overwrite, strict keys, config resolution."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from speechssl.config import ConfigError
from speechssl.models import build_model, get_preset, load_model, resolve_model_config, save_checkpoint
from speechssl.testing.models import perturb_, random_waves


@pytest.mark.parametrize("name", ["hubert_tiny", "hubert_tiny_fbank"])
def test_save_load_round_trip_is_exact(tmp_path, name):
    config = get_preset(name)
    model = perturb_(build_model(config)).eval()
    save_checkpoint(model, config, tmp_path / "ckpt")
    loaded, loaded_config = load_model(tmp_path / "ckpt")
    assert loaded_config == config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    wavs, lens = random_waves([6400, 3000])
    with torch.no_grad():
        assert torch.equal(model(wavs, lens).last_hidden_state, loaded(wavs, lens).last_hidden_state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dirs left behind


def test_overwrite_replaces_the_whole_checkpoint(tmp_path):
    config = get_preset("hubert_tiny")
    save_checkpoint(build_model(config), config, tmp_path / "ckpt")
    state = perturb_(build_model(config), seed=3).state_dict()
    save_checkpoint(state, config, tmp_path / "ckpt")
    loaded = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_the_same_weights_give_the_same_bytes(tmp_path):
    """Two identical runs' results compare with sha256 or cmp (the safetensors header included:
    its metadata map was written in a random order)."""
    config = get_preset("hubert_tiny")
    state = build_model(config).state_dict()
    for i in range(12):  # a random order differs from the first in 12 writes but with p = 2 ** -11
        save_checkpoint(state, config, tmp_path / f"ckpt_{i}")
    first = (tmp_path / "ckpt_0" / "model.safetensors").read_bytes()
    for i in range(1, 12):
        assert (tmp_path / f"ckpt_{i}" / "model.safetensors").read_bytes() == first, i


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    config = get_preset("hubert_tiny")
    save_checkpoint(build_model(config), config, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "model.safetensors"
    state = load_file(str(path))
    state.pop("encoder.layer_norm.weight")
    state["encoder.extra.weight"] = torch.zeros(1)
    save_file(state, str(path))
    (tmp_path / "ckpt" / "manifest.json").unlink()  # a hand-edited dir (the manifest would refuse it)
    with pytest.raises(
        ValueError, match="missing keys: encoder.layer_norm.weight .* unexpected keys: encoder.extra.weight"
    ):
        load_model(tmp_path / "ckpt")


def test_resolve_model_config_from_preset_yaml_and_dir(tmp_path):
    assert resolve_model_config("hubert_tiny") == get_preset("hubert_tiny")
    yaml_path = tmp_path / "model.yaml"
    yaml_path.write_text("model:\n  family: wav2vec2\n  encoder:\n    embed_dim: 64\n    num_heads: 4\n")
    config = resolve_model_config(yaml_path)
    assert config.family == "wav2vec2" and config.encoder.embed_dim == 64
    save_checkpoint(build_model(get_preset("wav2vec2_tiny")), get_preset("wav2vec2_tiny"), tmp_path / "c")
    assert resolve_model_config(tmp_path / "c") == get_preset("wav2vec2_tiny")
    (tmp_path / "bad.yaml").write_text("family: hubert\nencoder:\n  num_head: 4\n")
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'num_head' in .*bad.yaml \(section encoder\); did you mean 'num_heads'",
    ):
        resolve_model_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="'hubert_small' is neither a preset"):
        resolve_model_config("hubert_small")
    with pytest.raises(FileNotFoundError, match="is not a speechssl checkpoint"):
        load_model(tmp_path)
