"""The loader benchmark rows at tiny sizes: well-formed rows, the workers-per-GPU arithmetic, the
GPU rate read from gpu-latest.json, epochs that deliver all the audio and are the trainer's, and a
temp corpus that is gone however the benchmark ends (exit, exception, SIGTERM, SIGINT). Never
timings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import loader
from benchmarks.harness import Settings

TINY = Settings(tiny=True, warmup=0, repeats=1, threads=1, memory=False)
REPO = Path(__file__).resolve().parent.parent


def _gpu_json(path, rows):
    path.write_text(
        json.dumps({"meta": {"gpu": "Test GPU X", "date": "2026-01-02 03:04:05 UTC"}, "rows": rows})
    )
    return path


def _row(name, ours, unit="audio-s/s"):
    return {"group": "gpu", "name": name, "ours": ours, "reference": None, "unit": unit}


def test_workers_needed_is_the_ceiling_and_at_least_one():
    assert loader.workers_needed(909.0, 464.0) == 2
    assert loader.workers_needed(1000.0, 333.0) == 4
    assert loader.workers_needed(909.0, 909.0) == 1
    assert loader.workers_needed(909.0, 5000.0) == 1


def test_gpu_rate_is_the_fastest_pretraining_step(tmp_path):
    path = _gpu_json(tmp_path / "gpu.json", [
        _row("bf16 matmul peak", 800.0, "TFLOP/s"),
        _row("hubert_base bf16 pretraining step, batch 8: throughput", 909.0),
        _row("hubert_base bf16 pretraining step, batch 8: step time", 86.0, "ms"),
        _row("wav2vec2_base bf16 pretraining step, batch 8: throughput", 1200.0),
        _row("hubert_base inference: throughput", 9000.0),
    ])  # fmt: skip
    gpu = loader.gpu_consumption(path)
    assert gpu["rate"] == 1200.0 and gpu["row"].startswith("wav2vec2_base")
    assert gpu["device"] == "Test GPU X" and gpu["date"].startswith("2026-01-02")
    assert loader.gpu_consumption(tmp_path / "missing.json") is None
    assert loader.gpu_consumption(_gpu_json(tmp_path / "none.json", [_row("matmul", 1.0, "TFLOP/s")])) is None


def test_corpus_compresses_like_speech_and_has_a_unit_per_frame():
    corp = loader.corpus("flac", 3)
    assert 0.4 < corp.compression < 0.7  # a tone would be ~0.1: decoding would look too cheap
    assert loader.corpus("wav", 3).seconds == corp.seconds
    lines = (corp.data_dir / "km" / "labels").read_text().splitlines()
    for line, seconds in zip(lines, corp.seconds):
        samples = round(seconds * 16000)
        assert len(line.split()) - 1 == (samples - 400) // 320 + 1
    with pytest.raises(ValueError, match="unknown audio format 'mp3'"):
        loader.corpus("mp3", 3)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_each_call_is_exactly_one_epoch_of_cropped_audio(num_workers):
    sizes = loader.sizes(TINY)
    step = loader.EpochStep("flac", sizes, num_workers=num_workers, pin_memory=False)
    expected = sum(min(s, sizes.max_seconds) for s in loader.corpus("flac", sizes.num_utts).seconds)
    counts = set()
    for _ in range(4):  # epochs 0-3: each its own shuffle and batch count
        epoch = step()
        counts.add(epoch["num_batches"])
        assert 0 < epoch["first_s"] <= epoch["total_s"] and 0 <= epoch["wait_s"] <= epoch["total_s"]
        assert epoch["audio_s"] == pytest.approx(expected, abs=1e-3)
        assert 0 < epoch["head_audio_s"] < epoch["audio_s"]
    assert step.epoch == 4 and min(counts) >= 2


def test_prefetch_factor_reaches_the_trainers_dataloader(monkeypatch):
    from speechssl.training import trainer

    seen = []
    real = trainer.DataLoader

    def spy(*args, **kwargs):
        seen.append(kwargs.get("prefetch_factor"))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "DataLoader", spy)
    sizes = loader.sizes(TINY)
    step = loader.EpochStep(
        "flac", sizes, num_workers=1, pin_memory=False, prefetch_factor=3, consume_rate=1e6
    )
    step()
    assert seen == [3]
    loader.EpochStep("flac", sizes, num_workers=1, pin_memory=False)()
    assert seen == [3, None]  # without it: the trainer's own call, untouched


def test_steady_rate_leaves_out_the_batches_made_before_the_first_arrived():
    epoch = {"first_s": 1.0, "total_s": 3.0, "audio_s": 500.0, "head_audio_s": 100.0, "wait_s": 0.5}
    assert loader._steady(epoch) == (200.0, 0.25)
    one_batch = {"first_s": 2.0, "total_s": 2.0, "audio_s": 100.0, "head_audio_s": 100.0, "wait_s": 0.0}
    assert loader._steady(one_batch) == (50.0, 0.0)


def _check_rows(rows, sizes):
    per_worker = [r for r in rows if r.name.endswith("per-worker rate")]
    feed = [r for r in rows if r.name.endswith("workers to feed one GPU")]
    assert len(feed) == len(loader.FORMATS) and all(r.unit == "workers" for r in feed)
    assert len(per_worker) >= len(loader.FORMATS) * len(sizes.workers)
    assert all(r.ours > 0 and r.unit == "audio-s/s" and r.reference is None for r in per_worker)
    return per_worker, feed


def test_rows_say_how_many_workers_the_gpu_needs(tmp_path):
    path = _gpu_json(tmp_path / "gpu.json", [_row("hubert_base bf16 pretraining step: throughput", 909.0)])
    rows = loader.run(TINY, gpu_json=path)
    per_worker, feed = _check_rows(rows, loader.sizes(TINY))
    for fmt, row in zip(loader.FORMATS, feed):
        assert fmt.upper() in row.name
        (one_worker,) = [r.ours for r in per_worker if fmt.upper() in r.name and "num_workers=1," in r.name]
        assert row.ours == loader.workers_needed(909.0, one_worker)
        assert "Test GPU X" in row.note and "2026-01-02" in row.note and "909" in row.note
    prefetch = [r for r in rows if "next(), prefetch_factor 2 (ours) vs 4" in r.name]
    assert len(prefetch) == 1 and "FLAC" in prefetch[0].name and "simulated GPU at 909" in prefetch[0].name
    assert prefetch[0].unit == "%" and 0 <= prefetch[0].ours <= 100 and 0 <= prefetch[0].reference <= 100


def test_without_a_gpu_measurement_the_need_is_unknown(tmp_path):
    rows = loader.run(TINY, gpu_json=tmp_path / "gpu-latest.json")
    _, feed = _check_rows(rows, loader.sizes(TINY))
    assert all(r.ours is None and r.note.startswith("unknown: no GPU consumption rate") for r in feed)
    assert not [r for r in rows if "prefetch_factor" in r.name]  # no GPU rate to simulate


def test_the_timed_loader_gives_the_trainers_batches():
    """Same batches, crops and units as the trainer's MicroBatchStream at that epoch, with one worker."""
    from speechssl.training import trainer

    step = loader.EpochStep("flac", loader.sizes(TINY), num_workers=1, pin_memory=True)
    args = step.open_loader.args  # dataset, collate, batch sampler, TrainerConfig, DistInfo
    ours = step.open_loader(2)
    assert ours.num_workers == 1 and ours.pin_memory == torch.cuda.is_available()  # pinned on CUDA only
    stream = trainer.MicroBatchStream(*args, epoch=2)
    theirs = [stream.next() for _ in range(len(ours))]
    assert stream.epoch == 2 and len(theirs) >= 2
    for a, b in zip(ours, theirs, strict=True):
        assert a.utt_ids == b.utt_ids and torch.equal(a.wavs, b.wavs)
        assert torch.equal(a.targets["km"], b.targets["km"])
    other_epoch = [b.utt_ids for b in step.open_loader(3)]
    assert other_epoch != [b.utt_ids for b in theirs]


def _child(tmp_path, code: str) -> subprocess.Popen:
    """`code` in a fresh interpreter at the repo root, its temp dirs under tmp_path, in a process
    group of its own (as `timeout` runs its command and as ^C reaches a foreground job)."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=env, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait(proc: subprocess.Popen, timeout: float = 60) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the benchmark did not exit within {timeout:g} s")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_killed_benchmark_leaves_no_corpus_behind(tmp_path, signum):
    not_ours = tmp_path / "speechssl-loader-flac-not-ours"  # the benchmark's prefix, but not its dir
    not_ours.mkdir()
    (not_ours / "keep").write_text("x")
    proc = _child(tmp_path, (
        "import signal\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, not a background job\n"
        "from benchmarks import loader\n"
        "from benchmarks.harness import Settings\n"
        "loader.run(Settings(tiny=True, warmup=0, repeats=10**6, threads=1, memory=False))\n"
    ))  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("speechssl-loader-flac-*/data/km/labels")):  # the corpus is written
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no corpus after 120 s"
        time.sleep(0.05)
    # the benchmark and its DataLoader workers; again every 5 s while it runs, as a user presses ^C
    # again: Python drops a KeyboardInterrupt that lands in a finaliser ("Exception ignored in")
    for _ in range(6):
        os.killpg(proc.pid, signum)
        try:
            proc.wait(timeout=5)
            break
        except subprocess.TimeoutExpired:
            continue
    _, err = _wait(proc, timeout=30)
    assert proc.returncode == -signum, err  # died of the signal, as without the clean-up
    # (pymp-* dirs of killed workers are multiprocessing's, as they were before: not ours to remove)
    assert [p.name for p in tmp_path.glob("speechssl-loader-*")] == [not_ours.name]
    assert (not_ours / "keep").read_text() == "x"


@pytest.mark.parametrize("end", ["exit", "exception"])
def test_the_corpus_is_removed_at_exit_and_on_an_exception_not_by_a_forked_child(tmp_path, end):
    proc = _child(tmp_path, (
        "import os, signal\n"
        "from benchmarks import loader\n"
        "data = loader.corpus('flac', 2).data_dir\n"
        "pid = os.fork()\n"
        "if pid == 0:  # a forked DataLoader worker killed by timeout: the dir is not its own\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, status\n"
        "assert (data / 'km' / 'labels').is_file()\n"
        "print(data.parent)\n"
        + ("raise RuntimeError('a benchmark error')\n" if end == "exception" else "")
    ))  # fmt: skip
    out, err = _wait(proc)
    assert proc.returncode == (1 if end == "exception" else 0), err
    root = Path(out.strip())
    assert root.parent == tmp_path and root.name.startswith("speechssl-loader-flac-")
    assert not root.exists() and not list(tmp_path.glob("speechssl-loader-*"))
