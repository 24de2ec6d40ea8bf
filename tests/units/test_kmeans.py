"""k-means fit + label round trip on synthetic clustered features."""

from __future__ import annotations

import json

import numpy as np
import pytest

from speechssl.features.dump import FeatureReader, write_shard
from speechssl.units.kmeans import KMeansModel, fit_kmeans, label, nearest_centroid
from speechssl.units.labels import read_labels

FAST = {"n_init": 3, "batch_size": 256, "max_iter": 50}


def clustered_dump(tmp_path, nshard=2, num_utts=12, dim=8, k=5, seed=0):
    """Utterances whose frames come from k well separated Gaussian blobs; returns (dir, truth)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=10.0, size=(k, dim))
    truth, feats = {}, {}
    for i in range(num_utts):
        ids = rng.integers(0, k, size=int(rng.integers(20, 40)))
        truth[f"utt{i:02d}"] = ids
        feats[f"utt{i:02d}"] = means[ids] + rng.normal(scale=0.1, size=(len(ids), dim))
    names = sorted(feats)
    for rank in range(nshard):
        part = names[rank * num_utts // nshard : (rank + 1) * num_utts // nshard]
        write_shard(
            tmp_path / "feats",
            {u: feats[u] for u in part},
            feature="synthetic",
            frame_rate=50.0,
            rank=rank,
            nshard=nshard,
        )
    return tmp_path / "feats", truth


def test_fit_and_label_recover_the_clusters(tmp_path, caplog):
    feats_dir, truth = clustered_dump(tmp_path)
    reader = FeatureReader(feats_dir)
    with caplog.at_level("INFO"):
        model = fit_kmeans(reader, 5, seed=1, out_dir=tmp_path / "km", **FAST)
    assert "MiB of memory" in caplog.text
    assert model.centroids.shape == (5, 8)
    labels = label(reader, tmp_path / "km", tmp_path / "units", progress=False)
    assert read_labels(tmp_path / "units" / "labels") == labels
    # same partition as the truth, up to a renaming of the clusters
    mapping = {}
    for utt, ids in truth.items():
        assert len(labels[utt]) == len(ids)
        for t, u in zip(ids.tolist(), labels[utt]):
            assert mapping.setdefault(t, u) == u
    assert len(set(mapping.values())) == 5
    # labels file is C-sorted; dict.txt lists units 0..K-1 with their frame counts
    lines = (tmp_path / "units" / "labels").read_text().splitlines()
    assert [line.split()[0] for line in lines] == sorted(truth)
    dict_lines = (tmp_path / "units" / "dict.txt").read_text().split("\n")[:-1]
    assert [int(line.split()[0]) for line in dict_lines] == list(range(5))
    assert sum(int(line.split()[1]) for line in dict_lines) == sum(len(v) for v in truth.values())


def test_centroids_are_npy_without_pickle(tmp_path):
    feats_dir, _ = clustered_dump(tmp_path, nshard=1)
    fit_kmeans(FeatureReader(feats_dir), 5, seed=0, out_dir=tmp_path / "km", **FAST)
    files = sorted(p.name for p in (tmp_path / "km").iterdir())
    assert files == ["centroids.npy", "kmeans.json"]
    centroids = np.load(tmp_path / "km" / "centroids.npy", allow_pickle=False)
    assert centroids.dtype == np.float32 and centroids.shape == (5, 8)
    params = json.loads((tmp_path / "km" / "kmeans.json").read_text())
    assert params["num_clusters"] == 5 and params["n_init"] == 3 and params["feature"] == "synthetic"
    assert params["reassignment_ratio"] == 0.0 and params["max_no_improvement"] == 100  # fairseq defaults
    assert np.array_equal(KMeansModel.load(tmp_path / "km").centroids, centroids)


def test_percent_samples_utterances_per_shard(tmp_path):
    feats_dir, _ = clustered_dump(tmp_path, nshard=2, num_utts=20)
    reader = FeatureReader(feats_dir)
    picked = reader.select(0.25, seed=0)
    assert sorted({r for r, _ in picked}) == [0, 1] and len(picked) == 2 * 3  # ceil(10 * 0.25) per shard
    model = fit_kmeans(reader, 5, percent=0.25, seed=0, **FAST)
    assert model.params["num_fit_utts"] == 6


def test_nearest_centroid_matches_brute_force():
    rng = np.random.default_rng(0)
    import torch

    x, c = rng.normal(size=(300, 6)).astype(np.float32), rng.normal(size=(17, 6)).astype(np.float32)
    brute = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(nearest_centroid(torch.from_numpy(x), torch.from_numpy(c), block=64).numpy(), brute)


def test_dimension_mismatch_is_an_error(tmp_path):
    feats_dir, _ = clustered_dump(tmp_path, nshard=1)
    KMeansModel(np.zeros((3, 4), np.float32), {}).save(tmp_path / "km")
    with pytest.raises(ValueError, match="4-dim centroids but .* holds 8-dim features"):
        label(FeatureReader(feats_dir), tmp_path / "km", tmp_path / "out", progress=False)


def test_missing_model_and_bad_labels(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `speechssl kmeans fit"):
        KMeansModel.load(tmp_path / "nope")
    (tmp_path / "labels").write_text("a 1 2\nb 1 x\n")
    with pytest.raises(ValueError, match=r"labels:2: utterance 'b': units must be integers"):
        read_labels(tmp_path / "labels")


def test_too_few_frames(tmp_path):
    write_shard(tmp_path / "f", {"a": np.zeros((3, 2))}, feature="x", frame_rate=50.0)
    with pytest.raises(ValueError, match="3 frames sampled, fewer than the 5 clusters"):
        fit_kmeans(FeatureReader(tmp_path / "f"), 5)
