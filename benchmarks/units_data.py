"""Row group 5: k-means labelling (frames/s) and data loading (audio-s/s).

- `nearest_centroid` vs scikit-learn's `pairwise_distances_argmin` (what KMeans.predict does).
- AudioDataset + DurationBucketSampler + DataLoader (collate_audio), one epoch over a
  synthetic data dir of FLAC files, vs the loader users write without a toolkit (whole-file
  `soundfile.read`, shuffled fixed-size batches, `pad_sequence`), and vs a bare
  `soundfile.read` loop over the same files: that last one is the decoding floor (no
  batching, no padding), so its ratio is our loader's overhead, not a competitor's.
"""

from __future__ import annotations

import atexit
import functools
import shutil
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


@functools.lru_cache(maxsize=2)
def _corpus(num_utts: int) -> tuple[Path, list[float]]:
    """A data dir of `num_utts` FLAC files (LibriSpeech's format) with LibriSpeech-like
    durations (lognormal, median 6 s, 1-16 s), written once per process to a temp dir
    that lives until exit; returns (data dir, durations)."""
    from speechssl.data.datadir import write_data_dir
    from speechssl.testing.datadirs import write_tone

    root = Path(tempfile.mkdtemp(prefix="speechssl-bench-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    rng = np.random.default_rng(0)
    seconds = np.clip(rng.lognormal(np.log(6.0), 0.6, num_utts), 1.0, 16.0).round(2).tolist()
    wav_scp, utt2spk = {}, {}
    for i, dur in enumerate(seconds):
        utt = f"spk{i % 10}-utt{i:04d}"
        wav_scp[utt] = write_tone(root / "audio" / f"{utt}.flac", dur, freq=110.0 + 10 * (i % 30))
        utt2spk[utt] = f"spk{i % 10}"
    return write_data_dir(root / "data", wav_scp, utt2spk=utt2spk).path, seconds


def _pad_collate(wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True), torch.tensor([len(w) for w in wavs])


class _NaiveDataset(torch.utils.data.Dataset):
    """What a user writes without a toolkit: read the whole file with soundfile."""

    def __init__(self, files: list[str]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(sf.read(self.files[index], dtype="float32")[0])


def loading_step(contender: str, num_utts: int, batch_seconds: float) -> Step:
    """One epoch over the corpus into padded batches of about `batch_seconds` of audio."""
    from torch.utils.data import DataLoader

    from speechssl.data.dataset import AudioDataset, collate_audio
    from speechssl.data.sampler import DurationBucketSampler

    path, seconds = _corpus(num_utts)
    files = [line.split(maxsplit=1)[1] for line in (path / "wav.scp").read_text().splitlines()]
    if contender == "ours":
        dataset = AudioDataset(path)
        sampler = DurationBucketSampler(dataset.durations, max_batch_seconds=batch_seconds, seed=0)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_audio, num_workers=0)
        return lambda: sum(batch.wavs.shape[0] for batch in loader)
    if contender == "naive DataLoader":
        batch_size = max(1, round(batch_seconds / float(np.mean(seconds))))
        loader = DataLoader(_NaiveDataset(files), batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(0), collate_fn=_pad_collate)  # fmt: skip
        return lambda: sum(wavs.shape[0] for wavs, _ in loader)
    if contender == "soundfile loop":
        return lambda: sum(sf.read(f, dtype="float32")[0].size for f in files)
    raise ValueError(
        f"unknown loading contender '{contender}'; valid: ours, naive DataLoader, soundfile loop"
    )


def run(settings: Settings) -> list[Row]:
    n, d, k = (500, 16, 8) if settings.tiny else (20000, 768, 500) if settings.quick else (100000, 768, 500)
    utts = 4 if settings.tiny else 40 if settings.quick else 200
    km = {"num_frames": n, "dim": d, "num_clusters": k}
    loading = {"num_utts": utts, "batch_seconds": 60.0}
    cases = [
        Case(name=f"k-means labelling, {n} x {d} frames, k={k}", work=n, unit="frames/s",
             contenders={f: Spec(module=__name__, factory="kmeans_step", kwargs={"contender": f, **km})
                         for f in ("ours", "scikit-learn")}),
        Case(name=f"data loading, {utts} FLAC files of 1-16 s, 60 s batches", work=sum(_corpus(utts)[1]),
             unit="audio-s/s",
             contenders={f: Spec(module=__name__, factory="loading_step", kwargs={"contender": f, **loading})
                         for f in ("ours", "naive DataLoader", "soundfile loop")}),
    ]  # fmt: skip
    settings_no_mem = Settings(
        **{**settings.__dict__, "memory": False}
    )  # memory of these is not the question
    return run_cases(GROUP, cases, settings_no_mem, note="CPU")
