"""Row group `loader`: can the pretraining loader feed a GPU, and with how many workers?

What is timed is what `speechssl pretrain` runs: an AudioDataset built as
`training.pretrain.build_dataset` builds it (audio plus 50 Hz k-means units, random crops to
`max_seconds`), the DurationBucketSampler of `data.batching.build_loader`, `collate_audio`, and
the trainer's own `MicroBatchStream` (the DataLoader it opens every epoch, with the trainer's
`num_workers`, `pin_memory` and generator), plus the trainer's host-to-device copy where CUDA
exists. One call is one epoch over a corpus the benchmark writes to a temp dir: FLAC or WAV
files of 1-16 s (LibriSpeech-like lognormal durations) holding a speech-like signal, so FLAC
compresses about as LibriSpeech does (0.52 of the WAV size; a pure tone would decode
unrealistically fast). Files are in the page cache after the warm-up epoch: this is decoding,
cropping, label parsing and collation, not disk reads.

Rows: audio-seconds per second PER WORKER (the main process counts as the one worker with
`num_workers=0`), and `workers to feed one GPU` = ceil(GPU consumption / per-worker rate), the
GPU consumption being the fastest pretraining step in benchmarks/gpu-latest.json (what
`make gpu-check` measured), or unknown when that file does not exist.
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from benchmarks.harness import Row, Settings, make_row
from speechssl.data.audio import SAMPLE_RATE

GROUP = "loader"
GPU_JSON = Path(__file__).resolve().parent / "gpu-latest.json"
FORMATS = ("flac", "wav")
LEVEL = 0.2  # peak ~0.25: FLAC at 0.52 of the WAV size (LibriSpeech: about 0.55)
HOP, WIN, NUM_UNITS = 320, 400, 500  # HuBERT Base's conv frontend: 50 Hz labels, k-means K=500


@dataclass(frozen=True, kw_only=True)
class LoaderSizes:
    """Corpus and batching of one mode: `max_batch_seconds` and `max_seconds` are the GPU row's
    batch (8 x <= 15 s) and HuBERT Base's crop (fairseq max_sample_size 250k samples)."""

    num_utts: int
    workers: tuple[int, ...]
    max_batch_seconds: float = 120.0
    max_seconds: float = 15.0


def sizes(settings: Settings) -> LoaderSizes:
    if settings.tiny:
        return LoaderSizes(num_utts=6, workers=(0, 1), max_batch_seconds=16.0, max_seconds=8.0)
    return LoaderSizes(num_utts=80 if settings.quick else 400, workers=(0, 1, 2))


def speech_like(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A voiced harmonic series on a gliding pitch plus pink noise, under a 4 Hz syllable envelope."""
    from speechssl.data.synth_audio import coloured_noise

    n = round(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE  # (samples,)
    f0 = 120.0 + 30.0 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8)) / 3.0
    noise = coloured_noise(rng, n, 1.0)
    noise /= np.abs(noise).max() + 1e-9
    envelope = 0.5 * (1.0 + np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 2 * np.pi))) ** 2
    return (LEVEL * envelope * (0.6 * voiced + 0.4 * noise)).astype(np.float32)


@dataclass(frozen=True, kw_only=True)
class Corpus:
    data_dir: Path
    seconds: list[float]  # whole utterances, before cropping
    compression: float  # bytes on disk / 16-bit PCM bytes


@functools.lru_cache(maxsize=4)
def corpus(fmt: str, num_utts: int) -> Corpus:
    """A data dir of `num_utts` `fmt` files (16 kHz, 16-bit) with a `km` units dir as k-means
    labelling writes it, in a temp dir that lives until exit. Same durations for every format."""
    from speechssl.data.datadir import write_data_dir

    if fmt not in FORMATS:
        raise ValueError(f"unknown audio format '{fmt}'; valid: {', '.join(FORMATS)}")
    root = Path(tempfile.mkdtemp(prefix=f"speechssl-loader-{fmt}-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    rng = np.random.default_rng(0)
    seconds = np.clip(rng.lognormal(np.log(6.0), 0.6, num_utts), 1.0, 16.0).round(2).tolist()
    (root / "audio").mkdir()
    wav_scp, utt2spk, labels, nbytes = {}, {}, [], 0
    for i, dur in enumerate(seconds):
        utt = f"spk{i % 10}-utt{i:04d}"
        path = root / "audio" / f"{utt}.{fmt}"
        samples = speech_like(dur, rng)
        sf.write(path, samples, SAMPLE_RATE, subtype="PCM_16")
        nbytes += path.stat().st_size
        wav_scp[utt], utt2spk[utt] = str(path), f"spk{i % 10}"
        frames = (len(samples) - WIN) // HOP + 1
        labels.append(f"{utt} " + " ".join(map(str, rng.integers(0, NUM_UNITS, frames))))
    data = write_data_dir(root / "data", wav_scp, utt2spk=utt2spk).path
    (data / "km").mkdir()
    (data / "km" / "labels").write_text("\n".join(labels) + "\n")
    pcm_bytes = 2 * SAMPLE_RATE * sum(seconds)
    return Corpus(data_dir=data, seconds=seconds, compression=nbytes / pcm_bytes)


class EpochStep:
    """One training epoch through the trainer's MicroBatchStream: `__call__` takes exactly one
    epoch of batches (the first one re-opens the DataLoader, as the trainer does each epoch) and
    returns (seconds to the first batch, seconds in all, audio seconds delivered)."""

    def __init__(self, fmt: str, sizes: LoaderSizes, *, num_workers: int, pin_memory: bool) -> None:
        from speechssl.data.batching import BatchingConfig, build_loader
        from speechssl.data.dataset import AudioDataset
        from speechssl.training.config import TrainerConfig
        from speechssl.training.distributed import DistInfo
        from speechssl.training.trainer import MicroBatchStream
        from speechssl.units.labels import parse_units

        data = corpus(fmt, sizes.num_utts).data_dir
        batching = BatchingConfig(max_batch_seconds=sizes.max_batch_seconds, max_seconds=sizes.max_seconds)
        seed = 1
        dataset = AudioDataset(  # as training.pretrain.build_dataset builds it
            data, targets={"km": str(data / "km" / "labels")}, target_transforms={"km": parse_units},
            max_seconds=batching.max_seconds, crop=batching.crop, label_rates={"km": SAMPLE_RATE / HOP},
            seed=seed,
        )  # fmt: skip
        loader = build_loader(dataset, batching, train=True, seed=seed)
        self.num_batches = len(loader.batch_sampler)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.pin_memory = pin_memory
        config = TrainerConfig(num_workers=num_workers, pin_memory=pin_memory, seed=seed)
        info = DistInfo(rank=0, world_size=1, local_rank=0, device=self.device)
        self.stream = MicroBatchStream(loader.dataset, loader.collate_fn, loader.batch_sampler, config, info)

    def __call__(self) -> tuple[float, float, float]:
        from speechssl.training.trainer import to_device

        samples = 0
        t0 = time.perf_counter()
        first = 0.0
        for i in range(self.num_batches):
            batch = self.stream.next()
            if self.device.type == "cuda":  # the trainer's copy (non_blocking with pinned memory)
                batch = to_device(batch, self.device, non_blocking=self.pin_memory)
            samples += int(batch.wav_lens.sum())
            if i == 0:
                first = time.perf_counter() - t0
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return first, time.perf_counter() - t0, samples / SAMPLE_RATE


def gpu_consumption(path: Path = GPU_JSON) -> dict[str, Any] | None:
    """The fastest pretraining step of a `make gpu-check` run (audio-s/s), with its device and
    date; None when the file does not exist or holds no such row."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    rows = [
        r for r in data.get("rows", [])
        if r.get("unit") == "audio-s/s" and "pretraining step" in r.get("name", "")
        and "throughput" in r.get("name", "") and r.get("ours")
    ]  # fmt: skip
    if not rows:
        return None
    best = max(rows, key=lambda r: r["ours"])
    meta = data.get("meta", {})
    return {"rate": float(best["ours"]), "row": best["name"], "device": meta.get("gpu", "unknown GPU"),
            "date": meta.get("date", "unknown date"), "file": path.name}  # fmt: skip


def workers_needed(gpu_rate: float, per_worker: float) -> int:
    """Workers whose summed rate reaches the GPU's consumption (at least one)."""
    return max(1, math.ceil(gpu_rate / per_worker))


def _label(num_workers: int, pin: bool) -> str:
    return f"num_workers={num_workers}, pin_memory={'on' if pin else 'off'}"


def measure(fmt: str, sz: LoaderSizes, settings: Settings) -> dict[tuple[int, bool], dict[str, float]]:
    """Median epoch of every (num_workers, pin_memory) setting, run interleaved (A, B, A, B, ...)
    after a warm-up epoch each, as benchmarks.harness does: drift hits all settings alike."""
    pins = (False, True) if torch.cuda.is_available() else (False,)
    steps = {(w, p): EpochStep(fmt, sz, num_workers=w, pin_memory=p) for w in sz.workers for p in pins}
    samples: dict[tuple[int, bool], list[tuple[float, float, float]]] = {k: [] for k in steps}
    for r in range(settings.warmup + settings.repeats):
        for key, step in steps.items():
            result = step()
            if r >= settings.warmup:
                samples[key].append(result)
    out = {}
    for key, values in samples.items():
        audio = values[0][2]
        total = statistics.median(v[1] for v in values)
        out[key] = {"first_s": statistics.median(v[0] for v in values), "total_s": total, "audio_s": audio,
                    "rate": audio / total, "per_worker": audio / total / max(1, key[0])}  # fmt: skip
    del steps  # shuts the workers down
    return out


def run(settings: Settings, *, gpu_json: Path = GPU_JSON) -> list[Row]:
    sz = sizes(settings)
    gpu = gpu_consumption(gpu_json)
    cuda = torch.cuda.is_available()
    pin_note = "" if cuda else "; no CUDA here: pin_memory=on not measured"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows: list[Row] = []
    for fmt in FORMATS:
        corp = corpus(fmt, sz.num_utts)
        result = measure(fmt, sz, settings)
        name = (
            f"pretraining loader, {sz.num_utts} {fmt.upper()} files of 1-16 s ({sum(corp.seconds):.0f} s), "
            f"{sz.max_batch_seconds:g} s batches, {sz.max_seconds:g} s crops"
        )
        for (w, pin), m in result.items():
            who = f"{w} worker{'s' if w > 1 else ''}" if w else "no worker (the main process)"
            rows.append(make_row(
                GROUP, f"{name}, {_label(w, pin)}: per-worker rate", m["per_worker"], None, "audio-s/s",
                note=f"total {m['rate']:,.0f} audio-s/s with {who}; first batch of an epoch after "
                f"{1000 * m['first_s']:.0f} ms{pin_note if w == sz.workers[-1] else ''}",
            ))  # fmt: skip
        # the slowest per-worker rate among the worker settings: scaling losses included, never flattering
        worker_keys = [k for k in result if k[0] >= 1] or list(result)
        slowest = min(worker_keys, key=lambda k: result[k]["per_worker"])
        per_worker = result[slowest]["per_worker"]
        where = (
            f"per-worker rate {per_worker:,.0f} audio-s/s ({_label(*slowest)}, the slowest worker setting) "
            f"on {os.cpu_count()} CPU cores, load average {load:.1f} at the start"
        )
        if gpu is None:
            rows.append(make_row(
                GROUP, f"{name}: workers to feed one GPU", None, None, "workers", higher_is_better=False,
                note=f"unknown: no GPU consumption rate ({gpu_json.name} not found; `make gpu-check` "
                f"on a GPU writes it); {where}",
            ))  # fmt: skip
            continue
        rows.append(make_row(
            GROUP, f"{name}: workers to feed one GPU", float(workers_needed(gpu["rate"], per_worker)), None,
            "workers", higher_is_better=False,
            note=f"ceil({gpu['rate']:,.0f} / {per_worker:,.0f}): {gpu['device']} consumes {gpu['rate']:,.0f} "
            f"audio-s/s ({gpu['row']}; {gpu['file']}, {gpu['date']}); {where}; "
            f"files {corp.compression:.2f} of 16-bit PCM size",
        ))  # fmt: skip
    return rows
