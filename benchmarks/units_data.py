"""Row group 5: k-means labelling (frames/s) and data loading (audio-s/s).

- `nearest_centroid` vs scikit-learn's `pairwise_distances_argmin` (what KMeans.predict does).
- AudioDataset + DurationBucketSampler + DataLoader (collate_audio) over a synthetic data dir
  of wav files in a temp dir, vs a bare `soundfile.read` loop over the same files: the
  reference is the I/O floor, so its ratio is our loader's overhead, not a competitor's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from benchmarks.harness import Case, Row, Settings, Spec, Step, run_cases
from speechssl.units.kmeans import nearest_centroid

GROUP = "units + data"


def kmeans_step(contender: str, num_frames: int, dim: int, num_clusters: int) -> Step:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((num_frames, dim), dtype=np.float32)
    centroids = rng.standard_normal((num_clusters, dim), dtype=np.float32)
    if contender == "ours":
        x, c = torch.from_numpy(feats), torch.from_numpy(centroids)
        return lambda: nearest_centroid(x, c)
    if contender == "scikit-learn":
        from sklearn.metrics import pairwise_distances_argmin

        return lambda: pairwise_distances_argmin(feats, centroids)
    raise ValueError(f"unknown k-means contender '{contender}'; valid: ours, scikit-learn")


def _data_dir(root: Path, num_utts: int) -> Path:
    from speechssl.testing.datadirs import make_data_dir

    # speakers x utterances of 1.0-1.9 s (make_data_dir's distinct durations)
    return make_data_dir(root, num_speakers=max(1, num_utts // 10), utts_per_speaker=min(10, num_utts),
                         base_seconds=1.0).path  # fmt: skip


def loading_step(contender: str, num_utts: int) -> Step:
    from torch.utils.data import DataLoader

    from speechssl.data.dataset import AudioDataset, collate_audio
    from speechssl.data.sampler import DurationBucketSampler

    tmp = tempfile.TemporaryDirectory(prefix="speechssl-bench-")
    path = _data_dir(Path(tmp.name), num_utts)
    dataset = AudioDataset(path)
    if contender == "ours":
        sampler = DurationBucketSampler(dataset.durations, max_batch_seconds=16.0, seed=0)

        def step() -> None:
            keep = tmp  # the temp dir lives as long as the step
            for batch in DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_audio, num_workers=0):
                assert batch.wavs.shape[0] > 0, keep

        return step
    if contender == "soundfile loop":
        files = sorted(str(p) for p in (Path(tmp.name) / "audio").glob("*.wav"))

        def raw() -> None:
            keep = tmp
            for f in files:
                assert sf.read(f, dtype="float32")[0].size > 0, keep

        return raw
    raise ValueError(f"unknown loading contender '{contender}'; valid: ours, soundfile loop")


def run(settings: Settings) -> list[Row]:
    n, d, k = (500, 16, 8) if settings.tiny else (20000, 768, 500) if settings.quick else (100000, 768, 500)
    utts = 4 if settings.tiny else 40 if settings.quick else 200
    km = {"num_frames": n, "dim": d, "num_clusters": k}
    # make_data_dir durations: utt j of speaker i lasts 1.0 + 0.1 j + 0.03 i seconds
    spk, per = max(1, utts // 10), min(10, utts)
    seconds = sum(round(1.0 + 0.1 * j + 0.03 * i, 2) for i in range(spk) for j in range(per))
    cases = [
        Case(name=f"k-means labelling, {n} x {d} frames, k={k}", work=n, unit="frames/s",
             contenders={f: Spec(module=__name__, factory="kmeans_step", kwargs={"contender": f, **km})
                         for f in ("ours", "scikit-learn")}),
        Case(name=f"data loading, {spk * per} wav files, 16 s batches", work=seconds, unit="audio-s/s",
             contenders={f: Spec(module=__name__, factory="loading_step", kwargs={"contender": f, "num_utts": utts})
                         for f in ("ours", "soundfile loop")}),
    ]  # fmt: skip
    settings_no_mem = Settings(**{**settings.__dict__, "memory": False})  # memory of these is not the question
    return run_cases(GROUP, cases, settings_no_mem, note="CPU")
