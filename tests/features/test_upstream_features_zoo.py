"""`speechssl features --feature upstream` on WavLM and data2vec-audio checkpoints, then k-means:
the dumped layer equals the upstream's hidden state of each utterance alone (padding, when the
frontend allows batching, changes nothing: WavLM's relative bias is masked per key), and the
features cluster into one unit per frame."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from speechssl import load_upstream
from speechssl.data.audio import load_audio
from speechssl.features.dump import FeatureReader
from speechssl.features.upstream_features import UpstreamExtractor
from speechssl.models.checkpoint import save_checkpoint
from speechssl.models.model import build_model
from speechssl.models.presets import get_preset
from speechssl.testing.cli import dump_features, kmeans_fit, kmeans_label
from speechssl.testing.models import perturb_

CASES = [("wavlm_tiny", "group_norm"), ("wavlm_tiny", "layer_norm"), ("data2vec_tiny", "layer_norm")]


def save_tiny(path, preset: str, mode: str):
    config = get_preset(preset)
    config = dataclasses.replace(config, frontend=dataclasses.replace(config.frontend, mode=mode))
    torch.manual_seed(0)
    return save_checkpoint(perturb_(build_model(config), scale=0.05, seed=1), config, path)


@pytest.mark.parametrize(("preset", "mode"), CASES)
def test_layer_features_then_kmeans(preset, mode, tiny_data, tmp_path):
    ckpt = save_tiny(tmp_path / preset, preset, mode)
    # WavLM on a layer-norm frontend pads for real; data2vec's 2-conv positional stack is not padding
    # invariant (as in fairseq / transformers), so it runs one utterance per forward
    batched = (mode, preset) == ("layer_norm", "wavlm_tiny")
    assert UpstreamExtractor(ckpt, layer=2, device="cpu").batched == batched
    feats = tmp_path / "feats"
    status = dump_features(
        tiny_data, feats, "--upstream", ckpt, "--layer", 2, "--device", "cpu", "--batch-seconds", 100,
        feature="upstream",
    )  # fmt: skip
    assert status == 0
    reader = FeatureReader(feats)
    dim = get_preset(preset).encoder.embed_dim
    assert reader.feature_dim == dim and reader.frame_rate == 50.0
    assert reader.feature_name.endswith(":layer2")
    dumped = dict(iter(reader))
    assert len(dumped) == 5

    upstream = load_upstream(ckpt).eval()
    assert upstream.config.family == get_preset(preset).family
    scp = dict(line.split(maxsplit=1) for line in (tiny_data / "wav.scp").read_text().splitlines())
    for utt, path in scp.items():
        wav = torch.as_tensor(load_audio(path.strip())).float()
        with torch.no_grad():
            alone = upstream(wav[None], torch.tensor([wav.numel()])).hidden_states[2][0]
        np.testing.assert_allclose(dumped[utt], alone.numpy(), rtol=0, atol=1e-5, err_msg=utt)

    km = tmp_path / "km"
    assert kmeans_fit(feats, 4, km, "--n-init", 2, "--max-iter", 20, "--batch-size", 256) == 0
    assert kmeans_label(feats, km, tmp_path / "units") == 0
    labels = dict(line.split(maxsplit=1) for line in (tmp_path / "units" / "labels").read_text().splitlines())
    assert set(labels) == set(dumped)
    for utt, units in labels.items():
        values = [int(u) for u in units.split()]
        assert len(values) == len(dumped[utt]) and all(0 <= u < 4 for u in values), utt
    assert len({u for units in labels.values() for u in units.split()}) > 1


def test_bad_layer_names_the_wavlm_layers(tiny_data, tmp_path, capsys):
    ckpt = save_tiny(tmp_path / "wavlm", "wavlm_tiny", "layer_norm")
    status = dump_features(
        tiny_data, tmp_path / "f", "--upstream", ckpt, "--layer", 3, "--device", "cpu", feature="upstream"
    )
    assert status == 1
    assert "layer must be in 0..2" in capsys.readouterr().err
