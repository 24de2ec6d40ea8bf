"""`speechssl export --format torchscript`: torch.jit.load gives a module with the ONNX contract
that agrees with the PyTorch upstream at other batch sizes and lengths than it was traced with."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import speechssl
from speechssl.cli.main import main
from speechssl.interop.torchscript_export import EXTRA_FILE, TRACE_LENGTHS, ExportableUpstream, trace_upstream
from speechssl.testing.models import random_waves
from tests.interop.test_export_onnx import (
    CHECK_LENGTHS,
    EXPORT_CASES,
    assert_valid_frames_close,
    build_checkpoint,
    reference,
)


def jit_load(path: Path, **kwargs) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        return torch.jit.load(str(path), **kwargs)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ts_ckpts")
    return {name: build_checkpoint(root, name) for name in EXPORT_CASES}


@pytest.mark.parametrize("name", list(EXPORT_CASES))
def test_jit_load_agrees_with_pytorch_at_new_batch_sizes_and_lengths(checkpoints, tmp_path, name):
    out = tmp_path / f"{name}.pt"
    assert (
        main(["export", "--upstream", str(checkpoints[name]), "--format", "torchscript", "--out", str(out)])
        == 0
    )
    module = jit_load(out)
    for lengths in CHECK_LENGTHS:
        assert len(lengths) != len(TRACE_LENGTHS) and max(lengths) != max(TRACE_LENGTHS)
        wavs, lens = random_waves(lengths, seed=5)
        with torch.no_grad():
            hidden, frames = module(wavs, lens)
        assert frames.dtype == torch.long
        assert_valid_frames_close(hidden.numpy(), frames.numpy(), *reference(checkpoints[name], wavs, lens))


def test_metadata_travels_inside_the_file(checkpoints, tmp_path):
    out = tmp_path / "fbank.pt"
    assert (
        main(
            [
                "export",
                "--upstream",
                str(checkpoints["fbank"]),
                "--format",
                "torchscript",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    files = {EXTRA_FILE: ""}
    jit_load(out, _extra_files=files)
    meta = json.loads(files[EXTRA_FILE])
    up = speechssl.load_upstream(checkpoints["fbank"])
    assert (meta["num_layers"], meta["hidden_dim"], meta["downsample_rate"]) == (2, 64, up.downsample_rate)


def test_export_leaves_the_source_model_usable(checkpoints):
    """Folding weight norm for export must not touch the live model (parametrized classes are shared)."""
    up = speechssl.load_upstream(checkpoints["conv_group_norm"])
    wavs, lens = random_waves([4000, 3000])
    with torch.no_grad():
        before = torch.stack(up(wavs, lens).hidden_states)
        ExportableUpstream(up)
        after = torch.stack(up(wavs, lens).hidden_states)
    assert torch.equal(before, after)
    assert "parametrizations" in dict(up.model.encoder.pos_conv_embed.conv.named_children())


@pytest.mark.parametrize("name", ["fbank", "pruned"])
def test_tracing_bakes_in_no_python_values(checkpoints, name):
    """A TracerWarning from our code would mean a shape or value frozen at the trace batch."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace_upstream(speechssl.load_upstream(checkpoints[name]))
    assert [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)] == []
