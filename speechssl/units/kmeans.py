"""k-means units: fit on dumped features, label every frame.

Fitting is scikit-learn's MiniBatchKMeans with the settings of fairseq's
examples/hubert/simple_kmeans/learn_kmeans.py (k-means++ init, max_iter 100,
batch_size 10000, tol 0, max_no_improvement 100, n_init 20,
reassignment_ratio 0), on all frames or a random `percent` of the utterances
of each shard. The model directory holds

    centroids.npy   (num_clusters, dim) float32, loaded with allow_pickle=False
    kmeans.json     the fit's settings, feature provenance and inertia

and never a pickle (a joblib/pickle file can run code when loaded).

Labelling assigns each frame its nearest centroid (squared Euclidean, as
sklearn's predict) with one matmul per block of frames, and writes

    labels      `uttid u1 u2 ...` (Kaldi table, C-sorted; one unit per frame)
    dict.txt    fairseq's unit dictionary: `<unit> <count>` for units 0..K-1 in order

Each pair (centroids.npy + kmeans.json, labels + dict.txt) is written as one
unit (`write_pair`): a failed or killed run leaves the old pair, or the new
first file without the second, never files of two different runs. NaN or
infinite features are refused naming the shard file and utterance.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from speechssl.data.kaldi import c_sort_key
from speechssl.features.dump import FeatureReader, NonFiniteFeaturesError
from speechssl.io import atomic_file, remove_stale_temporaries

logger = logging.getLogger(__name__)

CENTROIDS = "centroids.npy"
PARAMS = "kmeans.json"
LABELS = "labels"
DICT = "dict.txt"


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_pair(
    first: Path, write_first: Callable[[Path], None], second: Path, write_second: Callable[[Path], None]
) -> None:
    """Write two files that only mean something together (labels and their dict.txt).

    Both are written and synced to temp names first, so a full disk or an error leaves the old
    pair untouched; then the old `second` is removed, `first` renamed into place, then `second`.
    A kill between the renames leaves `first` without `second` (a missing file, named by whatever
    reads it), never files of two runs. Temp files of an earlier killed run are removed first."""
    for stale in remove_stale_temporaries(first.parent):
        logger.info("removed %s (a temp file of a killed run)", stale)
    with atomic_file(second) as tmp_second:
        write_second(tmp_second)
        _fsync(tmp_second)
        with atomic_file(first) as tmp_first:
            write_first(tmp_first)
            _fsync(tmp_first)
            second.unlink(missing_ok=True)
        # leaving the blocks renames `first`, then `second`


def is_kmeans_output(path: str | Path, *, labels: bool = False) -> bool:
    """Whether `path` is a dir holding only a k-means model (or, with `labels`, a labels dir), e.g. one
    written before output markers existed; the recipe's `.done` may be there too."""
    path = Path(path)
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir() if not p.name.startswith(".")}
    own = {LABELS, DICT} if labels else {CENTROIDS, PARAMS}
    return bool(names) and names <= own


@dataclass(frozen=True, kw_only=True)
class KMeansConfig:
    """MiniBatchKMeans settings; defaults are fairseq's learn_kmeans.py."""

    num_clusters: int
    percent: float = 1.0  # fraction of utterances per shard to fit on (fairseq: --percent, -1 = all)
    seed: int = 0
    init: str = "k-means++"
    max_iter: int = 100
    batch_size: int = 10000
    tol: float = 0.0
    max_no_improvement: int = 100
    n_init: int = 20
    reassignment_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.num_clusters < 2:
            raise ValueError(f"num_clusters must be >= 2, found {self.num_clusters}")
        if not 0 < self.percent <= 1:
            raise ValueError(f"percent must be in (0, 1], found {self.percent}")
        if self.init not in ("k-means++", "random"):
            raise ValueError(f"init must be 'k-means++' or 'random', found '{self.init}'")
        for name in ("max_iter", "batch_size", "n_init"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, found {getattr(self, name)}")


@dataclass(frozen=True)
class KMeansModel:
    """Centroids plus what produced them."""

    centroids: np.ndarray  # (K, D) float32
    params: dict

    @property
    def num_clusters(self) -> int:
        return int(self.centroids.shape[0])

    def save(self, km_dir: str | Path) -> None:
        """Write centroids.npy and kmeans.json, as one pair (`write_pair`)."""
        km_dir = Path(km_dir)
        km_dir.mkdir(parents=True, exist_ok=True)
        centroids = np.ascontiguousarray(self.centroids, dtype=np.float32)
        write_pair(
            km_dir / CENTROIDS,
            lambda tmp: np.save(tmp, centroids, allow_pickle=False),
            km_dir / PARAMS,
            lambda tmp: tmp.write_text(json.dumps(self.params, indent=2) + "\n"),
        )

    @classmethod
    def load(cls, km_dir: str | Path) -> KMeansModel:
        km_dir = Path(km_dir)
        path = km_dir / CENTROIDS
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; run `speechssl kmeans fit --out {km_dir}` first")
        centroids = np.load(path, allow_pickle=False)
        if centroids.ndim != 2:
            raise ValueError(f"{path}: expected (clusters, dim) centroids, found shape {centroids.shape}")
        if not np.isfinite(centroids).all():
            raise NonFiniteFeaturesError(
                f"{path}: centroids hold NaN or infinite values; fit the model again"
            )
        params = json.loads((km_dir / PARAMS).read_text()) if (km_dir / PARAMS).is_file() else {}
        return cls(centroids.astype(np.float32), params)

    def predict(self, feats: np.ndarray | torch.Tensor, block: int = 65536) -> np.ndarray:
        """(frames, D) -> (frames,) int64 index of the nearest centroid."""
        return nearest_centroid(
            torch.as_tensor(np.asarray(feats, dtype=np.float32)),
            torch.from_numpy(self.centroids),
            block=block,
        ).numpy()


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor, block: int = 65536) -> torch.Tensor:
    """x: (N, D), centroids: (K, D) -> (N,) argmin_k ||x - c_k||^2 via ||c||^2 - 2 x.c
    (||x||^2 is the same for every k, so it is left out)."""
    if x.shape[-1] != centroids.shape[-1]:
        raise ValueError(f"features have {x.shape[-1]} dims but the centroids have {centroids.shape[-1]}")
    c = centroids.to(torch.float32)
    c_sq = (c * c).sum(dim=1)  # (K,)
    out = torch.empty(x.shape[0], dtype=torch.int64)
    for a in range(0, x.shape[0], block):
        xb = x[a : a + block].to(c.device, torch.float32)  # (n, D)
        dist = c_sq.unsqueeze(0) - 2.0 * (xb @ c.T)  # (n, K)
        out[a : a + block] = dist.argmin(dim=1).cpu()
    return out


def _memory(num_frames: int, dim: int, config: KMeansConfig) -> int:
    """Bytes for the sampled float32 frames plus MiniBatchKMeans' working arrays
    (init sample of 3 * batch_size rows, batch distances to every centroid)."""
    init_rows = min(num_frames, 3 * config.batch_size)
    return 4 * num_frames * dim + 8 * (
        init_rows * (dim + config.num_clusters) + config.batch_size * config.num_clusters
    )


def fit_kmeans(
    reader: FeatureReader,
    num_clusters: int,
    *,
    percent: float = 1.0,
    seed: int = 0,
    out_dir: str | Path | None = None,
    **options,
) -> KMeansModel:
    """Fit k-means on (a `percent` sample of) the dumped features; save to `out_dir` if given.

    `options` are the other KMeansConfig fields (n_init, max_iter, batch_size, ...).
    """
    from sklearn.cluster import MiniBatchKMeans

    config = KMeansConfig(num_clusters=num_clusters, percent=percent, seed=seed, **options)
    selection = reader.select(config.percent, config.seed)
    num_frames = reader.count_frames(selection)
    if num_frames < num_clusters:
        raise ValueError(f"{reader.dir}: {num_frames} frames sampled, fewer than the {num_clusters} clusters")
    need = _memory(num_frames, reader.feature_dim, config)
    logger.info(
        "k-means: %d clusters on %d frames of %d utterances (%.1f%%) x %d dims; "
        "needs about %.1f MiB of memory",
        num_clusters,
        num_frames,
        len(selection),
        100 * config.percent,
        reader.feature_dim,
        need / 2**20,
    )
    feats = reader.gather(selection)  # (N, D) float32; NaN/inf is an error naming shard and utterance
    km = MiniBatchKMeans(
        n_clusters=config.num_clusters,
        init=config.init,
        max_iter=config.max_iter,
        batch_size=config.batch_size,
        tol=config.tol,
        max_no_improvement=config.max_no_improvement,
        n_init=config.n_init,
        reassignment_ratio=config.reassignment_ratio,
        init_size=None,
        compute_labels=False,
        random_state=config.seed,
    )
    km.fit(feats)
    inertia = float(-km.score(feats) / len(feats))
    logger.info("k-means: inertia per frame %.5f", inertia)
    params = {
        **asdict(config),
        "feature": reader.feature_name,
        "feature_dim": reader.feature_dim,
        "frame_rate": reader.frame_rate,
        "feats_dir": str(reader.dir),
        "num_fit_frames": num_frames,
        "num_fit_utts": len(selection),
        "inertia_per_frame": inertia,
    }
    model = KMeansModel(km.cluster_centers_.astype(np.float32), params)
    if out_dir is not None:
        model.save(out_dir)
    return model


def label(
    reader: FeatureReader,
    km_dir: str | Path | KMeansModel,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, list[int]]:
    """Assign every frame of every utterance its unit; write `labels` and `dict.txt` in `out_dir`
    (as one pair: see `write_pair`). NaN or infinite features are an error naming the shard file
    and utterance, and leave `out_dir` as it was."""
    model = km_dir if isinstance(km_dir, KMeansModel) else KMeansModel.load(km_dir)
    if model.centroids.shape[1] != reader.feature_dim:
        raise ValueError(
            f"k-means model has {model.centroids.shape[1]}-dim centroids but {reader.dir} holds "
            f"{reader.feature_dim}-dim features ({reader.feature_name})"
        )
    centroids = torch.from_numpy(model.centroids).to(device)
    counts = np.zeros(model.num_clusters, dtype=np.int64)
    labels: dict[str, list[int]] = {}
    for utt, feats in tqdm(reader, total=len(reader), desc="label", unit="utt", disable=not progress):
        units = nearest_centroid(torch.from_numpy(np.array(feats, dtype=np.float32)), centroids).numpy()
        counts += np.bincount(units, minlength=model.num_clusters)
        labels[utt] = units.tolist()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def write_labels(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for utt in sorted(labels, key=c_sort_key):
                f.write(f"{utt} {' '.join(map(str, labels[utt]))}\n")

    def write_dict(tmp: Path) -> None:
        tmp.write_text("".join(f"{k} {int(c)}\n" for k, c in enumerate(counts)), encoding="utf-8")

    write_pair(out_dir / LABELS, write_labels, out_dir / DICT, write_dict)
    used = int((counts > 0).sum())
    logger.info(
        "labelled %d utterances, %d frames; %d of %d units used; wrote %s",
        len(labels),
        int(counts.sum()),
        used,
        model.num_clusters,
        out_dir / "labels",
    )
    return labels
