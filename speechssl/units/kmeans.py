"""k-means units: fit on dumped features, label every frame.

Fitting is scikit-learn's MiniBatchKMeans with the settings of fairseq's
examples/hubert/simple_kmeans/learn_kmeans.py (k-means++ init, max_iter 100,
batch_size 10000, tol 0, max_no_improvement 100, n_init 20,
reassignment_ratio 0), on all frames or a random `percent` of the utterances
of each shard. The model directory holds

    centroids.npy   (num_clusters, dim) float32, loaded with allow_pickle=False
    kmeans.json     the fit's settings, feature provenance and inertia

and never a pickle (a joblib/pickle file can run code when loaded).

Corpus scale: `backend="faiss"` fits with faiss' Lloyd k-means (faiss-cpu, on a GPU when faiss
sees one) on the same frames; `max_memory_gb` caps what the fit holds at once: above the cap the
sklearn fit streams shuffled mini-batches through `partial_fit` (the frames are read from the
memory-mapped shards, never all loaded), and the faiss fit takes a random sample of frames that
fits. `plan_fit` says which, and how much memory, before the fit starts.

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
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from speechssl.data.kaldi import c_sort_key
from speechssl.errors import SpeechSSLError
from speechssl.features.dump import FeatureReader, NonFiniteFeaturesError
from speechssl.io import atomic_file, remove_stale_temporaries
from speechssl.models.token_upstream import (
    nearest_centroid,
)  # the one argmin: kmeans label's and tokens:DIR's

logger = logging.getLogger(__name__)

BACKENDS = ("sklearn", "faiss")
CENTROIDS = "centroids.npy"
PARAMS = "kmeans.json"
LABELS = "labels"
DICT = "dict.txt"

# A fit logs what it is doing at least this often (sklearn's and faiss' loops say nothing themselves).
PROGRESS_SECONDS = 10.0


class FitProgress:
    """Log lines of a k-means fit: the first event of each stage at once (`first=True`), then at most
    one every `PROGRESS_SECONDS`; while a stage reports nothing (faiss' Lloyd iterations run in C++,
    the GIL released) a watchdog thread repeats its status with the elapsed time."""

    def __init__(self, every: float | None = None) -> None:
        self.every = PROGRESS_SECONDS if every is None else every
        self.start = self.last = time.monotonic()
        self.status = "starting"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def report(self, status: str, *, first: bool = False) -> None:
        with self._lock:
            self.status = status
            now = time.monotonic()
            if first or now - self.last >= self.every:
                self.last = now
                logger.info("k-means: %s (%.0f s)", status, now - self.start)

    def _watch(self) -> None:
        while not self._stop.wait(min(self.every, 1.0)):
            if time.monotonic() - self.last >= self.every:
                self.report(self.status)

    def __enter__(self) -> FitProgress:
        self._thread = threading.Thread(target=self._watch, name="kmeans-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


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
    for stale in remove_stale_temporaries(first.parent, of=(first.name, second.name)):
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
    backend: str = "sklearn"  # sklearn: MiniBatchKMeans; faiss: faiss.Kmeans (Lloyd, niter = max_iter)
    max_memory_gb: float | None = None  # cap on the fit's memory: stream (sklearn) or sample (faiss) above it
    stream_passes: int = 2  # passes over the frames when the sklearn fit streams

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown k-means backend '{self.backend}'; valid: {', '.join(BACKENDS)}")
        if self.max_memory_gb is not None and not 0 < self.max_memory_gb < math.inf:
            raise ValueError(
                f"max_memory_gb must be > 0 and finite (none: no cap), found {self.max_memory_gb}"
            )
        if not 0 <= self.seed < 2**31:  # faiss takes a C int, sklearn a uint32
            raise ValueError(f"seed must be in [0, 2**31), found {self.seed}")
        if self.stream_passes < 1:
            raise ValueError(f"stream_passes must be >= 1, found {self.stream_passes}")
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
        try:
            centroids = np.load(path, allow_pickle=False)
        except (ValueError, EOFError) as err:  # empty, truncated or pickled
            raise ValueError(f"{path} is not a centroids array ({err}); fit the model again") from None
        if centroids.ndim != 2 or centroids.shape[0] < 1 or not np.issubdtype(centroids.dtype, np.number):
            raise ValueError(
                f"{path}: expected a numeric (clusters, dim) array, found {centroids.dtype} of shape "
                f"{centroids.shape}; fit the model again"
            )
        if not np.isfinite(centroids).all():
            raise NonFiniteFeaturesError(
                f"{path}: centroids hold NaN or infinite values; fit the model again"
            )
        params_path = km_dir / PARAMS
        if not params_path.is_file():  # `write_pair` renames centroids.npy first: a kill in between
            raise FileNotFoundError(
                f"{params_path} does not exist (a fit killed while saving?); fit the model again"
            )
        try:
            params = json.loads(params_path.read_text())
        except ValueError as err:
            raise ValueError(f"{params_path} is not valid JSON ({err}); fit the model again") from None
        return cls(centroids.astype(np.float32), params)

    def check_features(self, reader: FeatureReader) -> None:
        """A one-line error unless `reader`'s features have the centroids' dimension."""
        if self.centroids.shape[1] != reader.feature_dim:
            raise ValueError(
                f"k-means model has {self.centroids.shape[1]}-dim centroids but {reader.dir} holds "
                f"{reader.feature_dim}-dim features ({reader.feature_name})"
            )

    def predict(self, feats: np.ndarray | torch.Tensor, block: int = 65536) -> np.ndarray:
        """(frames, D) -> (frames,) int64 index of the nearest centroid."""
        return nearest_centroid(
            torch.as_tensor(np.asarray(feats, dtype=np.float32)),
            torch.from_numpy(self.centroids),
            block=block,
        ).numpy()


def _memory(num_frames: int, dim: int, config: KMeansConfig) -> int:
    """Bytes for the sampled float32 frames plus MiniBatchKMeans' working arrays
    (init sample of 3 * batch_size rows, batch distances to every centroid)."""
    batch = min(num_frames, config.batch_size)
    return 4 * num_frames * dim + 8 * (
        min(num_frames, 3 * batch) * (dim + config.num_clusters) + batch * config.num_clusters
    )


_FAISS_BLOCK = 4096 * 1024  # faiss' distance tile (query block x centroid block), float32


def _faiss_memory(num_frames: int, dim: int, config: KMeansConfig, init_rows: int | None = None) -> int:
    """Bytes for faiss' fit of `num_frames` frames: the float32 frames, its per-frame assignment
    (int64) and distance (float32), the centroids, one distance tile and the init sample of
    `init_rows` (default: as many as the fit draws from those frames) with its distances."""
    init_rows = min(num_frames, 3 * config.batch_size) if init_rows is None else init_rows
    init = 8 * init_rows * (dim + config.num_clusters)
    return 4 * num_frames * dim + 12 * num_frames + 8 * config.num_clusters * dim + 4 * _FAISS_BLOCK + init


def _stream_fixed(dim: int, config: KMeansConfig) -> int:
    """Bytes a streamed sklearn fit needs besides its frame pool: partial_fit's copy of one batch,
    its k-means++ init on the first batch, its distances to every centroid, and the inertia pass's
    block of frames and distances."""
    b, k = config.batch_size, config.num_clusters
    return 8 * b * dim + 8 * b * (dim + k) + 8 * b * k + 4 * b * (dim + k)


@dataclass(frozen=True, kw_only=True)
class FitPlan:
    """How a fit will use memory: all selected frames in memory, streamed through a pool of
    `held_frames`, or a random sample of `held_frames` (faiss under a cap)."""

    backend: str
    mode: str  # "in memory" | "streamed" | "sampled"
    num_frames: int  # frames of the selected utterances
    held_frames: int  # frames in memory at once
    dim: int
    bytes: int  # estimated peak bytes of the fit
    cap_bytes: int | None

    def describe(self) -> str:
        cap = "no cap" if self.cap_bytes is None else f"cap {self.cap_bytes / 2**20:.1f} MiB"
        how = {
            "in memory": f"all {self.num_frames} frames in memory",
            "streamed": f"{self.num_frames} frames streamed through a pool of {self.held_frames}",
            "sampled": f"a random {self.held_frames} of {self.num_frames} frames",
        }[self.mode]
        return (
            f"{self.backend} fit on {how} x {self.dim} dims; "
            f"will use about {self.bytes / 2**20:.1f} MiB ({cap})"
        )


def plan_fit(num_frames: int, dim: int, config: KMeansConfig) -> FitPlan:
    """Decide in memory / streamed / sampled from the frame count and `config.max_memory_gb`;
    a cap too small for even one batch is a one-line error."""
    cap = None if config.max_memory_gb is None else int(config.max_memory_gb * 2**30)
    faiss = config.backend == "faiss"
    if faiss:
        import_faiss()  # a missing faiss is named before anything is read
    full = (_faiss_memory if faiss else _memory)(num_frames, dim, config)
    common = {"backend": config.backend, "num_frames": num_frames, "dim": dim, "cap_bytes": cap}
    if cap is None or full <= cap:
        return FitPlan(mode="in memory", held_frames=num_frames, bytes=full, **common)
    if faiss:  # the init sample is drawn from the held frames: at most as many rows as from all
        fixed = _faiss_memory(0, dim, config, init_rows=min(num_frames, 3 * config.batch_size))
        held = min((cap - fixed) // (4 * dim + 12), num_frames)
        if held < config.num_clusters:
            raise ValueError(
                f"--max-memory {config.max_memory_gb} GB is too small for a faiss fit of "
                f"{config.num_clusters} clusters of {dim} dims (needs more than "
                f"{_faiss_memory(config.num_clusters, dim, config) / 2**20:.1f} MiB)"
            )
        return FitPlan(
            mode="sampled", held_frames=int(held), bytes=_faiss_memory(held, dim, config), **common
        )
    if config.batch_size < config.num_clusters:  # partial_fit initialises on its first batch
        raise ValueError(
            f"--max-memory {config.max_memory_gb} GB makes the fit stream, and a streamed fit needs "
            f"--batch-size ({config.batch_size}) of at least --num-clusters ({config.num_clusters})"
        )
    fixed = _stream_fixed(dim, config)
    held = (cap - fixed) // (4 * dim)
    if held < config.batch_size:
        raise ValueError(
            f"--max-memory {config.max_memory_gb} GB is too small for a streamed fit with batch size "
            f"{config.batch_size} of {dim} dims (needs at least "
            f"{(fixed + 4 * dim * config.batch_size) / 2**20:.1f} MiB)"
        )
    held = min(int(held), num_frames)
    return FitPlan(mode="streamed", held_frames=held, bytes=fixed + 4 * dim * held, **common)


def _blocks(
    reader: FeatureReader, selection: Sequence[tuple[int, int]], max_frames: int
) -> Iterator[np.ndarray]:
    """The frames of `selection`, in its order, as float32 blocks of at most `max_frames` rows
    (a longer utterance is split); only one block is in memory at a time."""
    group: list[tuple[int, int]] = []
    count = 0
    for rank, i in selection:
        n = int(reader.lengths[rank][i])
        if group and count + n > max_frames:
            yield reader.gather(group)
            group, count = [], 0
        if n > max_frames:
            for a in range(0, n, max_frames):
                yield reader.read(rank, i, a, a + max_frames)
            continue
        group.append((rank, i))
        count += n
    if group:
        yield reader.gather(group)


def inertia_per_frame(
    reader: FeatureReader,
    selection: Sequence[tuple[int, int]],
    centroids: np.ndarray,
    block: int = 10000,
    progress: FitProgress | None = None,
) -> float:
    """Mean squared distance of the selected frames to their nearest centroid, block by block
    (the same number for every backend, and bounded memory)."""
    c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32))
    c_sq = (c * c).sum(dim=1)
    total, count = 0.0, 0
    for feats in _blocks(reader, selection, block):
        if progress is not None:
            progress.report(f"inertia: {count} frames done", first=count == 0)
        x = torch.from_numpy(feats)
        dist = (x * x).sum(dim=1, keepdim=True) + c_sq - 2.0 * (x @ c.T)
        total += float(dist.min(dim=1).values.clamp_min(0).double().sum())
        count += len(feats)
    return total / max(count, 1)


def _minibatch(config: KMeansConfig, progress: FitProgress | None = None):
    from sklearn.cluster import MiniBatchKMeans

    inits = [0]

    class ReportingMiniBatchKMeans(MiniBatchKMeans):
        """MiniBatchKMeans telling `progress` which init and which step it is at; each hook only
        reports, then runs sklearn's own method (the fit is the same). A sklearn without these
        private methods never calls them: the fit runs, with the watchdog's lines only."""

        def _init_centroids(self, *args: Any, **kwargs: Any) -> np.ndarray:
            inits[0] += 1
            if progress is not None:
                total = getattr(self, "_n_init", config.n_init)
                progress.report(f"init {inits[0]}/{total} ({config.init})", first=inits[0] == 1)
            return super()._init_centroids(*args, **kwargs)

        def _mini_batch_convergence(self, step: int, n_steps: int, *args: Any, **kwargs: Any) -> bool:
            if progress is not None:
                progress.report(
                    f"mini-batch step {step + 1} of at most {n_steps} (it stops when the inertia no"
                    f" longer improves for {config.max_no_improvement} steps)",
                    first=step == 0,
                )
            return super()._mini_batch_convergence(step, n_steps, *args, **kwargs)

    return ReportingMiniBatchKMeans(
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


def _fit_streamed(
    reader: FeatureReader,
    selection: Sequence[tuple[int, int]],
    config: KMeansConfig,
    plan: FitPlan,
    progress: FitProgress | None = None,
) -> np.ndarray:
    """MiniBatchKMeans.partial_fit over batches drawn from a pool of `plan.held_frames` frames:
    each pass visits the utterances in a new random order, fills the pool, shuffles its rows and
    feeds them a batch at a time, so a batch mixes utterances and shards as in the in-memory fit."""
    km = _minibatch(config, progress)
    rng = np.random.default_rng(config.seed)
    pool = np.empty((plan.held_frames, plan.dim), dtype=np.float32)
    done = [0, 0]  # pass, frames fed in this pass

    def drain(fill: int) -> None:
        rng.shuffle(pool[:fill])  # in place, row by row
        for a in range(0, fill, config.batch_size):
            batch = pool[a : min(a + config.batch_size, fill)]
            if progress is not None:
                progress.report(
                    f"streamed fit: pass {done[0] + 1}/{config.stream_passes}, "
                    f"{done[1]}/{plan.num_frames} frames fed",
                    first=done == [0, 0],
                )
            if hasattr(km, "cluster_centers_") or len(batch) >= config.num_clusters:
                km.partial_fit(batch)
            done[1] += len(batch)

    for pass_index in range(config.stream_passes):
        done[:] = [pass_index, 0]
        order = [selection[j] for j in rng.permutation(len(selection))]
        fill = 0
        for feats in _blocks(reader, order, config.batch_size):
            pos = 0
            while pos < len(feats):
                take = min(len(feats) - pos, plan.held_frames - fill)
                pool[fill : fill + take] = feats[pos : pos + take]
                fill, pos = fill + take, pos + take
                if fill == plan.held_frames:
                    drain(fill)
                    fill = 0
        if fill:
            drain(fill)
    return km.cluster_centers_


def _sample(
    reader: FeatureReader, selection: Sequence[tuple[int, int]], config: KMeansConfig, plan: FitPlan
) -> np.ndarray:
    """A uniform random sample of exactly `plan.held_frames` frames, read block by block into one
    preallocated array (reservoir sampling: frame i >= held takes a random slot with probability
    held / (i + 1); within a block the last frame to take a slot keeps it, as one at a time would)."""
    rng = np.random.default_rng(config.seed)
    held = plan.held_frames
    out = np.empty((held, plan.dim), dtype=np.float32)
    seen = 0
    for feats in _blocks(reader, selection, config.batch_size):
        first = min(len(feats), max(held - seen, 0))  # the first `held` frames fill the slots
        out[seen : seen + first] = feats[:first]
        slots = rng.integers(0, np.arange(seen + first, seen + len(feats)) + 1)
        rows = first + np.flatnonzero(slots < held)
        slots = slots[rows - first]
        _, last = np.unique(slots[::-1], return_index=True)  # the last row of each slot
        pick = len(slots) - 1 - last
        out[slots[pick]] = feats[rows[pick]]
        seen += len(feats)
    return out


_REFINE_ITERS = 5


def _init_centroids(
    feats: np.ndarray, config: KMeansConfig, progress: FitProgress | None = None
) -> np.ndarray:
    """Initial centroids for faiss: `n_init` candidates (k-means++ or random rows, per `config.init`)
    drawn on a random sample of 3 * batch_size frames, as MiniBatchKMeans draws them, each refined by
    a few Lloyd steps on that sample; the one of least sample inertia is kept. faiss' own init
    (random rows, one run) and unrefined k-means++ both end in visibly worse minima (+47 % and +1.5 %
    inertia vs MiniBatchKMeans on the benchmark's features)."""
    from sklearn.cluster import kmeans_plusplus

    rng = np.random.default_rng(config.seed)
    rows = min(len(feats), 3 * config.batch_size)
    sample = feats[np.sort(rng.choice(len(feats), size=rows, replace=False))] if rows < len(feats) else feats
    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
    x_sq = (x * x).sum(1, keepdim=True)
    best, best_inertia = None, np.inf
    for trial in range(config.n_init):
        if progress is not None:
            progress.report(f"init candidate {trial + 1}/{config.n_init} ({config.init})", first=trial == 0)
        if config.init == "k-means++":
            centers, _ = kmeans_plusplus(sample, config.num_clusters, random_state=config.seed + trial)
        else:
            centers = sample[rng.choice(len(sample), size=config.num_clusters, replace=False)]
        c = torch.from_numpy(np.array(centers, dtype=np.float32))
        for step in range(_REFINE_ITERS + 1):
            dist, assign = (x_sq + (c * c).sum(1) - 2.0 * (x @ c.T)).min(1)
            if step == _REFINE_ITERS:
                break
            sums = torch.zeros_like(c).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=len(c)).unsqueeze(1)
            c = torch.where(counts > 0, sums / counts.clamp_min(1), c)  # an empty cluster keeps its centre
        inertia = float(dist.double().sum())
        if best is None or inertia < best_inertia:
            best, best_inertia = c.numpy(), inertia
    return np.ascontiguousarray(best, dtype=np.float32)


def import_faiss() -> Any:
    """The faiss module, or a one-line error saying how to install it."""
    try:
        import faiss
    except ImportError as err:
        raise SpeechSSLError(
            "--backend faiss needs faiss: pip install faiss-cpu (or a faiss GPU build)"
        ) from err
    return faiss


def _fit_faiss(
    feats: np.ndarray, config: KMeansConfig, progress: FitProgress | None = None
) -> tuple[np.ndarray, dict]:
    """faiss.Kmeans (Lloyd's algorithm, `max_iter` iterations over every given frame) from the
    `_init_centroids` init; on a GPU when faiss has one. Returns (centroids, the faiss settings)."""
    faiss = import_faiss()
    gpu = bool(getattr(faiss, "get_num_gpus", lambda: 0)())
    settings = {
        "niter": config.max_iter,
        "nredo": 1,
        "seed": config.seed,
        "init": f"{config.init}, best of {config.n_init} after {_REFINE_ITERS} Lloyd steps on "
        f"{min(len(feats), 3 * config.batch_size)} frames",
        "max_points_per_centroid": -(-len(feats) // config.num_clusters),  # use every frame given
        "gpu": gpu,
        "faiss_version": getattr(faiss, "__version__", "unknown"),
    }
    feats = np.ascontiguousarray(feats, dtype=np.float32)
    km = faiss.Kmeans(
        feats.shape[1], config.num_clusters, niter=config.max_iter, nredo=1, seed=config.seed,
        max_points_per_centroid=settings["max_points_per_centroid"], gpu=gpu, verbose=False,
    )  # fmt: skip
    init = _init_centroids(feats, config, progress)
    if progress is not None:
        progress.report(f"faiss: {config.max_iter} Lloyd iterations on {len(feats)} frames", first=True)
    km.train(feats, init_centroids=init)
    return np.asarray(km.centroids, dtype=np.float32).reshape(config.num_clusters, -1), settings


def fit_kmeans(
    reader: FeatureReader,
    num_clusters: int,
    *,
    percent: float = 1.0,
    seed: int = 0,
    out_dir: str | Path | None = None,
    on_plan: Callable[[FitPlan], None] | None = None,
    **options,
) -> KMeansModel:
    """Fit k-means on (a `percent` sample of) the dumped features; save to `out_dir` if given.

    `options` are the other KMeansConfig fields (n_init, max_iter, batch_size, backend,
    max_memory_gb, ...). `on_plan` sees the memory plan before any frame is read (the CLI prints it).
    """
    config = KMeansConfig(num_clusters=num_clusters, percent=percent, seed=seed, **options)
    selection = reader.select(config.percent, config.seed)
    num_frames = reader.count_frames(selection)
    if num_frames < num_clusters:
        raise ValueError(f"{reader.dir}: {num_frames} frames sampled, fewer than the {num_clusters} clusters")
    plan = plan_fit(num_frames, reader.feature_dim, config)
    logger.info(
        "k-means: %d clusters on %d frames of %d utterances (%.1f%%) x %d dims; "
        "needs about %.1f MiB of memory (%s, %s)",
        num_clusters,
        num_frames,
        len(selection),
        100 * config.percent,
        reader.feature_dim,
        plan.bytes / 2**20,
        config.backend,
        plan.mode,
    )
    if on_plan is not None:
        on_plan(plan)
    extra: dict = {"fit_mode": plan.mode, "fit_frames_in_memory": plan.held_frames}
    with FitProgress() as progress:
        reading = f"reading {num_frames if plan.mode == 'in memory' else plan.held_frames} frames"
        if config.backend == "faiss":
            progress.report(reading, first=True)
            feats = (
                reader.gather(selection)
                if plan.mode == "in memory"
                else _sample(reader, selection, config, plan)
            )
            centroids, extra["faiss"] = _fit_faiss(feats, config, progress)
            del feats
            inertia = inertia_per_frame(reader, selection, centroids, config.batch_size, progress)
        elif plan.mode == "in memory":
            progress.report(reading, first=True)
            feats = reader.gather(selection)  # (N, D) float32; NaN/inf is an error naming shard and utterance
            km = _minibatch(config, progress)
            km.fit(feats)
            centroids = km.cluster_centers_
            progress.report("inertia of the fit")
            inertia = float(-km.score(feats) / len(feats))
        else:
            centroids = _fit_streamed(reader, selection, config, plan, progress)
            inertia = inertia_per_frame(reader, selection, centroids, config.batch_size, progress)
    if not math.isfinite(inertia):  # finite features too large for float32 distances (|x| ~ 1e19)
        raise ValueError(
            f"{reader.dir}: the fit's inertia is {inertia}: some features are too large for float32 "
            "distances; nothing was saved"
        )
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
        **extra,
    }
    model = KMeansModel(np.asarray(centroids, dtype=np.float32), params)
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
    model.check_features(reader)
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
