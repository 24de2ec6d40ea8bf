"""Row group `loader`: can the pretraining loader feed a GPU, and with how many workers?

What is timed is what `speechssl pretrain` runs: an AudioDataset built as
`training.pretrain.build_dataset` builds it (audio plus 50 Hz k-means units, random crops to
`max_seconds`), the DurationBucketSampler of `data.batching.build_loader`, `collate_audio`, and
the DataLoader the trainer opens every epoch (`trainer.epoch_loader`: the trainer's `num_workers`,
`pin_memory` and generator), plus the trainer's host-to-device copy where CUDA exists. One call
is one epoch over a corpus the benchmark writes to a temp dir (removed at exit, on an exception,
and on SIGTERM, SIGINT or SIGHUP, `timeout`'s and ^C's signals): FLAC or WAV
files of 1-16 s (LibriSpeech-like lognormal durations) holding a speech-like signal, so FLAC
compresses about as LibriSpeech does (0.52 of the WAV size; a pure tone would decode
unrealistically fast). Files are in the page cache after the warm-up epoch: this is decoding,
cropping, label parsing and collation, not disk reads.

Rows, per format and setting (num_workers 0, 1, 2; pin_memory off, and on where CUDA exists):
- audio-seconds per second PER WORKER after the epoch's first batch (the main process counts as
  the one worker with `num_workers=0`), with the epoch start (time to the first batch) in the note;
- `workers to feed one GPU` = ceil(GPU consumption / one worker's rate), the GPU consumption being
  the fastest pretraining step in benchmarks/gpu-latest.json (what `make gpu-check` measured),
  or unknown when that file does not exist;
- FLAC only: the share of time the trainer's `next()` takes while a simulated GPU consumes
  batches at that rate, with torch's default prefetch_factor 2 and with 4 (is a deeper queue
  worth a setting?).
"""

from __future__ import annotations

import atexit
import functools
import json
import math
import os
import signal
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from benchmarks.harness import Row, Settings, make_row
from speechssl.data.audio import SAMPLE_RATE
from speechssl.training.trainer import epoch_loader

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
    # quick: about 12 batches an epoch, full: about 35 (the steady rate leaves the first out)
    return LoaderSizes(num_utts=200 if settings.quick else 600, workers=(0, 1, 2))


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


# Temp dirs made here, each with the pid that made it, removed at exit (normal or by an exception:
# atexit) and when a signal whose default is to kill us arrives (SIGTERM from `timeout`, SIGHUP,
# SIGINT where it is not Python's KeyboardInterrupt): the full-size corpora take about 200 MB.
# Forked DataLoader workers inherit the list and the handler: the dirs are never theirs to remove.
_TEMP_DIRS: list[tuple[int, tempfile.TemporaryDirectory]] = []
_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, n))


def _temp_dir(prefix: str) -> Path:
    """A new temp dir, removed by this process when it exits or is killed by a signal."""
    if not _TEMP_DIRS:
        atexit.register(_remove_temp_dirs)
        if threading.current_thread() is threading.main_thread():  # signal.signal's rule
            for signum in _SIGNALS:
                if signal.getsignal(signum) is signal.SIG_DFL:  # an ignored or handled signal stays so
                    signal.signal(signum, _remove_and_die)
    tmp = tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True)
    _TEMP_DIRS.append((os.getpid(), tmp))
    return Path(tmp.name)


def _remove_temp_dirs() -> None:
    pid = os.getpid()
    for owner, tmp in _TEMP_DIRS:
        if owner == pid:
            tmp.cleanup()


def _remove_and_die(signum: int, frame: Any) -> None:
    """Remove our temp dirs, then die of the signal as without this handler (the same exit
    status; no exception that an `except BaseException` could swallow, as pytest's runner does)."""
    if hasattr(signal, "SIGCHLD"):  # torch's handler raises when our workers die of this same signal
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # which would stop the removal half-way
    _remove_temp_dirs()
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


@dataclass(frozen=True, kw_only=True)
class Corpus:
    data_dir: Path
    seconds: list[float]  # whole utterances, before cropping
    compression: float  # bytes on disk / 16-bit PCM bytes


@functools.lru_cache(maxsize=4)
def corpus(fmt: str, num_utts: int) -> Corpus:
    """A data dir of `num_utts` `fmt` files (16 kHz, 16-bit) with a `km` units dir as k-means
    labelling writes it, in a temp dir that lives until exit (see `_temp_dir`). Same durations
    for every format."""
    from speechssl.data.datadir import write_data_dir

    if fmt not in FORMATS:
        raise ValueError(f"unknown audio format '{fmt}'; valid: {', '.join(FORMATS)}")
    root = _temp_dir(f"speechssl-loader-{fmt}-")
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
    """One training epoch of the DataLoader the trainer opens. Each call opens the next epoch
    (a new DataLoader and its workers, as the trainer does every epoch), takes exactly its batches
    and ends it, so that no step keeps workers alive while another one forks its own.

    consume_rate: audio-s/s of a simulated GPU that sleeps for each batch's audio at that rate
    (None: batches are consumed at once). prefetch_factor: the DataLoader's, passed through the
    trainer's own DataLoader call (None: the trainer's call as it is, i.e. torch's default 2)."""

    def __init__(
        self, fmt: str, sizes: LoaderSizes, *, num_workers: int, pin_memory: bool,
        prefetch_factor: int | None = None, consume_rate: float | None = None,
    ) -> None:  # fmt: skip
        from speechssl.data.batching import BatchingConfig, build_loader
        from speechssl.data.dataset import AudioDataset
        from speechssl.training.config import TrainerConfig
        from speechssl.training.distributed import DistInfo
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
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.pin_memory, self.consume_rate = pin_memory, consume_rate
        self.head = max(1, num_workers)  # batches the workers make side by side before the first arrives
        config = TrainerConfig(num_workers=num_workers, pin_memory=pin_memory, seed=seed)
        info = DistInfo(rank=0, world_size=1, local_rank=0, device=self.device)
        self.epoch = 0
        self.open_loader = functools.partial(
            epoch_loader, loader.dataset, loader.collate_fn, loader.batch_sampler, config, info,
            prefetch_factor=prefetch_factor,
        )  # fmt: skip

    def __call__(self) -> dict[str, float]:
        """first_s: seconds to the first batch (the epoch start); total_s: the epoch; audio_s: audio
        delivered; head_audio_s: audio of the first max(1, num_workers) batches, which the workers
        made side by side before the first one arrived; wait_s: seconds spent waiting for the
        batches after the first; num_batches: the epoch's (it varies)."""
        from speechssl.training.trainer import to_device

        samples = head_samples = 0
        first = wait = 0.0
        loader = self.open_loader(self.epoch)
        num_batches = len(loader)
        self.epoch += 1
        t0 = time.perf_counter()
        it = iter(loader)
        for i in range(num_batches):
            t1 = time.perf_counter()
            batch = next(it)
            n = int(batch.wav_lens.sum())  # on the host: no device sync per batch
            if self.device.type == "cuda":  # the trainer's copy (non_blocking with pinned memory)
                batch = to_device(batch, self.device, non_blocking=self.pin_memory)
            samples += n
            head_samples += n if i < self.head else 0
            if i == 0:
                first = time.perf_counter() - t0
            else:
                wait += time.perf_counter() - t1
            if self.consume_rate is not None:
                time.sleep(n / SAMPLE_RATE / self.consume_rate)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        total = time.perf_counter() - t0
        # end the epoch as the trainer does: the exhausted iterator shuts its workers down at once
        # (dropping a live one waits torch's 5 s status interval per worker, and a worker forked
        # later would inherit it)
        if next(it, None) is not None:
            raise AssertionError(f"epoch {self.epoch - 1} has more than {num_batches} batches")
        del it, loader, batch
        return {"first_s": first, "total_s": total, "audio_s": samples / SAMPLE_RATE,
                "head_audio_s": head_samples / SAMPLE_RATE, "wait_s": wait,
                "num_batches": num_batches}  # fmt: skip


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
        and "CUDA graphs" not in r.get("name", "")  # one static batch: not a rate the trainer runs at
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


def measure(steps: dict[Any, EpochStep], settings: Settings) -> dict[Any, dict[str, float]]:
    """Median epoch of every step, run interleaved (A, B, A, B, ...) after warm-up epochs, as
    benchmarks.harness does, so drift of the machine hits every setting alike.

    rate: audio-s/s from the first batch to the end of the epoch, not counting the batches made
    before it (the steady rate: an epoch of a real corpus lasts an hour; its start is measured
    apart, in first_s); wait: the fraction of that time spent waiting for batches."""
    samples: dict[Any, list[dict[str, float]]] = {k: [] for k in steps}
    for r in range(settings.warmup + settings.repeats):
        for key, step in steps.items():
            result = step()
            if r >= settings.warmup:
                samples[key].append(result)
    out = {}
    for key, values in samples.items():
        steady = [_steady(v) for v in values]
        per_batch = [1000 * v["wait_s"] / max(1, v["num_batches"] - 1) for v in values]
        out[key] = {"first_s": statistics.median(v["first_s"] for v in values),
                    "rate": statistics.median(r for r, _ in steady),
                    "wait": statistics.median(w for _, w in steady),
                    "wait_ms": statistics.median(per_batch)}  # fmt: skip
    return out


def _steady(v: dict[str, float]) -> tuple[float, float]:
    """(audio-s/s, fraction of time waiting) after the epoch's first batch."""
    after = v["total_s"] - v["first_s"]
    if after <= 0:  # a one-batch epoch
        return v["audio_s"] / v["total_s"], 0.0
    return (v["audio_s"] - v["head_audio_s"]) / after, v["wait_s"] / after


def run(settings: Settings, *, gpu_json: Path = GPU_JSON) -> list[Row]:
    sz = sizes(settings)
    gpu = gpu_consumption(gpu_json)
    cuda = torch.cuda.is_available()
    pins = (False, True) if cuda else (False,)
    pin_note = "" if cuda else "; no CUDA here: pin_memory=on not measured"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows: list[Row] = []
    for fmt in FORMATS:
        corp = corpus(fmt, sz.num_utts)
        steps = {(w, p): EpochStep(fmt, sz, num_workers=w, pin_memory=p) for w in sz.workers for p in pins}
        result = measure(steps, settings)
        del steps  # shuts their workers down
        name = (
            f"pretraining loader, {sz.num_utts} {fmt.upper()} files of 1-16 s ({sum(corp.seconds):.0f} s), "
            f"{sz.max_batch_seconds:g} s batches, {sz.max_seconds:g} s crops"
        )
        for (w, pin), m in result.items():
            who = f"{w} worker{'s' if w > 1 else ''}" if w else "no worker (the main process)"
            rows.append(make_row(
                GROUP, f"{name}, {_label(w, pin)}: per-worker rate", m["rate"] / max(w, 1), None, "audio-s/s",
                note=f"total {m['rate']:,.0f} audio-s/s with {who} after the first batch; the epoch's first "
                f"batch after {1000 * m['first_s']:.0f} ms{pin_note if w == sz.workers[-1] else ''}",
            ))  # fmt: skip
        # one worker's rate: on a GPU host each worker has a core of its own (16 cores on the H100/H200
        # machines), which num_workers=2 on this 2-core machine does not give (the main process and
        # other jobs share the cores); the trainer pins memory by default, so pinned where measured
        key = (1, cuda)
        per_worker = result[key]["rate"]
        where = (
            f"per-worker rate {per_worker:,.0f} audio-s/s ({_label(*key)}) on a {os.cpu_count()}-core CPU, "
            f"load average {load:.1f} at the start; files {corp.compression:.2f} of 16-bit PCM size"
        )
        feed = f"{name}: workers to feed one GPU"
        if gpu is None:
            rows.append(make_row(
                GROUP, feed, None, None, "workers", higher_is_better=False,
                note=f"unknown: no GPU consumption rate ({gpu_json.name} not found; `make gpu-check` "
                f"on a GPU writes it); {where}",
            ))  # fmt: skip
            continue
        rows.append(make_row(
            GROUP, feed, float(workers_needed(gpu["rate"], per_worker)), None, "workers",
            higher_is_better=False,
            note=f"ceil({gpu['rate']:,.0f} / {per_worker:,.0f}): {gpu['device']} consumes {gpu['rate']:,.0f} "
            f"audio-s/s ({gpu['row']}; {gpu['file']}, {gpu['date']}); {where}",
        ))  # fmt: skip
        if fmt == "flac":
            rows += prefetch_rows(name, sz, settings, gpu)
    return rows


def prefetch_rows(name: str, sz: LoaderSizes, settings: Settings, gpu: dict[str, Any]) -> list[Row]:
    """Does a GPU run want a deeper prefetch queue than torch's default 2 batches per worker?
    A simulated GPU consuming the measured GPU rate (sleeping, so it leaves the cores to the
    workers) takes FLAC epochs of the trainer's DataLoader with prefetch_factor 2 and 4."""
    workers = [w for w in sz.workers if w >= 1]
    steps = {(w, k): EpochStep("flac", sz, num_workers=w, pin_memory=torch.cuda.is_available(),
                               prefetch_factor=k, consume_rate=gpu["rate"])
             for w in workers for k in (2, 4)}  # fmt: skip
    result = measure(steps, settings)
    del steps
    return [
        make_row(
            GROUP,
            f"{name}, num_workers={w}, simulated GPU at {gpu['rate']:,.0f} audio-s/s: "
            "time in next(), prefetch_factor 2 (ours) vs 4",
            100 * result[(w, 2)]["wait"],
            100 * result[(w, 4)]["wait"],
            "%",
            higher_is_better=False,
            note=f"share of the epoch after its first batch spent in next() on the trainer's DataLoader "
            f"(waiting for a batch and receiving it): {result[(w, 2)]['wait_ms']:.1f} vs "
            f"{result[(w, 4)]['wait_ms']:.1f} ms per batch; ratio < 1 would mean a deeper queue helps",
        )  # fmt: skip
        for w in workers
    ]
