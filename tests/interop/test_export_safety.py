"""`speechssl export` never deletes what it did not write (issue 12, item 1) and never exports
a damaged checkpoint (item 7): every case as a user hits it, asserting the one-line message and
that the files already there survive."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from speechssl.cli.main import main
from speechssl.models import build_model, get_preset, save_checkpoint
from speechssl.outputs import MARKER

_TINY = get_preset("hubert_tiny")
# conv width != embed_dim: fairseq / s3prl only have a feature projection then
CONFIG = replace(_TINY, frontend=replace(_TINY.frontend, conv_dim=[32] * len(_TINY.frontend.conv_dim)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "ckpt"
    save_checkpoint(build_model(CONFIG), CONFIG, path)
    return path


def _export(checkpoint, fmt, out, *extra):
    return main(["export", "--upstream", str(checkpoint), "--format", fmt, "--out", str(out), *extra])


def test_hf_into_a_dir_with_foreign_files_is_refused_and_they_survive(checkpoint, tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep").write_text("x\n")
    assert _export(checkpoint, "hf", out) == 1
    err = capsys.readouterr().err
    assert "already holds files that `speechssl export` did not write (keep)" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["keep"] and (out / "keep").read_text() == "x\n"


def test_hf_rerun_into_its_own_output_works_and_overwrite_replaces_foreign_files(checkpoint, tmp_path):
    out = tmp_path / "hf"
    assert _export(checkpoint, "hf", out) == 0
    assert (out / MARKER).is_file() and (out / "model.safetensors").is_file()
    assert _export(checkpoint, "hf", out) == 0  # its own earlier output: a re-run is safe
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep").write_text("x\n")
    assert _export(checkpoint, "hf", foreign, "--overwrite") == 0
    assert (foreign / "config.json").is_file() and (foreign / MARKER).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_an_experiment_dir_is_refused_even_with_overwrite(checkpoint, tmp_path, capsys):
    exp = tmp_path / "exp"
    (exp / "checkpoints" / "step_4").mkdir(parents=True)
    (exp / "checkpoints" / "step_4" / "model.safetensors").write_bytes(b"weights")
    (exp / "train.log").write_text("log\n")
    for extra in ((), ("--overwrite",)):
        assert _export(checkpoint, "hf", exp, *extra) == 1
        assert "is an experiment dir" in capsys.readouterr().err
    assert (exp / "checkpoints" / "step_4" / "model.safetensors").read_bytes() == b"weights"
    assert (exp / "train.log").read_text() == "log\n"
    # a dir inside the experiment, even a checkpoint of it, is not replaced either
    assert _export(checkpoint, "hf", exp / "checkpoints", "--overwrite") == 1
    assert (
        "(an experiment dir); export never writes over it, even with --overwrite" in capsys.readouterr().err
    )
    assert (
        _export(checkpoint, "onnx", exp / "checkpoints" / "step_4" / "model.safetensors", "--overwrite") == 1
    )
    assert "(an experiment dir); export never writes over it" in capsys.readouterr().err
    assert (exp / "checkpoints" / "step_4" / "model.safetensors").read_bytes() == b"weights"


def test_the_source_itself_is_refused_even_with_overwrite(checkpoint, tmp_path, capsys):
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}
    assert _export(checkpoint, "hf", checkpoint, "--overwrite") == 1
    assert "is an input of this command" in capsys.readouterr().err
    assert _export(checkpoint, "hf", checkpoint.parent, "--overwrite") == 1  # a dir holding the source
    assert "contains an input of this command" in capsys.readouterr().err
    assert _export(checkpoint, "onnx", checkpoint / "config.yaml", "--overwrite") == 1  # a file inside it
    assert (
        "(an input of this command); export never writes over it, even with --overwrite"
        in capsys.readouterr().err
    )
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == before
    # a fairseq .pt exported as itself
    pt = tmp_path / "model.pt"
    assert _export(checkpoint, "fairseq", pt) == 0
    data = pt.read_bytes()
    assert _export(pt, "fairseq", pt, "--overwrite") == 1
    assert "is an input of this command" in capsys.readouterr().err and pt.read_bytes() == data


@pytest.mark.parametrize("fmt", ["s3prl", "torchscript"])
def test_an_existing_file_needs_overwrite_and_a_rerun_may_replace_its_own(checkpoint, tmp_path, capsys, fmt):
    out = tmp_path / "model.pt"
    out.write_text("my notes\n")
    assert _export(checkpoint, fmt, out) == 1
    assert f"--out {out} already exists; choose another --out, or pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "my notes\n"
    assert _export(checkpoint, fmt, out, "--overwrite") == 0
    assert _export(checkpoint, fmt, out) == 0  # export wrote it and nobody changed it since
    assert out.read_bytes()[:4] != b"my n"


def test_the_output_is_checked_before_the_source_is_read(tmp_path, capsys):
    src = tmp_path / "broken"
    src.mkdir()
    (src / "config.yaml").write_text("family: hubert\n")
    (src / "model.safetensors").write_bytes(b"not safetensors")
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep").write_text("x\n")
    assert _export(src, "hf", out) == 1
    assert "already holds files" in capsys.readouterr().err  # refused before any model work


@pytest.mark.parametrize("fmt", ["onnx", "hf"])
def test_no_verify_export_of_a_nan_checkpoint_is_refused(tmp_path, capsys, fmt):
    src = tmp_path / "nan"
    save_checkpoint(build_model(CONFIG), CONFIG, src)
    state = load_file(str(src / "model.safetensors"))
    state["encoder.layers.0.attention.q_proj.weight"][0, 0] = float("inf")
    save_file(state, str(src / "model.safetensors"))
    (src / "manifest.json").unlink()  # as if written before manifests, then damaged
    out = tmp_path / ("out.onnx" if fmt == "onnx" else "hf")
    assert _export(src, fmt, out, "--no-verify") == 1
    err = capsys.readouterr().err
    assert "nan/model.safetensors: weight 'encoder.layers.0.attention.q_proj.weight' holds NaN or inf" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    assert torch.isinf(
        load_file(str(src / "model.safetensors"))["encoder.layers.0.attention.q_proj.weight"][0, 0]
    )


@pytest.mark.parametrize("fmt", ["torchscript", "onnx", "hf"])
def test_a_full_disk_is_one_line_and_leaves_no_temp(checkpoint, tiny_fs, capsys, fmt):
    disk = tiny_fs(96)
    (disk / "keep.txt").write_text("precious")
    out = disk / ("model_hf" if fmt == "hf" else "model.pt")
    assert _export(checkpoint, fmt, out, "--no-verify") == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "No space left on device" in err, err
    assert sorted(os.listdir(disk)) == ["keep.txt"]
