"""Cached upstream features (speechssl.downstream.feature_cache): the cached path trains the same
heads as the uncached one, a cache of other weights or other data is never reused, a torn or
damaged entry is never read, two writers of one entry do not corrupt it, resume is exact."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file

from speechssl.data.batching import build_loader
from speechssl.data.kaldi import read_table, write_table
from speechssl.downstream import DownstreamConfig, HeadConfig, build_task
from speechssl.downstream import feature_cache as fc
from speechssl.downstream.feature_cache import (
    CACHE_COMMAND,
    FeatureCache,
    FeatureCacheError,
    cached_loader,
    crop_frame_count,
    open_entry,
)
from speechssl.downstream.runner import evaluate_downstream, prepare_upstream, train_downstream
from speechssl.errors import OutputExistsError
from speechssl.interop.upstream import Upstream, load_upstream
from speechssl.models.checkpoint import save_checkpoint
from speechssl.models.model import build_model
from speechssl.outputs import read_marker
from speechssl.testing.datadirs import write_tone
from speechssl.testing.models import perturb_, tiny_config

SMALL = HeadConfig(
    hidden_dim=16, lstm_dim=16, lstm_layers=1, xvector_channels=16, xvector_agg_dim=24, embed_dim=8,
    asv_min_seconds=0.0,
)  # fmt: skip
# float16 keeps 11 significant bits: rounding to nearest is off by at most 2^-11 relative (normal
# numbers) or half the subnormal spacing, 2^-25, absolute; plus float32 noise between two batchings
# of the same utterances (the cache's and the test's), ~1e-7
FP16_RTOL, FP16_ATOL = 2.0**-11 + 1e-6, 2.0**-25 + 1e-7


def config(**kw) -> DownstreamConfig:
    base = {
        "head": SMALL,
        "max_batch_seconds": 4.0,
        "eval_every": 2,
        "log_every": 2,
        "lr": 1e-2,
        "patience": None,
    }
    return DownstreamConfig(**{**base, **kw})


def _save_upstream(path: Path, seed: int) -> Path:
    """A tiny network whose features do not depend on padding (layer-norm conv frontend), every
    weight moved off its init, as a speechssl checkpoint."""
    torch.manual_seed(0)
    cfg = tiny_config(mode="layer_norm", layer_norm_first=True, embed_dim=24, num_heads=3)
    save_checkpoint(perturb_(build_model(cfg).eval(), seed=seed), cfg, path)
    return path


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Path:
    return _save_upstream(tmp_path_factory.mktemp("up") / "tiny", seed=1)


def _cache(root: Path, upstream_path: Path) -> FeatureCache:
    up = load_upstream(upstream_path)
    return FeatureCache(root, up, str(upstream_path), batching=config().batching())


def _weights(exp: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(exp / "checkpoints" / f"step_{step}" / "model.safetensors")


def _entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


# ---------------------------------------------------------------- parity


def test_cached_features_equal_the_upstreams_to_float16_precision(task_data, upstream, tmp_path):
    split = task_data["ks"] / "train"
    cached = _cache(tmp_path / "cache", upstream).split(split)
    up = load_upstream(upstream)
    task = build_task("ks", task_data["ks"], tmp_path / "exp", config())
    dataset = task.dataset("train", train=False)
    batch = next(iter(build_loader(dataset, config(max_batch_seconds=60.0).batching(), train=False, seed=0)))
    assert len(batch) > 2  # a padded batch of several lengths
    with torch.no_grad():
        out = up(batch.wavs, batch.wav_lens)
    reference = torch.stack(out.hidden_states, dim=2)  # (B, T, H, D)
    for b, utt in enumerate(batch.utt_ids):
        frames = torch.from_numpy(np.array(cached.frames(utt))).float()  # (T, H, D)
        assert frames.shape == reference[b, : int(out.lengths[b])].shape
        torch.testing.assert_close(frames, reference[b, : frames.shape[0]], rtol=FP16_RTOL, atol=FP16_ATOL)
        assert frames.abs().max() > 0.1  # not a zero dump
    # a wrong layer order or a shifted frame would be far off
    first = torch.from_numpy(np.array(cached.frames(batch.utt_ids[0]))).float()
    assert (first[:, 0] - reference[0, : first.shape[0], 1]).abs().max() > 1e-2


def _round_outputs_to_float16(monkeypatch) -> None:
    """The uncached path with the cache's storage precision: every hidden state through float16."""
    forward = Upstream.forward

    def rounded(self, wavs, wav_lens=None):
        out = forward(self, wavs, wav_lens)
        out.hidden_states = [h.half().float() for h in out.hidden_states]
        return out

    monkeypatch.setattr(Upstream, "forward", rounded)


@pytest.mark.parametrize("task", ["ks", "pr"])  # a mean-pooled head, a CTC head
def test_cached_and_uncached_training_reach_the_same_head_weights(
    task, task_data, upstream, tmp_path, monkeypatch
):
    conf = config(max_steps=4)
    plain = train_downstream(task, upstream, task_data[task], tmp_path / "plain", conf)
    cached = train_downstream(
        task, upstream, task_data[task], tmp_path / "cached", replace(conf, feature_cache=str(tmp_path / "c"))
    )
    assert len(_entries(tmp_path / "c")) == 2  # train and dev, dumped once
    assert [s for s, _ in cached["dev_curve"]] == [s for s, _ in plain["dev_curve"]] == [2, 4]
    a, b = _weights(tmp_path / "plain", 4), _weights(tmp_path / "cached", 4)
    assert set(a) == set(b) and any(k.startswith("head.") for k in a)
    # four Adam updates of size ~lr = 1e-2 from float16-rounded inputs: within 2e-4 of the plain path
    # (measured 2e-5 for ks, 4e-5 for pr on weights of magnitude 0.3)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=2e-4)
    # the uncached path given float16-rounded features trains the same weights up to float32 noise
    _round_outputs_to_float16(monkeypatch)
    train_downstream(task, upstream, task_data[task], tmp_path / "rounded", conf)
    r = _weights(tmp_path / "rounded", 4)
    # measured 3e-6 to 2.1e-5 depending on the head's seed: float32 noise of two batchings flips a
    # few float16 roundings, and Adam turns a tiny gradient's change into up to an lr-sized step
    for key in a:
        torch.testing.assert_close(b[key], r[key], rtol=0, atol=1e-4)
    assert max((a[k] - r[k]).abs().max() for k in a) > 0  # the check above can tell the two apart


def test_evaluate_scores_from_the_cache_too(task_data, upstream, tmp_path):
    conf = replace(config(max_steps=2), feature_cache=str(tmp_path / "c"))
    train_downstream("ks", upstream, task_data["ks"], tmp_path / "exp", conf)
    assert len(_entries(tmp_path / "c")) == 2
    cached = evaluate_downstream(tmp_path / "exp")
    assert len(_entries(tmp_path / "c")) == 3  # the test split's entry
    assert str(tmp_path / "c") in (tmp_path / "exp" / "downstream.yaml").read_text()  # recorded absolute
    assert 0.0 <= cached["value"] <= 1.0


# ---------------------------------------------------------------- never reused with other weights or data


def test_a_cache_of_other_weights_is_never_reused(task_data, tmp_path, caplog):
    split = task_data["ks"] / "train"
    path = _save_upstream(tmp_path / "up", seed=1)
    first = _cache(tmp_path / "c", path).split(split)
    utt = next(iter(first.index))
    # the same path, rewritten with other weights (same files, same sizes)
    _save_upstream(tmp_path / "up2", seed=2)
    shutil.rmtree(path)
    shutil.copytree(tmp_path / "up2", path)
    with caplog.at_level(logging.INFO, logger=fc.__name__):
        second = _cache(tmp_path / "c", path).split(split)
    assert second.path != first.path and len(_entries(tmp_path / "c")) == 2
    assert f"entry {first.path.name} of {path} was made with other weights" in caplog.text
    assert not np.allclose(np.array(first.frames(utt)), np.array(second.frames(utt)))
    # the same weights under another name share the entry (content, not path)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=fc.__name__):
        third = _cache(tmp_path / "c", tmp_path / "up2").split(split)
    assert third.path == second.path and "reusing" in caplog.text


def _copy_split(src: Path, dst: Path) -> Path:
    """A split whose audio files are its own (so the test may rewrite them)."""
    dst.mkdir(parents=True)
    for name in ("utt2spk", "text", "utt2dur", "spk2utt"):
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    wavs = {utt: shutil.copy(path, dst / f"{utt}.wav") for utt, path in read_table(src / "wav.scp").items()}
    write_table(dst / "wav.scp", wavs)
    return dst


def test_a_cache_of_other_data_is_never_reused(task_data, upstream, tmp_path, caplog):
    split = _copy_split(task_data["ks"] / "train", tmp_path / "data" / "train")
    cache = _cache(tmp_path / "c", upstream)
    first = cache.split(split)
    # one audio file rewritten in place, with the same length (same size on disk)
    utt, path = next(iter(read_table(split / "wav.scp").items()))
    seconds = float(read_table(split / "utt2dur")[utt])
    size = os.path.getsize(path)
    write_tone(path, seconds, freq=911.0)
    assert os.path.getsize(path) == size
    with caplog.at_level(logging.INFO, logger=fc.__name__):
        second = _cache(tmp_path / "c", upstream).split(split)
    assert second.path != first.path
    assert f"was made from other data (utterance '{utt}': its audio file changed" in caplog.text
    assert not np.allclose(np.array(first.frames(utt)), np.array(second.frames(utt)))
    # an utterance fewer: another entry again
    wavs = read_table(split / "wav.scp")
    gone = sorted(wavs)[-1]
    for name in ("wav.scp", "utt2spk", "text", "utt2dur"):
        table = read_table(split / name)
        table.pop(gone)
        write_table(split / name, table)
    (split / "spk2utt").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=fc.__name__):
        third = _cache(tmp_path / "c", upstream).split(split)
    assert third.path not in (first.path, second.path) and gone not in third
    assert f"utterance '{gone}' is gone" in caplog.text


def _rewrite_keeping_mtime(path: str, freq: float) -> None:
    """Other audio of the same size written into the same file (same inode), then its old mtime
    set back: what `cp -p`, `rsync -t --inplace` or `touch -r` leave behind."""
    before = os.stat(path)
    other = write_tone(Path(path).with_suffix(".other.wav"), soundfile.info(path).duration, freq=freq)
    data = Path(other).read_bytes()
    os.unlink(other)
    assert len(data) == before.st_size and data != Path(path).read_bytes()
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert after.st_ino == before.st_ino


def test_audio_rewritten_with_its_old_mtime_is_not_reused(task_data, upstream, tmp_path, caplog):
    split = _copy_split(task_data["ks"] / "train", tmp_path / "data" / "train")
    first = _cache(tmp_path / "c", upstream).split(split)
    utt, path = next(iter(read_table(split / "wav.scp").items()))
    _rewrite_keeping_mtime(path, freq=911.0)
    with caplog.at_level(logging.INFO, logger=fc.__name__):
        second = _cache(tmp_path / "c", upstream).split(split)
    assert second.path != first.path  # the old code's key (size, mtime) reused the stale features
    assert f"(utterance '{utt}': its audio file changed ({path}: ctime)" in caplog.text
    assert not np.allclose(np.array(first.frames(utt)), np.array(second.frames(utt)))
    # a file replaced by another one (tar -x, rsync without --inplace): a new inode, its old mtime
    replacement = Path(path).with_suffix(".new.wav")
    shutil.copy2(path, replacement)
    os.utime(replacement, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns))
    old_inode = os.stat(path).st_ino
    os.replace(replacement, path)
    assert os.stat(path).st_ino != old_inode
    third = _cache(tmp_path / "c", upstream).split(split)
    assert third.path not in (first.path, second.path)


def test_an_entry_of_the_old_format_is_recomputed_once_and_says_why(task_data, upstream, tmp_path, caplog):
    """An entry written before checksums (format 1: three numbers per utterance in its index, no
    ctime or inode in its inputs) lies under another key: computed again, with a log line."""
    split = task_data["ks"] / "train"
    cached = _cache(tmp_path / "c", upstream).split(split)
    old = cached.path.with_name("0" * 24)
    shutil.copytree(cached.path, old)
    shutil.rmtree(cached.path)
    meta = json.loads((old / "meta.json").read_text())
    # an older speechssl hashed the upstream otherwise too: not "made with other weights"
    upstream_meta = {**meta["upstream"], "fingerprint": "f" * 32}
    (old / "meta.json").write_text(json.dumps({**meta, "format_version": 1, "upstream": upstream_meta}))
    index = json.loads((old / "index.json").read_text())
    (old / "index.json").write_text(json.dumps({utt: row[:3] for utt, row in index.items()}))
    rows = json.loads((old / "inputs.json").read_text())
    (old / "inputs.json").write_text(json.dumps([row[:6] for row in rows]))
    with caplog.at_level(logging.INFO, logger=fc.__name__):
        again = _cache(tmp_path / "c", upstream).split(split)
    assert again.path == cached.path and f"entry {old.name} of this split was made by an older" in caplog.text
    assert open_entry(old)[1] == f"{old / 'meta.json'} has format 1, expected {fc.FORMAT_VERSION}"


# ---------------------------------------------------------------- torn, damaged, concurrent


# a fresh interpreter per writer: a forked child inherits the locks other threads of the test process
# hold (progress bars' monitor threads...) and deadlocked in a full-suite run
CONTEXT = multiprocessing.get_context("spawn")


def _fork(target, *args) -> multiprocessing.Process:
    proc = CONTEXT.Process(target=target, args=args)
    proc.start()
    return proc


def _dump_and_die(root: Path, upstream_path: Path, split: Path) -> None:
    """A dump killed (SIGKILL) after its second utterance was written."""
    written = []
    write = fc._ShardWriter.write

    def write_then_die(self, utt, block):
        write(self, utt, block)
        written.append(utt)
        if len(written) == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    fc._ShardWriter.write = write_then_die  # type: ignore[method-assign]
    _cache(root, upstream_path).split(split)


def test_a_torn_dump_is_never_read(task_data, upstream, tmp_path, caplog):
    split = task_data["ks"] / "train"
    root = tmp_path / "c"
    root.mkdir()
    proc = _fork(_dump_and_die, root, upstream, split)
    proc.join(600)  # generous: a loaded 2-core machine is slow, and a hang still fails below
    assert proc.exitcode == -signal.SIGKILL
    assert _entries(root) == []  # only the killed writer's temp dir
    temps = [p for p in root.iterdir() if ".tmp" in p.name]
    assert len(temps) == 1 and any(temps[0].glob("shard_*.f16"))
    key = temps[0].name[1:].split(".")[0]
    assert open_entry(root / key) == (None, None)
    with caplog.at_level(logging.INFO, logger=fc.__name__):
        cached = _cache(root, upstream).split(split)
    assert "removed 1 unfinished dump(s)" in caplog.text
    assert cached.path.name == key and not any(".tmp" in p.name for p in root.iterdir())
    assert len(cached.index) == len(read_table(split / "wav.scp"))


def test_a_damaged_entry_is_never_read(task_data, upstream, tmp_path, caplog):
    split = task_data["ks"] / "train"
    cached = _cache(tmp_path / "c", upstream).split(split)
    shard = cached.path / cached.meta["shards"][0]["file"]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 2)
    entry, problem = open_entry(cached.path)
    assert entry is None and f"{shard} holds" in problem
    with caplog.at_level(logging.INFO, logger=fc.__name__):
        again = _cache(tmp_path / "c", upstream).split(split)
    assert "recomputing" in caplog.text and again.path == cached.path
    assert open_entry(again.path)[1] is None


def test_damage_that_keeps_the_sizes_stops_the_run_when_read(task_data, upstream, tmp_path):
    """40 kB of a shard overwritten with 0xff (float16 NaN): the sizes agree, the checksum not."""
    conf = config(max_steps=2, feature_cache=str(tmp_path / "c"))
    train_downstream("ks", upstream, task_data["ks"], tmp_path / "a", conf)
    (path,) = [
        tmp_path / "c" / key
        for key in _entries(tmp_path / "c")
        if json.loads((tmp_path / "c" / key / "meta.json").read_text())["data"]["split_dir"].endswith("train")
    ]
    cached, problem = open_entry(path)
    assert problem is None
    # 40 kB from the shard's 10th byte on, then a float16 NaN in every utterance's block but the
    # last one's (so that the few batches of a 2-step run surely read a damaged one)
    frame_bytes = cached.num_hidden * cached.hidden_dim * 2
    order = sorted(cached.index, key=lambda utt: cached.index[utt][1])
    damaged, intact = order[0], order[-1]
    shard = path / cached.meta["shards"][0]["file"]
    size = shard.stat().st_size
    assert cached.index[intact][1] * frame_bytes > 40_010
    with open(shard, "r+b") as f:
        f.seek(10)
        f.write(b"\xff" * 40_000)
        for utt in order[:-1]:
            f.seek(cached.index[utt][1] * frame_bytes)
            f.write(b"\xff\xff")
    assert shard.stat().st_size == size
    reopened, problem = open_entry(path)  # its files still agree with its meta: opened
    assert problem is None
    assert np.isfinite(np.array(reopened.frames(intact))).all()
    entry = re.escape(str(path))
    message = rf"feature cache entry {entry} is damaged: utterance '%s' .*delete {entry} and run again"
    with pytest.raises(FeatureCacheError, match=message % re.escape(damaged)):
        reopened.frames(damaged)
    # a training run stops at the read (never trains on the NaNs), with that one line
    with pytest.raises(FeatureCacheError, match=message % "[^']+") as err:
        train_downstream("ks", upstream, task_data["ks"], tmp_path / "b", conf)
    assert "\n" not in str(err.value)
    # deleting the entry, as the message says, recomputes it
    shutil.rmtree(path)
    train_downstream("ks", upstream, task_data["ks"], tmp_path / "c2", conf)
    again, problem = open_entry(path)
    assert problem is None and np.isfinite(np.array(again.frames(damaged))).all()


def test_a_damaged_entry_read_in_a_loader_worker_still_fails_in_one_line():
    """torch re-raises a worker's exception as its type with the worker's traceback in the message
    (`ExceptionWrapper.reraise`, as a DataLoader with num_workers > 0 does): one line remains."""
    from torch._utils import ExceptionWrapper

    try:
        raise FeatureCacheError("feature cache entry /c/k is damaged: utterance 'u1'")
    except FeatureCacheError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(FeatureCacheError) as err:
        wrapped.reraise()
    assert str(err.value) == "feature cache entry /c/k is damaged: utterance 'u1'"


def _write_and_report(root: Path, upstream_path: Path, split: Path, report: Path, start) -> None:
    """One of two concurrent writers of one entry: both start together, each dump is slowed down
    (0.05 s per utterance), so the second finds the first one writing."""
    dumps = []
    dump = FeatureCache._dump

    def slow_dump(self, *args):
        dumps.append(1)
        write = fc._ShardWriter.write

        def slow_write(w, utt, block):
            import time

            time.sleep(0.05)
            write(w, utt, block)

        fc._ShardWriter.write = slow_write  # type: ignore[method-assign]
        dump(self, *args)

    FeatureCache._dump = slow_dump  # type: ignore[method-assign]
    cache = _cache(root, upstream_path)
    start.wait()
    cached = cache.split(split)
    total = float(sum(np.array(cached.frames(u), dtype=np.float64).sum() for u in sorted(cached.index)))
    report.write_text(json.dumps({"dumps": len(dumps), "path": str(cached.path), "sum": total}))


def test_two_writers_of_one_entry_do_not_corrupt_it(task_data, upstream, tmp_path):
    split = task_data["ks"] / "train"
    root = tmp_path / "c"
    root.mkdir()
    start = CONTEXT.Barrier(2)
    procs = [
        _fork(_write_and_report, root, upstream, split, tmp_path / f"r{i}.json", start) for i in range(2)
    ]
    for proc in procs:
        proc.join(600)
        assert proc.exitcode == 0
    reports = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(2)]
    assert sum(r["dumps"] for r in reports) == 1  # the second waited for the first, then read its entry
    assert reports[0]["path"] == reports[1]["path"] and reports[0]["sum"] == reports[1]["sum"]
    assert len(_entries(root)) == 1 and not [
        p for p in root.iterdir() if p.name.startswith(".") and ".tmp" in p.name
    ]
    assert open_entry(Path(reports[0]["path"]))[1] is None


# ---------------------------------------------------------------- resume, crops, bypass, the dir


def test_a_resumed_cached_run_equals_an_uninterrupted_one(task_data, upstream, tmp_path):
    conf = replace(config(max_steps=6), feature_cache=str(tmp_path / "c"))
    train_downstream("ks", upstream, task_data["ks"], tmp_path / "through", conf)
    train_downstream("ks", upstream, task_data["ks"], tmp_path / "split", conf, max_steps=2)
    train_downstream("ks", upstream, task_data["ks"], tmp_path / "split", conf, max_steps=6, resume=True)
    for step in (4, 6):
        a, b = _weights(tmp_path / "through", step), _weights(tmp_path / "split", step)
        assert all(torch.equal(a[k], b[k]) for k in a)
    # and a resume may name another cache dir (the features are the same in any)
    other = replace(conf, feature_cache=str(tmp_path / "c2"))
    train_downstream("ks", upstream, task_data["ks"], tmp_path / "split", other, max_steps=8, resume=True)
    assert len(_entries(tmp_path / "c2")) == 2


def test_a_crop_takes_the_frames_of_the_same_window(task_data, upstream, tmp_path):
    conf = config(max_seconds=0.3)
    task = build_task("sid", task_data["sid"], tmp_path / "exp", conf)
    up = prepare_upstream(upstream, conf)
    cached = _cache(tmp_path / "c", upstream).split(task_data["sid"] / "train")
    loader = task.train_loader(conf.batching(), seed=conf.seed)
    audio = loader.dataset
    frames_of = lambda seconds: crop_frame_count(up, seconds)  # noqa: E731
    data = cached_loader(loader, cached, frames_of).dataset
    count = frames_of(0.3)
    with torch.no_grad():
        assert count == int(up(torch.zeros(1, 4800), torch.tensor([4800])).lengths[0])
    cropped = 0
    for i in range(len(audio)):
        item, plain = data[i], audio[i]
        offset = audio.crop_offset(i)
        whole = torch.from_numpy(np.array(cached.frames(item["utt_id"])))
        assert item["utt_id"] == plain["utt_id"] and torch.equal(item["label"], plain["label"])
        if offset is None:
            assert torch.equal(item["wav"], whole)
            continue
        cropped += 1
        first = min(round(offset * 16000 / 320), whole.shape[0] - count)
        assert torch.equal(item["wav"], whole[first : first + count])
        with torch.no_grad():  # as many frames as the uncached path's crop gives
            n = len(plain["wav"])
            assert int(up(plain["wav"][None], torch.tensor([n])).lengths[0]) == count
    assert cropped > 0


@pytest.mark.parametrize("case", ["fbank_global_cmvn", "bitfit"])
def test_tuned_upstreams_and_global_cmvn_bypass_the_cache(case, task_data, upstream, tmp_path, caplog):
    from speechssl.tuning import TuningConfig

    conf = config(max_steps=2, feature_cache=str(tmp_path / "c"))
    spec: str | Path = case
    if case == "bitfit":
        spec, conf = upstream, replace(conf, tuning=TuningConfig(method="bitfit"))
    with caplog.at_level(logging.INFO):
        train_downstream("ks", spec, task_data["ks"], tmp_path / "exp", conf)
    assert f"feature cache {tmp_path / 'c'} not used: " in caplog.text
    assert not (tmp_path / "c").exists() or _entries(tmp_path / "c") == []


def test_the_cache_dir_follows_the_output_rule(task_data, tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="notes already holds files"):
        train_downstream(
            "ks", "fbank", task_data["ks"], tmp_path / "exp", config(max_steps=2, feature_cache=str(foreign))
        )
    assert not (tmp_path / "exp").exists() and (foreign / "mine.txt").read_text() == "x"
    # fbank (no weights) caches as well; the dir gets its marker, and a second task reuses the entries
    conf = config(max_steps=2, feature_cache=str(tmp_path / "c"))
    train_downstream("ks", "fbank", task_data["ks"], tmp_path / "a", conf)
    assert read_marker(tmp_path / "c") == CACHE_COMMAND
    before = _entries(tmp_path / "c")
    train_downstream(
        "ks", "fbank", task_data["ks"], tmp_path / "b", replace(conf, lr=1e-3, head=HeadConfig(hidden_dim=4))
    )
    assert _entries(tmp_path / "c") == before


def test_a_cache_dir_refusal_names_the_cache_option_not_out(task_data, tmp_path, capsys):
    """The cache dir is no --out: its refusal names --feature-cache (the recipe's --feature_cache,
    downstream.yaml's feature_cache), and --overwrite, which changes nothing for it, is not offered."""
    from speechssl.testing.cli import downstream_train

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("x")
    for extra in ((), ("--overwrite",)):
        assert downstream_train(task_data["ks"], tmp_path / "exp", "--feature-cache", foreign, *extra) == 1
        err = capsys.readouterr().err
        assert f"feature cache {foreign} already holds files that are no feature cache (mine.txt)" in err
        assert "--feature-cache" in err and "--feature_cache" in err and "feature_cache" in err
        assert "--overwrite" not in err and "--out" not in err
    assert (foreign / "mine.txt").read_text() == "x" and sorted(os.listdir(foreign)) == ["mine.txt"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputExistsError, match="afile is a file, not a directory: .*--feature-cache"):
        fc.claim_cache_dir(tmp_path / "afile")
    with pytest.raises(OutputExistsError, match="is an input of this run.*--feature-cache"):
        fc.claim_cache_dir(task_data["ks"], inputs=(task_data["ks"],))


def test_a_cache_dir_and_an_experiment_dir_are_never_one(task_data, tmp_path):
    conf = config(max_steps=2)
    train_downstream("ks", "fbank", task_data["ks"], tmp_path / "exp", conf)
    # an experiment dir named as the cache
    with pytest.raises(OutputExistsError, match=r"exp is an experiment dir of `speechssl downstream train`"):
        train_downstream(
            "ks", "fbank", task_data["ks"], tmp_path / "b", replace(conf, feature_cache=str(tmp_path / "exp"))
        )
    # ... or an existing dir inside one
    (tmp_path / "exp" / "mine").mkdir()
    with pytest.raises(OutputExistsError, match=r"is inside the experiment dir .*exp"):
        fc.claim_cache_dir(tmp_path / "exp" / "mine")
    # a cache dir named as the experiment, with or without --overwrite
    train_downstream(
        "ks", "fbank", task_data["ks"], tmp_path / "a", replace(conf, feature_cache=str(tmp_path / "c"))
    )
    before = sorted(os.listdir(tmp_path / "c"))
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match=r"--out \S+/c (is a feature cache|already holds files)"):
            train_downstream("ks", "fbank", task_data["ks"], tmp_path / "c", conf, overwrite=overwrite)
    assert sorted(os.listdir(tmp_path / "c")) == before and read_marker(tmp_path / "c") == CACHE_COMMAND


def test_cli_feature_cache_option(task_data, tmp_path, capsys):
    from speechssl.testing.cli import downstream_train

    args = (
        "--feature-cache",
        tmp_path / "c",
        "--max-steps",
        "2",
        "--set",
        "eval_every=2",
        "--set",
        "patience=null",
    )
    assert downstream_train(task_data["ks"], tmp_path / "exp", *args) == 0
    assert len(_entries(tmp_path / "c")) == 2 and read_marker(tmp_path / "c") == CACHE_COMMAND
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x").write_text("x")
    assert downstream_train(task_data["ks"], tmp_path / "exp2", "--feature-cache", tmp_path / "foreign") == 1
    assert "foreign already holds files" in capsys.readouterr().err


def test_upstreams_the_key_cannot_fingerprint_bypass_the_cache():
    """An ONNX graph's weights are no torch tensors and a tokens dir's BPE model is no parameter: the
    content hash of the key would not change when they do, so such upstreams are never cached."""
    from speechssl.downstream import DownstreamConfig
    from speechssl.downstream.feature_cache import bypass_reason
    from speechssl.interop.graph_upstream import OnnxUpstream
    from speechssl.interop.upstream import load_upstream
    from speechssl.models.token_upstream import TokenUpstream

    config = DownstreamConfig()
    for cls in (OnnxUpstream, TokenUpstream):
        assert cls.feature_cache_bypass
        stub = type("Stub", (), {"feature_cache_bypass": cls.feature_cache_bypass})()
        assert bypass_reason("x", stub, config) == cls.feature_cache_bypass
    assert bypass_reason("fbank", load_upstream("fbank"), config) is None
