"""Every checkpoint load checks what it reads (issue 12, item 7 and the manifest / huge-config
parts of item 12): a bit-flipped `checkpoints/last` is a one-line error naming the file, never
all-NaN features; a manifest of the wrong shape or listing nothing never "verifies"; a config
declaring a huge model is refused from the weights' header before anything is built."""

from __future__ import annotations

import json
import re
import shutil
import struct
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

import speechssl
from speechssl.config import save_config
from speechssl.models import build_model, get_preset, load_model, save_checkpoint
from speechssl.models.checkpoint import CheckpointError
from speechssl.training import checkpoints as tckpt

CONFIG = get_preset("hubert_tiny")
TENSOR = "encoder.layer_norm.weight"  # all ones at init: 1.0 = 0x3f800000


@pytest.fixture
def exp_last(tmp_path) -> Path:
    """EXP/checkpoints/last of a pretraining run (backbone under `hubert.`, a head beside it)."""
    state = {f"hubert.{k}": v for k, v in build_model(CONFIG).state_dict().items()}
    state["final_proj.weight"] = state["hubert.encoder.layer_norm.bias"][None].clone() + 0.5
    root = tmp_path / "exp" / "checkpoints"
    tckpt.save_checkpoint(root, 4, state, {"step": 4}, lambda p: save_config(CONFIG, p))
    return root / "last"


def _flip_bit(weights: Path, key: str, bit: int) -> None:
    """Flip one bit of the first float32 of `key` in a safetensors file, in place (size kept)."""
    data = bytearray(weights.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    start = json.loads(data[8 : 8 + header_len])[key]["data_offsets"][0] + 8 + header_len
    value = int.from_bytes(data[start : start + 4], "little") ^ (1 << bit)
    data[start : start + 4] = value.to_bytes(4, "little")
    weights.write_bytes(bytes(data))


def test_bit_flipped_last_is_refused_naming_the_file_not_loaded_as_nan(exp_last):
    weights = exp_last / "model.safetensors"
    before = weights.stat().st_size
    _flip_bit(weights, f"hubert.{TENSOR}", 30)  # exponent bit: 1.0 -> inf
    assert weights.stat().st_size == before  # a size check alone cannot see it
    # the default ("auto": sha256 for weights up to 1 GiB) names the file and the checksum
    with pytest.raises(
        CheckpointError, match=r"checkpoints/last is corrupt: model.safetensors does not match its sha256"
    ):
        speechssl.load_upstream(exp_last)
    # sizes only (huge checkpoints): the finite check names the file and the tensor
    with pytest.raises(
        CheckpointError, match=rf"model.safetensors: weight 'hubert.{TENSOR}' holds NaN or inf"
    ):
        load_model(exp_last, verify="size")
    assert weights.stat().st_size == before  # nothing rewritten


def test_a_flip_that_keeps_the_weight_finite_is_caught_by_the_checksum(exp_last):
    _flip_bit(exp_last / "model.safetensors", f"hubert.{TENSOR}", 3)  # mantissa: 1.0 -> 1.0000005
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        load_model(exp_last)
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        load_model(exp_last, verify="sha256")


def test_truncated_weights_fail_the_size_check_even_at_the_cheapest_level(exp_last):
    weights = exp_last / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(
        CheckpointError, match=r"model.safetensors has \d+ bytes, expected \d+ \(truncated\?\)"
    ):
        load_model(exp_last, verify="size")


def test_nan_weights_without_a_manifest_are_refused_naming_the_tensor(tmp_path):
    save_checkpoint(build_model(CONFIG), CONFIG, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    state = load_file(str(weights))
    state["encoder.layers.1.final_layer_norm.bias"][3] = float("nan")
    save_file(state, str(weights))
    (tmp_path / "ckpt" / "manifest.json").unlink()  # a hand-made dir: nothing to verify against
    with pytest.raises(
        CheckpointError,
        match=r"ckpt/model.safetensors: weight 'encoder.layers.1.final_layer_norm.bias'"
        r" holds NaN or inf values",
    ):
        speechssl.load_upstream(tmp_path / "ckpt")


@pytest.mark.parametrize(
    "manifest, problem",
    [
        ("[1, 2]", "must be a JSON object with a 'files' object"),
        ('{"files": []}', "must be a JSON object with a 'files' object"),
        ('{"step": 4}', "must be a JSON object with a 'files' object"),
        (
            '{"files": {"model.safetensors": {"sha256": "%s"}}}' % ("0" * 64),
            "'bytes' must be a non-negative integer",
        ),
        (
            '{"files": {"model.safetensors": {"bytes": -5, "sha256": "%s"}}}' % ("0" * 64),
            "'bytes' must be a non-negative",
        ),
        ('{"files": {"model.safetensors": {"bytes": 5, "sha256": 7}}}', "'sha256' must be 64 hex digits"),
        ('{"files": {"model.safetensors": 12}}', "entry 'model.safetensors' must be an object"),
        (
            '{"files": {"../../x": {"bytes": 1, "sha256": "%s"}}}' % ("0" * 64),
            "lists '../../x', which is not a file name",
        ),
        ("{not json", "is not valid JSON"),
        ('{"files": {}}', "lists no files"),
        (
            '{"step": 4, "files": {"config.yaml": {"bytes": 1, "sha256": "%s"}}}' % ("0" * 64),
            "does not list model.safetensors",
        ),
    ],
)
def test_a_manifest_of_the_wrong_shape_or_listing_nothing_never_verifies(exp_last, manifest, problem):
    (exp_last / "manifest.json").write_text(manifest)
    with pytest.raises(
        CheckpointError, match=r"checkpoints/last is corrupt: manifest.json .*" + re.escape(problem)
    ):
        load_model(exp_last)
    with pytest.raises(CheckpointError, match="manifest.json"):  # resume refuses it too
        tckpt.load_checkpoint(exp_last)


@pytest.mark.parametrize(
    "field, value, name",
    [
        ("num_layers", 10000, "encoder.num_layers=10000"),
        ("embed_dim", 1_000_000, "encoder.embed_dim=1000000"),
        ("ffn_dim", 10_000_000, "encoder.ffn_dim=10000000"),
    ],
)
def test_a_huge_declared_config_is_refused_from_the_header_before_anything_is_built(
    tmp_path, field, value, name
):
    save_checkpoint(build_model(CONFIG), CONFIG, tmp_path / "ckpt")
    config_path = tmp_path / "ckpt" / "config.yaml"
    data = yaml.safe_load(config_path.read_text())
    data["encoder"][field] = value
    config_path.write_text(yaml.safe_dump(data))
    (tmp_path / "ckpt" / "manifest.json").unlink()  # hand-edited: only the shape check stands in the way
    start = time.monotonic()
    with pytest.raises(
        CheckpointError, match=rf"config.yaml declares {name}, but .*ckpt/model.safetensors holds"
    ):
        load_model(tmp_path / "ckpt")
    assert time.monotonic() - start < 5  # nothing of 1e6 x 1e6 or 10000 layers was allocated


def test_save_checkpoint_never_replaces_a_directory_that_is_not_a_checkpoint(tmp_path):
    from speechssl.errors import OutputExistsError
    from speechssl.models import build_model, get_preset, save_checkpoint

    config = get_preset("hubert_tiny")
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "README").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"notes holds files that are not a speechssl checkpoint"):
        save_checkpoint(build_model(config), config, mine)
    assert sorted(p.name for p in mine.iterdir()) == ["README"]
    save_checkpoint(build_model(config), config, tmp_path / "ckpt")
    save_checkpoint(build_model(config), config, tmp_path / "ckpt")  # a checkpoint is replaced


def test_a_last_or_best_copied_as_a_directory_is_refused_naming_the_fix(exp_last):
    """`cp -rL` copies `last`/`best` as directories; `resolve` (resume, pruning, the summary) says so
    in one line and names the step dir with the same manifest, or how to pick one."""
    root = exp_last.parent
    assert tckpt.resolve(root, "last") == root / "step_4"
    exp_last.unlink()
    shutil.copytree(root / "step_4", exp_last)
    with pytest.raises(
        CheckpointError, match=rf"same files as step_4: rm -r {exp_last} && ln -s step_4 {exp_last}$"
    ):
        tckpt.resolve(root, "last")
    (exp_last / "manifest.json").write_text("{}")  # no longer a copy of any step dir
    with pytest.raises(
        CheckpointError, match=r"is not a symlink to a checkpoint .*link last to a step_<N> dir"
    ):
        tckpt.resolve(root, "last")
    assert tckpt.resolve(root, "best") is None
    assert (exp_last / "model.safetensors").is_file() and (
        root / "step_4" / "manifest.json"
    ).stat().st_size > 2


def test_a_copied_best_is_refused_at_resume_even_when_last_is_a_link(exp_last):
    """`cp -rL` copies `best` too: a resume that relinked only `last` would train, then fail to swap
    `best` at its next checkpoint. Both are named at start-up; the commands are quoted for the shell."""
    from speechssl.training.experiment import resume_checkpoint

    root = exp_last.parent
    tckpt.point(root, "best", root / "step_4")
    shutil.copytree(root / "step_4", root / "best.tmp")
    (root / "best").unlink()
    (root / "best.tmp").rename(root / "best")
    with pytest.raises(CheckpointError, match=r"checkpoints/best is not a symlink .*ln -s step_4 \S+/best$"):
        resume_checkpoint(root.parent, True)
    exp_last.unlink()
    shutil.copytree(root / "step_4", exp_last)
    with pytest.raises(CheckpointError, match=r"last and \S+/best are not symlinks") as err:
        tckpt.resolve(root, "last")
    assert "\n" not in str(err.value)


def test_the_relink_commands_are_quoted_for_the_shell(tmp_path):
    """`rm -r EXP copy/checkpoints/last` pasted as printed would remove a dir named EXP."""
    root = tmp_path / "exp copy" / "checkpoints"
    tckpt.save_checkpoint(root, 2, {"w": __import__("torch").ones(2)}, {"step": 2})
    (root / "last").unlink()
    shutil.copytree(root / "step_2", root / "last")
    with pytest.raises(CheckpointError) as err:
        tckpt.resolve(root, "last")
    assert f"rm -r '{root / 'last'}' && ln -s step_2 '{root / 'last'}'" in str(err.value)


def test_a_copied_last_without_its_step_dir_is_renamed_to_the_step_its_manifest_names(exp_last):
    """A copy that kept only `last` and `best` (`rsync -aL --exclude 'step_*'`): no step dir to link
    to; the first copy becomes step_4 and the second is relinked to it."""
    root = exp_last.parent
    tckpt.point(root, "best", root / "step_4")
    for name in ("last", "best"):
        (root / name).unlink()
        shutil.copytree(root / "step_4", root / name)
    shutil.rmtree(root / "step_4")
    with pytest.raises(CheckpointError) as err:
        tckpt.check_links(root)
    assert str(err.value).endswith(
        f"relink: last is step_4 (its manifest): mv {root / 'last'} {root / 'step_4'} && ln -s step_4"
        f" {root / 'last'}; best holds the same files as step_4: rm -r {root / 'best'} && ln -s step_4"
        f" {root / 'best'}"
    )


def test_a_last_that_links_to_itself_is_one_line(exp_last):
    exp_last.unlink()
    exp_last.symlink_to("last")
    with pytest.raises(CheckpointError, match=r"last cannot be followed .*ln -sfn step_<N>"):
        tckpt.resolve(exp_last.parent, "last")
