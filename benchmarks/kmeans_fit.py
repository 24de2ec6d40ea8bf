"""Row group `kmeans`: k-means fit time, faiss vs scikit-learn MiniBatchKMeans.

Both fit through `speechssl.units.kmeans.fit_kmeans` (the code `speechssl kmeans fit` runs) on the
same dumped features and K, with the same settings (k-means++ init, best of n_init, max_iter 100;
MiniBatchKMeans with fairseq's batch size 10000 and early stopping, faiss' Lloyd over every frame).
The features are MFCC-like: 39 dims, frames of 40 "phones", each phone a mixture of 3 Gaussian
blobs that overlap, so the fit is not trivial and PNMI against the phones means something.

Rows: fit time (one fit each: a fit is seconds to minutes, and both see the same warm page
cache), inertia per frame (same measure for both: `inertia_per_frame`), PNMI of the units.
The faiss rows are left out, with a note, when faiss is not installed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import Row, Settings, make_row
from speechssl.features.dump import FeatureReader, write_shard
from speechssl.units.kmeans import KMeansModel, fit_kmeans
from speechssl.units.metrics import quality_from_counts

GROUP = "kmeans"
NUM_PHONES, BLOBS_PER_PHONE = 40, 3


def clustered_features(num_frames: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(frames (N, dim) float32, phone of each frame (N,)): phone segments of 3-15 frames, each frame
    from one of its phone's blobs plus noise."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(NUM_PHONES * BLOBS_PER_PHONE, dim))
    phones = np.empty(num_frames, dtype=np.int64)
    pos = 0
    while pos < num_frames:
        n = int(rng.integers(3, 16))
        phones[pos : pos + n] = rng.integers(NUM_PHONES)
        pos += n
    blobs = phones * BLOBS_PER_PHONE + rng.integers(BLOBS_PER_PHONE, size=num_frames)
    feats = means[blobs] + rng.normal(scale=1.0, size=(num_frames, dim))
    return feats.astype(np.float32), phones


def pnmi(model: KMeansModel, feats: np.ndarray, phones: np.ndarray) -> float:
    units = model.predict(feats)
    counts = np.zeros((NUM_PHONES, model.num_clusters), dtype=np.int64)
    np.add.at(counts, (phones, units), 1)
    return quality_from_counts(counts)[0]


def run(settings: Settings) -> list[Row]:
    n, d, k = (4000, 8, 10) if settings.tiny else (50000, 39, 100) if settings.quick else (200000, 39, 100)
    options = {"n_init": 3 if settings.tiny else 20, "max_iter": 20 if settings.tiny else 100}
    feats, phones = clustered_features(n, d)
    root = Path(tempfile.mkdtemp(prefix="speechssl-bench-km-"))
    try:
        utts = {f"utt{i:05d}": feats[a : a + 500] for i, a in enumerate(range(0, n, 500))}
        write_shard(root / "feats", utts, feature="mfcc-like", frame_rate=50.0, rank=0, nshard=1)
        reader = FeatureReader(root / "feats")
        results: dict[str, tuple[float, KMeansModel]] = {}
        backends = ["sklearn", "faiss"]
        try:
            import faiss  # noqa: F401
        except ImportError:
            backends = ["sklearn"]
        for backend in backends:
            t0 = time.perf_counter()
            model = fit_kmeans(reader, k, seed=0, backend=backend, **options)
            results[backend] = (time.perf_counter() - t0, model)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    name = f"k-means fit, {n} x {d} clustered MFCC-like frames, K={k}"
    sk_time, sk = results["sklearn"]
    if "faiss" not in results:
        note = "faiss not installed (pip install faiss-cpu): faiss rows not measured"
        return [make_row(GROUP, f"{name}: sklearn fit time", None, sk_time, "s", note=note)]
    fa_time, fa = results["faiss"]
    threads = f"CPU, {settings.threads} threads"
    if fa.params["faiss"]["gpu"]:
        threads = "faiss on GPU, sklearn on CPU"
    sk_inertia, fa_inertia = sk.params["inertia_per_frame"], fa.params["inertia_per_frame"]
    return [
        make_row(GROUP, f"{name}: fit time, faiss (ours) vs sklearn MiniBatchKMeans", fa_time, sk_time, "s",
                 higher_is_better=False, note=f"{threads}; one fit each, same init settings"),
        make_row(GROUP, f"{name}: inertia per frame, faiss vs sklearn", fa_inertia, sk_inertia, "sq. dist",
                 higher_is_better=False,
                 note=f"faiss {100 * (fa_inertia / sk_inertia - 1):+.2f} % vs sklearn (lower is better)"),
        make_row(GROUP, f"{name}: PNMI vs {NUM_PHONES} phones, faiss vs sklearn", pnmi(fa, feats, phones),
                 pnmi(sk, feats, phones), "PNMI", note="units of each fit against the generating phones"),
    ]  # fmt: skip
