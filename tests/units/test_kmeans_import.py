"""`speechssl kmeans import`: released scikit-learn k-means files (joblib / pickle) read without
running code from them; labels equal scikit-learn's predict."""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from speechssl.testing.cli import run_cli
from speechssl.units.kmeans import KMeansModel
from speechssl.units.kmeans_import import (
    KMeansImportError,
    UnsafeKMeansFileError,
    import_kmeans,
    read_sklearn_kmeans,
)


def _features(seed: int = 0, n: int = 3000, dim: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def _sklearn_model(feats: np.ndarray, k: int = 13):
    cluster = pytest.importorskip("sklearn.cluster")
    return cluster.MiniBatchKMeans(
        n_clusters=k, n_init=2, max_iter=20, batch_size=256, random_state=0, compute_labels=False
    ).fit(feats)


@pytest.mark.parametrize("writer", ["joblib", "joblib-zlib", "joblib-gzip", "pickle2", "pickle5", "pickle0"])
def test_labels_equal_sklearn_predict(tmp_path, writer):
    feats = _features()
    km = _sklearn_model(feats)
    path = tmp_path / "km.bin"
    if writer.startswith("joblib"):
        joblib = pytest.importorskip("joblib")
        compress = {"joblib": 0, "joblib-zlib": 3, "joblib-gzip": ("gzip", 3)}[writer]
        joblib.dump(km, path, compress=compress)
    else:
        path.write_bytes(pickle.dumps(km, protocol=int(writer[-1])))
    model = import_kmeans(path, tmp_path / "KM")
    assert model.params["format"] == ("joblib" if writer.startswith("joblib") else "pickle")
    test = _features(seed=1)
    assert np.array_equal(model.predict(test), km.predict(test))
    # what is on disk is our safe pair, and it labels the same
    loaded = KMeansModel.load(tmp_path / "KM")
    assert np.array_equal(loaded.centroids, km.cluster_centers_.astype(np.float32))
    assert np.array_equal(loaded.predict(test), km.predict(test))
    params = json.loads((tmp_path / "KM" / "kmeans.json").read_text())
    assert params["sklearn_class"].endswith("MiniBatchKMeans") and params["num_clusters"] == 13


def test_fortran_order_and_float64_centroids(tmp_path):
    joblib = pytest.importorskip("joblib")
    feats = _features(seed=2).astype(np.float64)
    km = _sklearn_model(feats, k=5)
    km.cluster_centers_ = np.asfortranarray(km.cluster_centers_)
    joblib.dump(km, tmp_path / "km.bin")
    centers, info = read_sklearn_kmeans(tmp_path / "km.bin")
    assert info["centroids_dtype"] == "float64" and np.array_equal(centers, km.cluster_centers_)


class _FakeMiniBatchKMeans:
    """Pickled under scikit-learn's name without scikit-learn: how the HuBERT repo's km.bin looks."""


def _write_without_sklearn(path: Path, centers: np.ndarray, monkeypatch, protocol: int) -> None:
    # a fake module tree under sklearn's names, only while pickling (pickle looks the class up by name)
    modules = {
        name: types.ModuleType(name) for name in ("sklearn", "sklearn.cluster", "sklearn.cluster._kmeans")
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    _FakeMiniBatchKMeans.__module__, _FakeMiniBatchKMeans.__qualname__ = (
        "sklearn.cluster._kmeans",
        "MiniBatchKMeans",
    )
    modules["sklearn.cluster._kmeans"].MiniBatchKMeans = _FakeMiniBatchKMeans
    try:
        km = _FakeMiniBatchKMeans()
        km.__dict__.update(n_clusters=len(centers), cluster_centers_=centers, _sklearn_version="0.24.2",
                           inertia_=np.float64(1.5), batch_size=10000, init="k-means++")  # fmt: skip
        path.write_bytes(pickle.dumps(km, protocol=protocol))
    finally:
        _FakeMiniBatchKMeans.__module__, _FakeMiniBatchKMeans.__qualname__ = __name__, "_FakeMiniBatchKMeans"


@pytest.mark.parametrize("protocol", [2, 4])
def test_handwritten_pickle_without_sklearn(tmp_path, monkeypatch, protocol):
    centers = np.random.default_rng(3).normal(size=(11, 6)).astype(np.float32)
    _write_without_sklearn(tmp_path / "km.bin", centers, monkeypatch, protocol)
    monkeypatch.undo()
    model = import_kmeans(tmp_path / "km.bin", tmp_path / "KM")
    assert np.array_equal(model.centroids, centers)
    assert model.params["sklearn_version"] == "0.24.2" and model.params["inertia_"] == 1.5
    feats = _features(seed=4, dim=6)
    brute = ((feats[:, None, :].astype(np.float64) - centers[None].astype(np.float64)) ** 2).sum(-1).argmin(1)
    assert np.array_equal(model.predict(feats), brute)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(UnsafeKMeansFileError, match=rf"evil.bin: refusing to unpickle {os.name}\.system"):
        read_sklearn_kmeans(path)
    assert not marker.exists()
    # through the CLI: one line, exit 1, nothing written
    assert run_cli("kmeans", "import", "--model", path, "--out", tmp_path / "KM") == 1
    assert not marker.exists() and not (tmp_path / "KM").exists()


def test_estimator_with_a_payload_inside_is_refused(tmp_path):
    joblib = pytest.importorskip("joblib")
    marker = tmp_path / "ran"
    km = _sklearn_model(_features(), k=3)
    km.extra = _RunsCode(marker)
    joblib.dump(km, tmp_path / "km.bin")
    with pytest.raises(UnsafeKMeansFileError, match="refusing to unpickle"):
        read_sklearn_kmeans(tmp_path / "km.bin")
    assert not marker.exists()


def test_other_classes_and_bad_files_are_named(tmp_path):
    from collections import OrderedDict

    (tmp_path / "od.bin").write_bytes(pickle.dumps(OrderedDict(a=1)))
    with pytest.raises(UnsafeKMeansFileError, match="refusing to unpickle collections.OrderedDict"):
        read_sklearn_kmeans(tmp_path / "od.bin")
    (tmp_path / "dict.bin").write_bytes(pickle.dumps({"cluster_centers_": 1}))
    with pytest.raises(
        KMeansImportError, match="expected a scikit-learn KMeans/MiniBatchKMeans model, found dict"
    ):
        read_sklearn_kmeans(tmp_path / "dict.bin")
    with pytest.raises(KMeansImportError, match="object arrays are refused|not a plain number type"):
        buf = io.BytesIO()
        pickle.dump(np.array([1, "a"], dtype=object), buf, protocol=2)
        (tmp_path / "obj.bin").write_bytes(buf.getvalue())
        read_sklearn_kmeans(tmp_path / "obj.bin")
    km = tmp_path / "km.bin"
    km.write_bytes(b"\x80\x04\x95")
    with pytest.raises(KMeansImportError, match="km.bin is not a readable pickle"):
        read_sklearn_kmeans(km)
    with pytest.raises(FileNotFoundError, match="k-means model not found"):
        read_sklearn_kmeans(tmp_path / "missing.bin")


def test_cli_import_then_label(tmp_path, capsys):
    joblib = pytest.importorskip("joblib")
    feats = _features(dim=5)
    km = _sklearn_model(feats, k=6)
    joblib.dump(km, tmp_path / "km.bin")
    out = tmp_path / "KM"
    assert run_cli("kmeans", "import", "--model", tmp_path / "km.bin", "--out", out) == 0
    assert "imported 6 centroids of dim 5" in capsys.readouterr().out
    assert np.array_equal(KMeansModel.load(out).predict(feats), km.predict(feats))
    # the output rule: the same command may rewrite its dir; a dir of other files needs --overwrite
    assert run_cli("kmeans", "import", "--model", tmp_path / "km.bin", "--out", out) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine\n")
    assert run_cli("kmeans", "import", "--model", tmp_path / "km.bin", "--out", other) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert not (other / "centroids.npy").exists()


@pytest.mark.parametrize("compress", ["gzip", "bz2", "lzma", "zlib"])
def test_a_compressed_bomb_stops_at_the_limit(tmp_path, monkeypatch, compress):
    """A file that decompresses beyond MAX_DECOMPRESSED is refused in one line, and decompression
    stops at the limit instead of expanding the whole payload in memory."""
    import bz2
    import gzip
    import lzma
    import zlib

    from speechssl.units import kmeans_import

    monkeypatch.setattr(kmeans_import, "MAX_DECOMPRESSED", 1000)
    payload = b"\0" * 10_000_000  # 10 MB of zeros compress to a few KB
    data = {"gzip": gzip.compress, "bz2": bz2.compress, "lzma": lzma.compress, "zlib": zlib.compress}[
        compress
    ](payload)
    path = tmp_path / "km.bin"
    path.write_bytes(data)
    with pytest.raises(
        kmeans_import.KMeansImportError, match=r"km\.bin: decompresses to more than 1000 bytes$"
    ):
        kmeans_import.read_sklearn_kmeans(path)
