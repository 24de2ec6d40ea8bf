"""ONNX and TorchScript exports of the zoo (WavLM, a pruned WavLM, data2vec-audio, UniSpeech-SAT):
the graphs, traced on one padded batch, match the PyTorch upstream on padded batches of other
sizes and lengths (valid frames, 1e-4)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")

import speechssl  # noqa: E402
from speechssl.interop import onnx_export, torchscript_export  # noqa: E402
from speechssl.interop.torchscript_export import TRACE_LENGTHS, max_valid_error, reference_outputs  # noqa: E402
from speechssl.models import build_model, get_preset, save_checkpoint  # noqa: E402
from speechssl.models.config import ModelConfig  # noqa: E402
from speechssl.testing.models import perturb_, random_waves  # noqa: E402

TOL = 1e-4
# other batch sizes and lengths than the trace batch (TRACE_LENGTHS); 14720 samples = 45 frames,
# past WavLM tiny's max_distance of 32 frames; 400 samples = one frame
CHECK_LENGTHS = [[7040, 3333, 14720, 5000], [400]]


def _with_encoder(config: ModelConfig, **changes) -> ModelConfig:
    return dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, **changes))


def _pruned_wavlm() -> ModelConfig:
    """A DPHuBERT-style WavLM: layer 0's attention gone (the shared table lives in layer 1), heads
    kept unevenly with their original indices, an FFN removed."""
    return _with_encoder(
        get_preset("wavlm_tiny"),
        num_layers=4,
        layer_num_heads=[0, 2, 5, 3],
        layer_head_index=[[], [1, 3], [0, 1, 2, 3, 4], [0, 2, 4]],
        layer_ffn_dims=[40, 0, 128, 17],
    )


def _unispeech_sat_tiny() -> ModelConfig:
    config = _with_encoder(get_preset("wav2vec2_tiny"), embed_dim=60, num_heads=3, layer_norm_first=True)
    return dataclasses.replace(config, family="unispeech_sat")


CASES: dict[str, ModelConfig] = {
    "wavlm": get_preset("wavlm_tiny"),
    "wavlm_pre_ln": _with_encoder(get_preset("wavlm_tiny"), layer_norm_first=True),
    "wavlm_pruned": _pruned_wavlm(),
    "data2vec_audio": get_preset("data2vec_tiny"),
    "unispeech_sat": _unispeech_sat_tiny(),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo_ckpts")
    return {
        name: save_checkpoint(perturb_(build_model(config), scale=0.05, seed=3), config, root / name)
        for name, config in CASES.items()
    }


def _check(upstream, run) -> float:
    """Largest valid-frame error of `run(wavs, wav_lens)` over CHECK_LENGTHS; asserts the tolerance."""
    errors = []
    for lengths in CHECK_LENGTHS:
        wavs, lens = random_waves(lengths, seed=7)
        expected = reference_outputs(upstream, wavs, lens)
        assert tuple(lengths) != TRACE_LENGTHS
        errors.append(max_valid_error(expected, run(wavs, lens)))
    assert max(errors) < TOL, errors
    return max(errors)


@pytest.mark.parametrize("name", list(CASES))
def test_torchscript_export_matches_pytorch(checkpoints, tmp_path, name):
    upstream = speechssl.load_upstream(checkpoints[name])
    out = torchscript_export.export_torchscript(upstream, tmp_path / f"{name}.pt")
    loaded = torchscript_export.load_torchscript(out)
    with torch.no_grad():
        error = _check(upstream, loaded)
    print(f"torchscript {name}: max abs error {error:.2e}")


@pytest.mark.parametrize("name", list(CASES))
def test_onnx_export_matches_pytorch(checkpoints, tmp_path, name):
    upstream = speechssl.load_upstream(checkpoints[name])
    out = onnx_export.export_onnx(upstream, tmp_path / f"{name}.onnx")
    session = onnx_export.onnx_session(out)
    error = _check(upstream, lambda w, n: onnx_export.run_onnx(session, w, n))
    print(f"onnx {name}: max abs error {error:.2e}")


def test_pruned_wavlm_checkpoint_is_really_pruned_and_biased(checkpoints):
    """The pruned case exercises what it claims: the table in layer 1 and per-layer head indices."""
    model = speechssl.load_upstream(checkpoints["wavlm_pruned"]).model
    assert model.encoder.layers[0].attention is None and model.encoder.layers[1].feed_forward is None
    assert hasattr(model.encoder.layers[1].attention, "rel_attn_embed")
    assert model.encoder.layers[3].attention.head_index == [0, 2, 4]
