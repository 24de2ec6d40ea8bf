"""Layer-L features from a tiny speechssl checkpoint, dumped in batches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from speechssl.features.dump import FeatureReader, dump_features
from speechssl.features.upstream_features import UpstreamExtractor


def save_tiny(path, mode="group_norm"):
    from speechssl.models.checkpoint import save_checkpoint
    from speechssl.models.model import build_model
    from speechssl.models.presets import hubert_tiny

    torch.manual_seed(0)
    config = hubert_tiny()
    config = dataclasses.replace(config, frontend=dataclasses.replace(config.frontend, mode=mode))
    model = build_model(config)
    with torch.no_grad():  # move every parameter away from its init
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return save_checkpoint(model, config, path)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("ckpt") / "hubert_tiny")


def test_layer_features_match_the_upstream(tiny_checkpoint):
    import speechssl

    extractor = UpstreamExtractor(tiny_checkpoint, layer=1, device="cpu")
    assert (extractor.feature_dim, extractor.frame_rate) == (64, 50.0)
    wav = torch.randn(8000) * 0.1
    (feats,) = extractor.extract([wav])
    up = speechssl.load_upstream(tiny_checkpoint)
    with torch.no_grad():
        ref = up(wav[None], torch.tensor([8000])).hidden_states[1][0]
    assert feats.shape == ((8000 - 400) // 320 + 1, 64)
    np.testing.assert_allclose(feats, ref.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["group_norm", "layer_norm"])
def test_batched_dump_equals_one_at_a_time(mode, tiny_data, tmp_path):
    # group_norm runs one utterance per forward (padding would change it); layer_norm pads for real
    extractor = UpstreamExtractor(save_tiny(tmp_path / "ckpt", mode), layer=2, device="cpu")
    assert extractor.batched == (mode == "layer_norm")
    dump_features(tiny_data, extractor, tmp_path / "one", batch_seconds=0.01, progress=False)
    dump_features(tiny_data, extractor, tmp_path / "many", batch_seconds=100.0, progress=False)
    one, many = dict(iter(FeatureReader(tmp_path / "one"))), dict(iter(FeatureReader(tmp_path / "many")))
    assert list(one) == list(many)
    for utt in one:
        np.testing.assert_allclose(many[utt], one[utt], rtol=0, atol=1e-5, err_msg=utt)


def test_bad_layer(tiny_checkpoint):
    with pytest.raises(ValueError, match=r"layer must be in 0..2 .* found 5"):
        UpstreamExtractor(tiny_checkpoint, layer=5, device="cpu")


def test_a_finished_shard_of_other_weights_is_redone(tiny_data, tmp_path):
    """`checkpoints/last` moves when a model is retrained: its old features must not be reused."""
    ckpt = save_tiny(tmp_path / "last", mode="layer_norm")
    first = dump_features(
        tiny_data, UpstreamExtractor(ckpt, layer=1, device="cpu"), tmp_path / "feats", progress=False
    )
    before = dict(FeatureReader(tmp_path / "feats"))
    again = dump_features(
        tiny_data, UpstreamExtractor(ckpt, layer=1, device="cpu"), tmp_path / "feats", progress=False
    )
    assert again == first  # same weights: the finished shard is kept
    save_tiny(tmp_path / "last", mode="group_norm")  # retrained: other weights at the same path
    dump_features(
        tiny_data, UpstreamExtractor(ckpt, layer=1, device="cpu"), tmp_path / "feats", progress=False
    )
    after = dict(FeatureReader(tmp_path / "feats"))
    assert any(not np.array_equal(before[u], after[u]) for u in before)


def test_global_cmvn_fbank_is_refused_before_the_output_exists(tiny_data, tmp_path, capsys):
    """`fbank_global_cmvn` normalises with train statistics a dump does not have: one line, exit 1,
    and no --out left behind (the library extractor refuses it too)."""
    from speechssl.cli.main import main

    out = tmp_path / "dump"
    args = ["features", "--data", str(tiny_data), "--feature", "upstream", "--layer", "0"]
    assert main([*args, "--upstream", "fbank_global_cmvn", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "normalises with train-split statistics" in err and "\n" not in err
    assert not out.exists()
    with pytest.raises(ValueError, match="train-split statistics"):
        UpstreamExtractor("fbank_global_cmvn", 0)
