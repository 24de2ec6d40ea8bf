"""`speechssl export --format onnx`: onnxruntime runs the file at other batch sizes and lengths
than the export batch and agrees with the PyTorch upstream on every valid frame."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import speechssl  # noqa: E402
from speechssl.cli.main import main  # noqa: E402
from speechssl.interop import onnx_export, torchscript_export  # noqa: E402
from speechssl.interop.export import export_upstream  # noqa: E402
from speechssl.models import build_model, get_preset, save_checkpoint  # noqa: E402
from speechssl.models.config import ModelConfig  # noqa: E402
from speechssl.testing.models import perturb_, random_waves, tiny_config  # noqa: E402

TOL = 1e-4
# Export traces a batch of lengths (8000, 5600); checks use other batch sizes and lengths.
CHECK_LENGTHS = [[7040, 3333, 12000], [400]]


def _pruned() -> ModelConfig:
    """Per-layer sizes like a DPHuBERT result: fewer heads, narrower FFNs, removed blocks."""
    config = tiny_config(num_layers=4)
    return replace(
        config,
        encoder=replace(config.encoder, layer_num_heads=[4, 1, 0, 3], layer_ffn_dims=[64, 0, 24, 7]),
    )


EXPORT_CASES: dict[str, ModelConfig] = {
    "conv_group_norm": tiny_config(),
    # pre-LN + layer-norm conv + waveform normalisation: the Large / LV-60 layout
    "conv_layer_norm": replace(
        tiny_config(mode="layer_norm", layer_norm_first=True), normalize_waveform=True
    ),
    "fbank": get_preset("hubert_tiny_fbank"),
    "pruned": _pruned(),
}


def build_checkpoint(root: Path, name: str) -> Path:
    """A speechssl checkpoint of EXPORT_CASES[name] with every weight moved off its init."""
    config = EXPORT_CASES[name]
    model = perturb_(build_model(config), scale=0.05)
    return save_checkpoint(model, config, root / name)


def reference(checkpoint: Path, wavs: torch.Tensor, lens: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        out = speechssl.load_upstream(checkpoint)(wavs, lens)
    return torch.stack(out.hidden_states).numpy(), out.lengths.numpy()


def assert_valid_frames_close(
    hidden: np.ndarray, lengths: np.ndarray, ref: np.ndarray, ref_lens: np.ndarray
) -> None:
    """hidden / ref: (L + 1, B, T, D); only frames below each utterance's length count."""
    assert hidden.shape == ref.shape
    np.testing.assert_array_equal(lengths, ref_lens)
    for b, n in enumerate(ref_lens):
        np.testing.assert_allclose(hidden[:, b, :n], ref[:, b, :n], atol=TOL, rtol=0)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx_ckpts")
    return {name: build_checkpoint(root, name) for name in EXPORT_CASES}


@pytest.mark.parametrize("name", list(EXPORT_CASES))
def test_onnxruntime_agrees_with_pytorch_at_new_batch_sizes_and_lengths(checkpoints, tmp_path, name):
    out = tmp_path / f"{name}.onnx"
    assert main(["export", "--upstream", str(checkpoints[name]), "--format", "onnx", "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    up = speechssl.load_upstream(checkpoints[name])
    for lengths in CHECK_LENGTHS:
        wavs, lens = random_waves(lengths, seed=3)
        hidden, frames = session.run(
            ["hidden_states", "lengths"], {"wavs": wavs.numpy(), "wav_lens": lens.numpy()}
        )
        ref, ref_lens = reference(checkpoints[name], wavs, lens)
        assert hidden.shape[0] == up.num_layers + 1 and hidden.shape[-1] == up.hidden_dim
        assert frames.dtype == np.int64
        assert_valid_frames_close(hidden, frames, ref, ref_lens)


@pytest.mark.parametrize("name", ["conv_group_norm", "fbank"])
def test_onnx_frame_counts_are_zero_below_one_window(checkpoints, tmp_path, name):
    """Floor division exported as floor, not truncation: a row shorter than the receptive field
    has 0 frames, as in PyTorch (the exporter truncates aten::floor_divide: 1 frame)."""
    out = onnx_export.export_onnx(speechssl.load_upstream(checkpoints[name]), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    up = speechssl.load_upstream(checkpoints[name])
    lens = torch.tensor([8000, 399, 200, 1, 0])
    wavs, _ = random_waves([8000] * len(lens), seed=3)
    (frames,) = session.run(["lengths"], {"wavs": wavs.numpy(), "wav_lens": lens.numpy()})
    expected = up.model.num_frames(lens).tolist()
    assert frames.tolist() == expected and expected[1:] == [0, 0, 0, 0]


def test_onnx_graph_declares_the_contract_with_symbolic_batch_and_time(checkpoints, tmp_path):
    out = onnx_export.export_onnx(speechssl.load_upstream(checkpoints["pruned"]), tmp_path / "m.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    outputs = {o.name: (o.type, o.shape) for o in session.get_outputs()}
    assert inputs == {
        "wavs": ("tensor(float)", ["batch", "samples"]),
        "wav_lens": ("tensor(int64)", ["batch"]),
    }
    assert outputs["lengths"] == ("tensor(int64)", ["batch"])
    kind, shape = outputs["hidden_states"]
    assert kind == "tensor(float)" and shape[0] == 5 and shape[1] == "batch" and isinstance(shape[2], str)
    assert shape[3] == 32
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["num_layers"] == "4" and meta["downsample_rate"] == "320" and meta["library"] == "speechssl"


def test_no_file_is_left_when_the_check_fails(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setattr(torchscript_export, "TOLERANCE", -1.0)  # any difference, even 0, now fails
    out = tmp_path / "bad.onnx"
    with pytest.raises(RuntimeError, match=r"ONNX export .*bad\.onnx differs from the PyTorch model"):
        onnx_export.export_onnx(speechssl.load_upstream(checkpoints["conv_group_norm"]), out)
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_lists_the_graph_formats(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="valid formats: hf, s3prl, fairseq, onnx, torchscript"):
        export_upstream(checkpoints["fbank"], "tflite", tmp_path / "x")
