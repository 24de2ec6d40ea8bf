"""The upstream interface: every kind `load_upstream` returns (built-in FBANK baseline, speechssl
checkpoints with a waveform or a filterbank frontend, transformers dirs, our ONNX and TorchScript
exports) passes one contract test."""

from __future__ import annotations

import pytest
import torch

import speechssl
from speechssl.interop.export import export_upstream
from speechssl.interop.graph_upstream import GraphUpstream
from speechssl.interop.transformers_io import save_transformers
from speechssl.interop.upstream import (
    BUILTIN_UPSTREAMS,
    Upstream,
    load_upstream,
    require_network,
    upstream_name,
)
from speechssl.models import build_model, get_preset, save_checkpoint
from speechssl.models.fbank_upstream import FbankUpstream
from speechssl.models.upstream_api import UpstreamModel, UpstreamOutput
from speechssl.testing.models import perturb_, random_waves, tiny_config

LENGTHS = [16000, 9000, 5200]  # samples: 1 s, and shorter utterances padded in the batch


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("upstreams")
    out = {"fbank": "fbank"}
    configs = {"conv": tiny_config(mode="layer_norm"), "fbank_frontend": get_preset("hubert_tiny_fbank")}
    for name, config in configs.items():
        save_checkpoint(perturb_(build_model(config), scale=0.05), config, root / name)
        out[name] = str(root / name)
    config = tiny_config()
    save_transformers(perturb_(build_model(config), scale=0.05).state_dict(), config, root / "hf")
    out["transformers"] = str(root / "hf")
    for fmt, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):  # our exports, read back
        out[fmt] = str(export_upstream(out["conv"], fmt, root / f"conv{suffix}"))
    return out


KINDS = ["fbank", "conv", "fbank_frontend", "transformers", "onnx", "torchscript"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_upstream_satisfies_the_contract(sources, kind):
    up = speechssl.load_upstream(sources[kind])  # the public entry point
    assert isinstance(up, UpstreamModel) and not up.training
    rate, num_layers, dim = up.downsample_rate, up.num_layers, up.hidden_dim
    assert isinstance(rate, int) and isinstance(num_layers, int) and isinstance(dim, int)
    wavs, wav_lens = random_waves(LENGTHS)
    with torch.no_grad():
        out = up(wavs, wav_lens)
        whole = up(wavs[:1], None)  # no wav_lens: every sample is valid
    assert isinstance(out, UpstreamOutput)
    assert len(out.hidden_states) == num_layers + 1
    assert out.lengths.dtype == torch.long and out.lengths.shape == (len(LENGTHS),)
    frames = int(out.lengths.max())
    for h in out.hidden_states:
        assert h.shape == (len(LENGTHS), frames, dim) and torch.isfinite(h).all()
    # one frame per downsample_rate samples, less what the first window / kernels need
    for n, t in zip(LENGTHS, out.lengths.tolist()):
        assert n // rate - 3 <= t <= n // rate
    assert whole.lengths.tolist() == out.lengths[:1].tolist()
    torch.testing.assert_close(whole.hidden_states[-1], out.hidden_states[-1][:1], atol=1e-4, rtol=1e-4)


def test_every_implementation_is_an_upstream_model():
    assert issubclass(Upstream, UpstreamModel) and issubclass(FbankUpstream, UpstreamModel)
    assert issubclass(GraphUpstream, UpstreamModel)
    assert set(BUILTIN_UPSTREAMS) == {"fbank", "fbank_no_cmvn", "fbank_global_cmvn"}
    assert all(isinstance(make(), UpstreamModel) for make in BUILTIN_UPSTREAMS.values())
    with pytest.raises(TypeError, match="abstract"):
        UpstreamModel()  # type: ignore[abstract]


def test_load_upstream_names_what_it_accepts(tmp_path):
    builtins = r"\(fbank, fbank_no_cmvn, fbank_global_cmvn\)"
    message = rf"upstream '.*nothing' is neither a built-in upstream {builtins} nor an existing checkpoint"
    with pytest.raises(FileNotFoundError, match=message):
        load_upstream(tmp_path / "nothing")


def test_callers_that_need_the_network_refuse_a_builtin_baseline(sources, tmp_path):
    assert require_network(load_upstream(sources["conv"]), sources["conv"], "export").num_layers == 2
    refused = "export needs a network with weights, but upstream 'fbank' is a built-in FbankUpstream"
    with pytest.raises(ValueError, match=refused):
        export_upstream("fbank", "hf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    from speechssl.compression.distill import load_teacher  # distillation and pruning load teachers here

    with pytest.raises(ValueError, match="a teacher needs a network with weights, but upstream 'fbank'"):
        load_teacher("fbank")


def test_upstream_name_is_the_builtin_name_or_the_checkpoint_name(sources, tmp_path):
    assert upstream_name("fbank") == "fbank"
    assert upstream_name(sources["conv"]) == "conv"
    (tmp_path / "model.pt").write_bytes(b"")
    assert upstream_name(tmp_path / "model.pt") == "model"
