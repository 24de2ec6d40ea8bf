"""End to end: speechssl features -> kmeans fit -> kmeans label -> units score."""

from __future__ import annotations

import json

import numpy as np
import pytest

from speechssl.testing.cli import dump_features, kmeans_fit, kmeans_label, run_cli
from speechssl.units.metrics import UnitQuality
from speechssl.units.report import default_names, format_table, score_label_files


def test_pipeline_end_to_end(phone_corpus, tmp_path, capsys):
    data, ctm = phone_corpus
    feats, km = tmp_path / "feats", tmp_path / "km"
    for rank in range(2):
        assert dump_features(data, feats, "--nshard", "2", "--rank", rank) == 0
    assert kmeans_fit(feats, "8", km, "--n-init", "2", "--batch-size", "512", "--max-iter", "20") == 0
    assert np.load(km / "centroids.npy", allow_pickle=False).shape == (8, 39)
    for k in (8, 3):
        if k == 3:  # a second label set to compare
            assert (
                kmeans_fit(
                    feats, "3", tmp_path / "km3", "--n-init", "2", "--batch-size", "512", "--max-iter", "20"
                )
                == 0
            )
        model = km if k == 8 else tmp_path / "km3"
        assert kmeans_label(feats, model, tmp_path / f"km{k}_units") == 0
    labels = (tmp_path / "km8_units" / "labels").read_text().splitlines()
    assert [line.split()[0] for line in labels] == sorted(line.split()[0] for line in labels)
    assert len(labels) == 6
    capsys.readouterr()

    out = tmp_path / "scores.json"
    assert (
        run_cli(
            "units",
            "score",
            "--labels",
            tmp_path / "km8_units" / "labels",
            tmp_path / "km3_units" / "labels",
            "--alignments",
            ctm,
            "--out",
            out,
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "km8_units" in printed and "PNMI" in printed
    doc = json.loads(out.read_text())
    assert doc["frame_shift"] == 0.02 and [r["name"] for r in doc["results"]] == ["km8_units", "km3_units"]
    k8, k3 = doc["results"]
    # tones, noise and silence are easy to tell apart from MFCCs
    assert k8["pnmi"] > 0.5 and k8["phone_purity"] > 0.7
    assert k8["num_units"] <= 8 and k3["num_units"] <= 3 and k8["num_phones"] == 4
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wrong_frame_shift_names_an_utterance(phone_corpus, tmp_path, capsys):
    data, ctm = phone_corpus
    feats = tmp_path / "feats"
    assert dump_features(data, feats) == 0
    assert (
        kmeans_fit(feats, "4", tmp_path / "km", "--n-init", "1", "--batch-size", "256", "--max-iter", "10")
        == 0
    )
    assert kmeans_label(feats, tmp_path / "km", tmp_path / "u") == 0
    capsys.readouterr()
    assert (
        run_cli(
            "units",
            "score",
            "--labels",
            tmp_path / "u" / "labels",
            "--alignments",
            ctm,
            "--frame-shift",
            "0.01",
            "--plot",
            tmp_path / "p.png",
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "at 0.01 s per frame" in err and "utterance 'spk0-utt0'" in err and "unit labels but" in err
    assert not (tmp_path / "p.png").exists()


def test_feature_cli_errors(tmp_path, capsys):
    assert dump_features(tmp_path, tmp_path / "f", feature="upstream") == 1
    assert "--feature upstream needs --upstream SRC" in capsys.readouterr().err
    assert dump_features(tmp_path, tmp_path / "f", "--layer", "3") == 1
    assert "apply to --feature upstream only" in capsys.readouterr().err
    assert kmeans_label(tmp_path, tmp_path, tmp_path) == 1
    assert "no finished feature shard" in capsys.readouterr().err


def test_upstream_feature_cli(phone_corpus, tmp_path):
    import torch

    from speechssl.features.dump import FeatureReader
    from speechssl.models.checkpoint import save_checkpoint
    from speechssl.models.model import build_model
    from speechssl.models.presets import hubert_tiny

    torch.manual_seed(0)
    config = hubert_tiny()
    ckpt = save_checkpoint(build_model(config), config, tmp_path / "ckpt")
    data, _ = phone_corpus
    assert (
        dump_features(
            data, tmp_path / "f", "--upstream", ckpt, "--layer", "1", "--device", "cpu", feature="upstream"
        )
        == 0
    )
    reader = FeatureReader(tmp_path / "f")
    assert reader.feature_dim == 64 and reader.frame_rate == 50.0
    # the name records which weights made the features (a retrained checkpoints/last differs)
    assert reader.feature_name.startswith(f"upstream:{ckpt}@") and reader.feature_name.endswith(":layer1")


def test_default_names_and_table():
    assert default_names(["exp/a/labels", "exp/b/labels"]) == ["a", "b"]
    assert default_names(["it1/km/labels", "it2/km/labels"]) == ["it1/km", "it2/km"]
    assert default_names(["x.km"]) == ["x.km"]
    table = format_table({"a": UnitQuality(0.5, 0.75, 0.25, 10, 2, 3, 4)})
    assert "0.5000" in table and "0.7500" in table and table.splitlines()[0].startswith("labels")


def test_names_must_match(phone_corpus, tmp_path):
    _, ctm = phone_corpus
    with pytest.raises(ValueError, match="1 names given for 2 label files"):
        score_label_files(["a", "b"], ctm, names=["x"])
