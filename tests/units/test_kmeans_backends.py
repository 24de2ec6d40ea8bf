"""k-means backends (sklearn, faiss) and the memory-capped streaming fit, on clustered toy dumps."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from speechssl.features.dump import FeatureReader, write_shard
from speechssl.testing.cli import run_cli
from speechssl.units.kmeans import KMeansConfig, _faiss_memory, fit_kmeans, inertia_per_frame, plan_fit

try:
    import faiss as _faiss  # noqa: F401

    HAVE_FAISS = True
except ImportError:
    HAVE_FAISS = False
needs_faiss = pytest.mark.skipif(not HAVE_FAISS, reason="faiss is not installed (pip install faiss-cpu)")

FAST = {"n_init": 3, "batch_size": 256, "max_iter": 30}


def blobs_dump(tmp_path, *, num_utts=30, dim=7, k=6, scale=10.0, noise=0.3, seed=0, nshard=3):
    """Utterances of 15-60 frames drawn from k Gaussian blobs (odd dim, uneven shards); (dir, truth)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=scale, size=(k, dim))
    truth, feats = {}, {}
    for i in range(num_utts):
        ids = rng.integers(0, k, size=int(rng.integers(15, 60)))
        truth[f"utt{i:03d}"] = ids
        feats[f"utt{i:03d}"] = (means[ids] + rng.normal(scale=noise, size=(len(ids), dim))).astype(np.float32)
    names = sorted(feats)
    for rank in range(nshard):
        part = names[rank * num_utts // nshard : (rank + 1) * num_utts // nshard]
        write_shard(tmp_path / "feats", {u: feats[u] for u in part}, feature="synthetic", frame_rate=50.0,
                    rank=rank, nshard=nshard)  # fmt: skip
    return tmp_path / "feats", truth


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether labellings a and b are the same partition up to a renaming (a bijection)."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def all_frames(reader: FeatureReader) -> np.ndarray:
    return np.concatenate([np.asarray(f, dtype=np.float32) for _, f in reader])


@needs_faiss
def test_backends_agree_on_separated_clusters(tmp_path):
    feats_dir, _ = blobs_dump(tmp_path)
    reader = FeatureReader(feats_dir)
    sk = fit_kmeans(reader, 6, seed=3, out_dir=tmp_path / "sk", **FAST)
    fa = fit_kmeans(reader, 6, seed=3, out_dir=tmp_path / "fa", backend="faiss", **FAST)
    x = all_frames(reader)
    assert same_partition(sk.predict(x), fa.predict(x))
    i_sk, i_fa = sk.params["inertia_per_frame"], fa.params["inertia_per_frame"]
    assert abs(i_sk - i_fa) <= 0.01 * i_sk, (i_sk, i_fa)
    params = json.loads((tmp_path / "fa" / "kmeans.json").read_text())
    assert params["backend"] == "faiss" and params["faiss"]["niter"] == 30 and params["faiss"]["seed"] == 3
    assert json.loads((tmp_path / "sk" / "kmeans.json").read_text())["backend"] == "sklearn"
    # same seed, same centroids
    again = fit_kmeans(reader, 6, seed=3, backend="faiss", **FAST)
    np.testing.assert_array_equal(again.centroids, fa.centroids)


def test_sklearn_default_is_unchanged_and_deterministic(tmp_path):
    """The default backend is today's in-memory MiniBatchKMeans: a bare MiniBatchKMeans with the same
    settings gives the same centroids; a generous cap changes nothing."""
    from sklearn.cluster import MiniBatchKMeans

    feats_dir, _ = blobs_dump(tmp_path, seed=1)
    reader = FeatureReader(feats_dir)
    ours = fit_kmeans(reader, 6, seed=5, **FAST)
    capped = fit_kmeans(reader, 6, seed=5, max_memory_gb=1.0, **FAST)
    ref = MiniBatchKMeans(n_clusters=6, batch_size=256, max_iter=30, n_init=3, tol=0.0,
                          max_no_improvement=100, reassignment_ratio=0.0, compute_labels=False,
                          random_state=5).fit(all_frames(reader))  # fmt: skip
    np.testing.assert_array_equal(ours.centroids, ref.cluster_centers_.astype(np.float32))
    np.testing.assert_array_equal(capped.centroids, ours.centroids)
    assert ours.params["fit_mode"] == capped.params["fit_mode"] == "in memory"


def test_streamed_fit_stays_under_the_cap_and_matches_in_memory(tmp_path):
    feats_dir, truth = blobs_dump(tmp_path, num_utts=400, dim=16, noise=1.0, seed=2)
    reader = FeatureReader(feats_dir)
    frames = reader.num_frames
    cap_gb = 0.6 * 4 * frames * 16 / 2**30  # less than the frames alone
    full = fit_kmeans(reader, 6, seed=0, **FAST)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        plans = []
        streamed = fit_kmeans(reader, 6, seed=0, max_memory_gb=cap_gb, on_plan=plans.append, **FAST)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (plan,) = plans
    assert plan.mode == "streamed" and plan.held_frames < frames and plan.bytes <= plan.cap_bytes
    assert peak <= plan.cap_bytes, (peak, plan.cap_bytes)
    assert streamed.params["fit_mode"] == "streamed"
    i_full, i_stream = full.params["inertia_per_frame"], streamed.params["inertia_per_frame"]
    assert abs(i_stream - i_full) <= 0.03 * i_full, (i_full, i_stream)
    # the streamed inertia is the same measure as sklearn's score on all frames
    x = all_frames(reader)
    exact = float(((x[:, None, :] - streamed.centroids[None]) ** 2).sum(-1).min(1).mean())
    assert inertia_per_frame(reader, reader.select(), streamed.centroids) == pytest.approx(exact, rel=1e-4)
    # deterministic
    again = fit_kmeans(reader, 6, seed=0, max_memory_gb=cap_gb, **FAST)
    np.testing.assert_array_equal(again.centroids, streamed.centroids)


@needs_faiss
def test_faiss_samples_to_the_cap(tmp_path):
    feats_dir, _ = blobs_dump(tmp_path, num_utts=200, dim=16, seed=4)
    reader = FeatureReader(feats_dir)
    fixed = plan_fit(0, 16, KMeansConfig(num_clusters=6, backend="faiss", **FAST)).bytes
    cap_gb = (fixed + 0.5 * reader.num_frames * (4 * 16 + 12)) / 2**30  # room for about half the frames
    config = KMeansConfig(num_clusters=6, backend="faiss", max_memory_gb=cap_gb, **FAST)
    plan = plan_fit(reader.num_frames, 16, config)
    assert plan.mode == "sampled" and 6 <= plan.held_frames < reader.num_frames
    model = fit_kmeans(reader, 6, backend="faiss", max_memory_gb=config.max_memory_gb, **FAST)
    assert model.params["fit_mode"] == "sampled" and model.params["fit_frames_in_memory"] == plan.held_frames


def test_cap_too_small_and_bad_options_are_one_line():
    with pytest.raises(ValueError, match="too small for a streamed fit") as err:
        plan_fit(10**6, 39, KMeansConfig(num_clusters=100, max_memory_gb=1e-4))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="too small for a faiss fit"):
        plan_fit(10**6, 39, KMeansConfig(num_clusters=100, backend="faiss", max_memory_gb=1e-5))
    with pytest.raises(ValueError, match="max_memory_gb must be > 0"):
        KMeansConfig(num_clusters=4, max_memory_gb=0)


def test_cli_prints_the_memory_line_and_refuses_a_bad_backend(tmp_path, capsys):
    feats_dir, _ = blobs_dump(tmp_path, num_utts=60, dim=7)
    fit = ("kmeans", "fit", "--feats", feats_dir, "--num-clusters", 6)
    assert run_cli(*fit, "--out", tmp_path / "km", "--n-init", 2, "--batch-size", 256, "--max-iter", 20,
                   "--max-memory", 1e-4) == 0  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("kmeans: sklearn fit on") and "will use about" in out[0] and "streamed" in out[0]
    assert json.loads((tmp_path / "km" / "kmeans.json").read_text())["fit_mode"] == "streamed"
    assert run_cli(*fit, "--out", tmp_path / "km2", "--backend", "scipy") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["speechssl kmeans: error: unknown k-means backend 'scipy'; valid: sklearn, faiss"]
    assert not (tmp_path / "km2").exists()


def test_faiss_missing_is_one_line(tmp_path, monkeypatch):
    from speechssl.errors import SpeechSSLError

    monkeypatch.setitem(__import__("sys").modules, "faiss", None)  # `import faiss` raises ImportError
    feats_dir, _ = blobs_dump(tmp_path, num_utts=6)
    with pytest.raises(SpeechSSLError, match="pip install faiss-cpu") as err:
        fit_kmeans(FeatureReader(feats_dir), 6, backend="faiss", **FAST)
    assert "\n" not in str(err.value)


def test_a_long_recording_is_read_a_block_at_a_time_under_the_cap(tmp_path):
    """One utterance longer than the whole cap (a 2-hour recording): the streamed fit reads it a
    batch at a time from the memory-mapped shard, and the cap the plan printed holds."""
    rng = np.random.default_rng(0)
    means = rng.normal(scale=10.0, size=(6, 16))
    long = (means[rng.integers(0, 6, 60_000)] + rng.normal(size=(60_000, 16))).astype(np.float32)
    write_shard(tmp_path / "feats", {"long": long}, feature="synthetic", frame_rate=50.0)
    reader = FeatureReader(tmp_path / "feats")
    cap_gb = 0.3 * long.nbytes / 2**30
    plans = []
    tracemalloc.start()
    try:
        model = fit_kmeans(reader, 6, seed=0, max_memory_gb=cap_gb, on_plan=plans.append, **FAST)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plans[0].mode == "streamed" and peak <= plans[0].cap_bytes, (peak, plans[0].cap_bytes)
    assert model.params["inertia_per_frame"] < 20  # found the blobs (noise 1 per dim: 16)
    # and a NaN deep inside it is named with its frame
    long[45_000, 3] = np.nan
    write_shard(tmp_path / "bad", {"long": long}, feature="synthetic", frame_rate=50.0)
    with pytest.raises(
        ValueError, match=r"'long' holds NaN .*\(1 of its frames 44800-45055, first at frame 45000\)"
    ):
        fit_kmeans(FeatureReader(tmp_path / "bad"), 6, max_memory_gb=cap_gb, **FAST)


@needs_faiss
@pytest.mark.parametrize("seed", range(6))
def test_a_faiss_sample_holds_exactly_the_planned_frames(tmp_path, seed):
    """A cap with room for barely more frames than clusters: the sample is the planned size (it
    was a coin toss per frame, and could hold fewer frames than clusters)."""
    feats_dir, _ = blobs_dump(tmp_path, num_utts=200, dim=16, k=20, seed=4)
    reader = FeatureReader(feats_dir)
    config = {"n_init": 1, "batch_size": 256, "max_iter": 10, "backend": "faiss"}
    init_rows = min(reader.num_frames, 3 * config["batch_size"])  # the sampled plan's fixed part
    fixed = _faiss_memory(0, 16, KMeansConfig(num_clusters=20, **config), init_rows=init_rows)
    cap_gb = (fixed + 21.5 * (4 * 16 + 12)) / 2**30
    model = fit_kmeans(reader, 20, seed=seed, max_memory_gb=cap_gb, **config)
    assert model.params["fit_mode"] == "sampled" and model.params["fit_frames_in_memory"] == 21


def test_options_a_fit_cannot_take_are_refused_in_one_line():
    for bad, match in (
        ({"seed": 2**31}, r"seed must be in \[0, 2\*\*31\), found 2147483648"),
        ({"seed": -1}, r"seed must be in \[0, 2\*\*31\), found -1"),
        ({"max_memory_gb": float("inf")}, "max_memory_gb must be > 0 and finite"),
    ):
        with pytest.raises(ValueError, match=match):
            KMeansConfig(num_clusters=4, **bad)
    # a streamed fit initialises on its first batch: it needs a batch of at least K frames
    with pytest.raises(ValueError, match=r"--batch-size \(10\) of at least --num-clusters \(20\)"):
        plan_fit(20_000, 16, KMeansConfig(num_clusters=20, batch_size=10, max_memory_gb=1e-3))
    # a batch larger than the frames costs no more than all the frames
    plan = plan_fit(20_000, 16, KMeansConfig(num_clusters=20, batch_size=10**7, max_memory_gb=1.0))
    assert plan.mode == "in memory" and plan.bytes < 10 * 2**20, plan.describe()


def test_every_check_of_a_fit_or_labelling_comes_before_its_out_dir(tmp_path, capsys, monkeypatch):
    feats_dir, _ = blobs_dump(tmp_path, num_utts=20, dim=7)
    fit = ("kmeans", "fit", "--feats", feats_dir, "--n-init", 1)
    refused = {
        "cap": (*fit, "--num-clusters", 6, "--max-memory", 1e-7),
        "k": (*fit, "--num-clusters", 30_000),
        "seed": (*fit, "--num-clusters", 6, "--seed", 2**32 - 1),
    }
    for name, args in refused.items():
        assert run_cli(*args, "--out", tmp_path / name) == 1, name
        assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not (tmp_path / name).exists(), name
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)  # `import faiss` raises ImportError
    assert run_cli(*fit, "--num-clusters", 6, "--backend", "faiss", "--out", tmp_path / "nofaiss") == 1
    assert "pip install faiss-cpu" in capsys.readouterr().err and not (tmp_path / "nofaiss").exists()
    monkeypatch.undo()
    assert run_cli(*fit, "--num-clusters", 6, "--out", tmp_path / "km") == 0
    other, _ = blobs_dump(tmp_path / "other", num_utts=10, dim=5)
    assert (
        run_cli("kmeans", "label", "--feats", other, "--model", tmp_path / "km", "--out", tmp_path / "lab")
        == 1
    )
    assert "7-dim centroids but" in capsys.readouterr().err and not (tmp_path / "lab").exists()


@needs_faiss
@pytest.mark.parametrize("backend", ["sklearn", "faiss"])
def test_features_too_large_for_float32_distances_save_nothing(tmp_path, backend):
    feats_dir, _ = blobs_dump(tmp_path, num_utts=20, dim=7)
    shard = next(feats_dir.glob("*.npy"))
    arr = np.load(shard, mmap_mode="r+")
    arr[5] = 3e38  # finite, but its squared distance is not
    arr.flush()
    with pytest.raises(ValueError, match="inertia is (inf|nan): some features are too large"):
        fit_kmeans(FeatureReader(feats_dir), 6, backend=backend, out_dir=tmp_path / "km", **FAST)
    assert not (tmp_path / "km" / "centroids.npy").exists()


@needs_faiss
def test_a_sampled_faiss_plan_stays_under_its_cap_and_within_the_frames():
    """The init sample counts in the fixed part (it did not: plans ran 290 MiB over the cap at 768
    dims, K 500, and near the full size planned more frames than exist, fitting on empty rows)."""
    config = {"num_clusters": 500, "backend": "faiss"}
    frames, dim = 2_000_000, 768
    full = plan_fit(frames, dim, KMeansConfig(**config)).bytes
    for share in (0.3, 0.6, 0.9, 0.99, 0.999):
        plan = plan_fit(frames, dim, KMeansConfig(max_memory_gb=share * full / 2**30, **config))
        assert plan.mode == "sampled" and plan.held_frames < frames, (share, plan.describe())
        assert plan.bytes <= plan.cap_bytes, (share, plan.describe())
