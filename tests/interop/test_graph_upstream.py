"""`load_upstream` of our own ONNX and TorchScript exports: the same hidden states and lengths as
the checkpoint they were exported from, on padded batches of odd lengths; foreign graphs and
other files that are not exports are one-line errors naming the file."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

import speechssl  # noqa: E402
from speechssl.cli.main import main  # noqa: E402
from speechssl.interop.graph_upstream import GraphExportError, GraphUpstream  # noqa: E402
from speechssl.models import build_model, get_preset, save_checkpoint  # noqa: E402
from speechssl.models.upstream_api import UpstreamModel  # noqa: E402
from speechssl.testing.datadirs import make_data_dir  # noqa: E402
from speechssl.testing.models import perturb_, random_waves  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:`torch\\.jit\\.:FutureWarning")
TOL = 1e-4  # the export's own check (onnxruntime's kernels round differently)
# two conv families (group-norm conv + post-LN; WavLM's relative position bias) and the fbank frontend
PRESETS = ["hubert_tiny", "wavlm_tiny", "hubert_tiny_fbank"]
LENGTHS = [[7041, 3333, 12001], [401]]  # other sizes than the trace batch; 401 samples = one frame


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, dict[str, Path]]:
    root = tmp_path_factory.mktemp("graph_exports")
    found = {}
    for name in PRESETS:
        config = get_preset(name)
        torch.manual_seed(0)
        ckpt = save_checkpoint(perturb_(build_model(config), scale=0.1, seed=4), config, root / name)
        paths = {"ckpt": ckpt}
        for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
            paths[fmt] = root / f"{name}{suffix}"
            assert main(["export", "--upstream", str(ckpt), "--format", fmt, "--out", str(paths[fmt])]) == 0
        found[name] = paths
    return found


def _valid_error(ref, got) -> tuple[float, float]:
    """(max abs error, max |hidden state|) over the valid frames of every hidden state."""
    assert torch.equal(got.lengths, ref.lengths)
    assert len(got.hidden_states) == len(ref.hidden_states)
    worst, scale = 0.0, 0.0
    for r, g in zip(ref.hidden_states, got.hidden_states):
        assert g.shape == r.shape and g.dtype == torch.float32
        valid = torch.arange(r.shape[1])[None, :] < ref.lengths[:, None]  # (B, T)
        worst = max(worst, (r - g).abs()[valid].max().item())
        scale = max(scale, r.abs()[valid].max().item())
    return worst, scale


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", PRESETS)
def test_graph_export_loads_with_the_checkpoints_hidden_states(exports, name, fmt):
    ours = speechssl.load_upstream(exports[name]["ckpt"])
    graph = speechssl.load_upstream(exports[name][fmt])
    assert isinstance(graph, GraphUpstream) and isinstance(graph, UpstreamModel)
    assert (graph.num_layers, graph.hidden_dim, graph.downsample_rate) == (
        ours.num_layers,
        ours.hidden_dim,
        ours.downsample_rate,
    )
    assert graph.config == ours.config  # what callers read (e.g. whether padding changes the output)
    worst, scale = 0.0, 0.0
    for lengths in LENGTHS:
        wavs, lens = random_waves(lengths, seed=9)
        with torch.no_grad():
            frames = ours(wavs, lens)
            error, size = _valid_error(frames, graph(wavs, lens))
        worst, scale = max(worst, error), max(scale, size)
        if not name.endswith("fbank"):
            assert frames.lengths.tolist() == [(n - 400) // 320 + 1 for n in lengths]
    print(f"{name} {fmt}: max abs error {worst:.2e} (hidden states up to {scale:.1f}), valid frames")
    # TorchScript runs our own ops (exact) except the fbank's FFT, traced as a DFT matmul; the bound
    # is the export's own: TOL per unit of the largest hidden state
    exact = fmt == "torchscript" and not name.endswith("fbank")
    assert worst <= (0.0 if exact else TOL * max(1.0, scale))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_graph_upstream_without_lengths_and_too_short_inputs(exports, fmt):
    graph = speechssl.load_upstream(exports["hubert_tiny"][fmt])
    wavs, _ = random_waves([4000, 4000], seed=2)
    with torch.no_grad():
        out = graph(wavs)
    assert out.lengths.tolist() == [12, 12]
    with pytest.raises(
        ValueError, match=r"batch index \[1\] are too short for one frame .*need at least 400"
    ):
        graph(wavs, torch.tensor([4000, 399]))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_graph_upstreams_copy_and_stay_on_the_cpu_they_were_traced_for(exports, fmt):
    graph = speechssl.load_upstream(exports["hubert_tiny"][fmt])
    twin = copy.deepcopy(graph)  # an onnxruntime session cannot be copied: the copy opens its own
    wavs, lens = random_waves([5000], seed=3)
    with torch.no_grad():
        a, b = graph(wavs, lens), twin.to("meta")(wavs, lens)  # a move leaves the graph on the CPU
    assert torch.equal(a.hidden_states[-1], b.hidden_states[-1])
    assert all(p.device.type == "cpu" for p in twin.parameters())
    assert graph.to(torch.float16)(wavs, lens).hidden_states[0].dtype == torch.float32


def test_graph_exports_are_no_network_for_export_distill_or_tuning(exports, tmp_path, capsys):
    for fmt in ("onnx", "torchscript"):
        src = exports["hubert_tiny"][fmt]
        argv = ["export", "--upstream", str(src), "--format", "hf", "--out", str(tmp_path / fmt)]
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "export needs a network with weights" in err
        assert ("an ONNX export" if fmt == "onnx" else "a TorchScript export") in err


def test_features_dump_of_an_onnx_upstream_equals_the_checkpoints(exports, tmp_path):
    data = make_data_dir(tmp_path).path
    dumps = {}
    for kind in ("ckpt", "onnx"):
        out = tmp_path / f"feats_{kind}"
        argv = ["features", "--data", str(data), "--feature", "upstream", "--layer", "2", "--out", str(out)]
        assert main([*argv, "--upstream", str(exports["hubert_tiny"][kind])]) == 0
        dumps[kind] = np.load(out / "0_1.npy")
    assert dumps["onnx"].shape == dumps["ckpt"].shape
    assert np.abs(dumps["onnx"] - dumps["ckpt"]).max() < TOL


# --------------------------------------------------------------------------- what is refused


def _cli_error(capsys, path: Path) -> str:
    """`speechssl export --upstream PATH` (the load happens first): exit 1 and one line."""
    out = path.parent / "never.onnx"
    assert main(["export", "--upstream", str(path), "--format", "onnx", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and not out.exists()
    return err


class _Scale(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_foreign_torchscript_file_is_one_line_naming_it(tmp_path, capsys):
    path = tmp_path / "foreign.pt"
    torch.jit.save(torch.jit.script(_Scale()), str(path))
    err = _cli_error(capsys, path)
    assert f"{path}: a TorchScript file without speechssl's export metadata" in err
    assert "weights_only" not in err  # torch's advice to unpickle it anyway is not ours to give


def test_foreign_onnx_and_unreadable_files_are_one_line_naming_them(tmp_path, capsys):
    foreign = tmp_path / "foreign.onnx"
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), str(foreign), dynamo=False)
    assert f"{foreign}: an ONNX file without speechssl's export metadata" in _cli_error(capsys, foreign)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    assert f"{garbage} is not a readable ONNX file" in _cli_error(capsys, garbage)
    unknown = tmp_path / "weights.bin"
    unknown.write_bytes(b"\0" * 8)
    assert "unsupported upstream file" in _cli_error(capsys, unknown)


class _Stateful(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = 2.0

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return wavs[None, :, None, :] * self.scale, wav_lens

    @torch.jit.export
    def __getstate__(self) -> tuple[float, bool]:
        return (self.scale, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[float, bool]) -> None:
        self.scale = state[0]  # would run inside torch.jit.load
        self.training = state[1]


def _metadata(**changes) -> str:
    meta = {"library": "speechssl", "num_layers": 0, "hidden_dim": 1, "downsample_rate": 1, "min_samples": 1}
    return json.dumps({**meta, **changes})


def test_torchscript_with_load_time_code_or_bad_metadata_is_refused(tmp_path):
    path = tmp_path / "setstate.pt"
    torch.jit.save(torch.jit.script(_Stateful()), str(path), _extra_files={"speechssl.json": _metadata()})
    with pytest.raises(GraphExportError, match=rf"{path}: refusing to load .* defines __setstate__"):
        speechssl.load_upstream(path)
    bad = tmp_path / "bad_meta.pt"
    torch.jit.save(
        torch.jit.script(_Scale()), str(bad), _extra_files={"speechssl.json": _metadata(num_layers="2")}
    )
    with pytest.raises(GraphExportError, match=rf"{bad}: export metadata 'num_layers' must be an integer"):
        speechssl.load_upstream(bad)


def test_an_export_without_the_model_config_still_loads(exports, tmp_path):
    """Exports written before the metadata carried the model config: `config` is None."""
    src = exports["hubert_tiny"]["torchscript"]
    extra = {"speechssl.json": ""}
    module = torch.jit.load(str(src), _extra_files=extra)
    meta = json.loads(extra["speechssl.json"])
    del meta["model_config"]
    old = tmp_path / "old.pt"
    torch.jit.save(module, str(old), _extra_files={"speechssl.json": json.dumps(meta)})
    graph = speechssl.load_upstream(old)
    assert graph.config is None and graph.num_layers == 2
    wavs, lens = random_waves([4000], seed=1)
    with torch.no_grad():
        assert graph(wavs, lens).hidden_states[0].shape == (1, 12, 64)
