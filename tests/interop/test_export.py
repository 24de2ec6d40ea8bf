"""`speechssl export`: the exported files load in their toolkits with the same hidden states."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import transformers

import speechssl
from speechssl.cli.main import main
from speechssl.models import build_model, get_preset, save_checkpoint
from speechssl.testing.models import perturb_, random_waves


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tiny = get_preset("hubert_tiny")
    # conv width != embed_dim: fairseq only has a feature projection then
    config = replace(tiny, frontend=replace(tiny.frontend, conv_dim=[32] * len(tiny.frontend.conv_dim)))
    model = build_model(config)
    perturb_(model, scale=0.05)
    path = tmp_path_factory.mktemp("ckpt") / "hubert_tiny"
    save_checkpoint(model, config, path)
    return path


def _hidden(up, wavs, lens):
    with torch.no_grad():
        return up(wavs, lens).hidden_states


def test_hf_export_loads_in_transformers_with_the_same_hidden_states(checkpoint, tmp_path):
    assert (
        main(["export", "--upstream", str(checkpoint), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    )
    hf = transformers.HubertModel.from_pretrained(tmp_path / "hf").eval()
    ours = speechssl.load_upstream(checkpoint)
    wav = random_waves([6400])[0][:1]
    with torch.no_grad():
        theirs = hf(wav, output_hidden_states=True).hidden_states
    mine = _hidden(ours, wav, torch.tensor([6400]))
    assert len(theirs) == len(mine)
    for a, b in zip(theirs, mine):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["fairseq", "s3prl"])
def test_pt_exports_round_trip_through_load_upstream(checkpoint, tmp_path, fmt):
    out = tmp_path / f"model_{fmt}.pt"
    assert main(["export", "--upstream", str(checkpoint), "--format", fmt, "--out", str(out)]) == 0
    wavs, lens = random_waves([6400, 4000])
    for a, b in zip(
        _hidden(speechssl.load_upstream(checkpoint), wavs, lens),
        _hidden(speechssl.load_upstream(out), wavs, lens),
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_models_with_per_layer_sizes_are_refused_naming_what_can_carry_them(tmp_path, capsys):
    config = get_preset("hubert_tiny_fbank")
    save_checkpoint(build_model(config), config, tmp_path / "fbank")
    assert (
        main(
            ["export", "--upstream", str(tmp_path / "fbank"), "--format", "hf", "--out", str(tmp_path / "x")]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "cannot carry this model" in err and not (tmp_path / "x").exists()
    assert "formats that can: onnx, torchscript" in err
