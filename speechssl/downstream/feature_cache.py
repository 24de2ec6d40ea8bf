"""Cached upstream features: a frozen upstream runs once per split, and every head, task and
learning rate of a SUPERB-style sweep trains from what it wrote.

A frozen upstream (tuning.method frozen, no CTC fine-tuning) gives the same hidden states for
an utterance in every update, so `speechssl downstream train --feature-cache DIR` dumps every
hidden layer of every utterance of a split once and trains the featurizer (weighted sum, ...)
and the head on the dump. Layout (DIR is a speechssl output: marker, never written over):

    DIR/.speechssl_output           marker: command name "downstream feature-cache", shared
    DIR/<key>/meta.json             what made the entry (upstream, data, shapes, shards)
    DIR/<key>/index.json            utt -> [shard, first frame, frames, crc32 of its bytes]
    DIR/<key>/inputs.json           per utterance: [id, audio path, start, end, bytes, mtime_ns,
                                    ctime_ns, inode]
    DIR/<key>/shard_<k>.f16         (frames, num_layers + 1, hidden_dim) float16, C order, raw:
                                    memory-mapped (np.memmap) by the training loaders

`key` hashes the upstream's fingerprint (class, every module's scalar settings and config, the
bytes of every parameter and buffer: the weights themselves, not a path's mtime, so a
checkpoint rewritten in place or a copy under another name is told apart or shared correctly)
and the split's fingerprint (per utterance: id, audio path, segment bounds, and the file's size,
mtime, ctime and inode: one stat per file, where hashing the audio would cost a read of the
whole corpus at every start). The mtime alone is not enough: `cp -p`, `rsync -t`, `tar -x` and
`touch -r` rewrite a file and set its old mtime back, but no tool sets the ctime (the kernel
stamps it on every write or rename) and a new file gets a new inode; a chmod or chown also moves
the ctime, so it recomputes an entry needlessly, never reuses a stale one. Other weights or
other data thus give another key: the entry is computed anew (the log names the entry of the
same upstream source or split it could not use, and why), and the old one stays until the user
removes it. Entries of format 1 (before checksums and ctime/inode) are under other keys: each is
recomputed once, the log saying it was made by an older speechssl.

Atomic and concurrent: an entry is written into a temp sibling (speechssl.io.atomic_directory)
and renamed into place whole, under a per-key lock (`DIR/.<key>.lock`, POSIX lockf: released by
the kernel when its holder dies), so a killed dump leaves only its temp dir (never read; removed
by the next writer of that key) and a second writer of the same key (a parallel recipe job, a
DDP rank) waits and then reads the first one's entry. An entry is checked (shard sizes against
its meta and index) when it is opened, and every utterance's bytes against the crc32 its index
recorded at dump time when a process first reads them (the main process once; data-loader workers,
which the trainer starts anew each epoch, again every epoch; a crop's first read reads its whole
utterance, for the check): damage that
keeps the files' sizes (a disk error, an overwritten block: float16 NaNs) stops the run with a
one-line FeatureCacheError naming the entry and the utterance; deleting the entry dir makes the
next run recompute it. A read-time check, not a check of the whole entry at open, because that
would read the whole dump (hundreds of GB for a large corpus) at every start.

What cached training sees, exactly:
- whole utterances, computed in eval mode as the frozen upstream runs during training; padded
  batches where padding leaves features unchanged (`pads_safely`), else one utterance per
  forward (a group-norm conv frontend normalises over the padding, so the uncached path's
  features of such an upstream depend on its batch; the cache's are the utterance's own);
- rounded to float16 (relative error <= 2^-11) and turned back to float32 for the featurizer;
- a training crop (`max_seconds`, ASV's `head.asv_max_seconds`) takes, from the whole
  utterance's frames, the n frames starting at the crop's first sample (frame
  round(offset * 16000 / downsample_rate), n = the upstream's frame count for the crop's
  samples), with the crop offset the uncached path draws (`AudioDataset`'s, same seed): the
  same window of audio, but each frame has seen the whole utterance as context, so cropped
  features are not bit-equal to those of the cropped audio.
Bypassed (a log line says why): tuned upstreams (their features change every update) and
`fbank_global_cmvn` (normalised with the experiment's own train-split statistics).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, is_dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from speechssl.data.audio import SAMPLE_RATE
from speechssl.data.batching import BatchingConfig, build_loader
from speechssl.data.datadir import DataDir
from speechssl.data.dataset import AudioDataset, collate_audio
from speechssl.downstream.tasks import check_batch_frames, min_input_samples
from speechssl.errors import OutputExistsError, SpeechSSLError
from speechssl.features.upstream_features import pads_safely
from speechssl.io import atomic_directory, atomic_write_json, is_temporary, temp_tag
from speechssl.models.upstream_api import UpstreamModel
from speechssl.outputs import FILES_RECORD, MARKER, check_output, is_experiment_dir, read_marker, write_marker

log = logging.getLogger(__name__)

CACHE_COMMAND = "downstream feature-cache"  # the marker of a cache dir
FORMAT_VERSION = 2  # 2: per-utterance crc32 in the index; ctime and inode in the data key
DTYPE = np.dtype("<f2")  # float16, little-endian
META, INDEX, INPUTS = "meta.json", "index.json", "inputs.json"
SHARD_BYTES = 1 << 30  # a new shard file after 1 GiB
PROGRESS_SECONDS = 5.0  # a dump logs its progress this often


class FeatureCacheError(SpeechSSLError):
    """The features cannot be cached (e.g. they exceed float16's range) or an entry is damaged."""

    def __init__(self, message: str) -> None:
        # raised in a data-loader worker, torch re-raises it as FeatureCacheError("Caught ...
        # Original Traceback ...: <message>"): keep the one line that says what happened
        tail = f"{type(self).__name__}: "
        if "Original Traceback" in message and tail in message:
            message = message.rsplit(tail, 1)[1].strip()
        super().__init__(message)


# ---------------------------------------------------------------- fingerprints


def _settings(module: torch.nn.Module) -> dict[str, str]:
    """A module's scalar settings and configs (cmvn mode, delta window, ModelConfig ...)."""
    simple = (bool, int, float, str, type(None), tuple)
    return {
        key: repr(value)
        for key, value in sorted(vars(module).items())
        if not key.startswith("_")
        and key != "training"
        and (isinstance(value, simple) or is_dataclass(value))
    }


def upstream_fingerprint(upstream: UpstreamModel) -> str:
    """What the upstream's features depend on, hashed: class, every module's settings, and the
    bytes of every parameter and buffer (persistent or not): an entry's key."""
    h = hashlib.sha256(f"{type(upstream).__module__}.{type(upstream).__qualname__}".encode())
    for name, module in upstream.named_modules():
        h.update(json.dumps([name, type(module).__qualname__, _settings(module)]).encode())
    h.update(weights_fingerprint(dict([*upstream.named_parameters(), *upstream.named_buffers()])).encode())
    return h.hexdigest()[:32]


def weights_fingerprint(tensors: dict[str, Tensor]) -> str:
    """The names, dtypes, shapes and bytes of `tensors` hashed: which weights these are, by
    content and not path. Without the modules' settings, so that a record of it (an experiment's
    upstream) survives a speechssl update that adds a setting."""
    h = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(json.dumps([name, str(flat.dtype), list(tensor.shape)]).encode())
        h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def split_inputs(split_dir: str | Path) -> list[list[Any]]:
    """[utt, audio path, start, end, bytes, mtime_ns, ctime_ns, inode] of every utterance of a
    data dir (ctime and inode: a rewrite that restores the mtime still changes the key); a file
    that cannot be stat'ed gets -1 (loading it names the problem)."""
    stats: dict[str, tuple[int, ...]] = {}
    rows = []
    for u in DataDir.load(split_dir).utterances():
        if u.path not in stats:
            try:
                st = os.stat(u.path)
                stats[u.path] = (int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns), int(st.st_ino))
            except OSError:
                stats[u.path] = (-1, -1, -1, -1)
        rows.append([u.utt_id, str(u.path), u.start, u.end, *stats[u.path]])
    return rows


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:32]


def entry_key(upstream_fp: str, data_fp: str) -> str:
    """The entry of (upstream, split): everything that decides the cached values."""
    settings = {"format": FORMAT_VERSION, "dtype": DTYPE.str, "sample_rate": SAMPLE_RATE}
    return _digest([settings, upstream_fp, data_fp])[:24]


def bypass_reason(upstream_spec: str, upstream: UpstreamModel | None, config: Any) -> str | None:
    """Why a run cannot train from cached features (None: it can). `config`: a DownstreamConfig."""
    if config.finetune is not None:
        return "CTC fine-tuning trains the upstream"
    if config.tuning.method != "frozen":
        return f"tuning.method {config.tuning.method} trains the upstream (its features change every update)"
    if upstream is not None and upstream.feature_cache_bypass:
        return upstream.feature_cache_bypass
    if upstream is not None and getattr(upstream, "needs_train_stats", False):
        return (
            f"upstream '{upstream_spec}' normalises with this experiment's own train-split statistics "
            "(EXP/task/fbank_cmvn.npz)"
        )
    return None


# ---------------------------------------------------------------- the cache dir


# the option as the user set it: the CLI flag, the recipe's option, the config key
CACHE_OPTION = "--feature-cache (superb.sh's --feature_cache, downstream.yaml's feature_cache)"


def _cache_dir_problem(root: Path, inputs: tuple[str | Path, ...]) -> str | None:
    """Why `root` cannot be a cache dir (None: it can). The output rule of speechssl.outputs, in
    words of the cache option: `check_output`'s own messages name --out and offer --overwrite,
    which the cache dir has not got (no run ever replaces what another command wrote there)."""
    target = root.resolve()
    for source in inputs:
        source_path = Path(source).resolve()
        if source_path == target or target in source_path.parents:
            what = "is" if source_path == target else "contains"
            return f"{what} an input of this run ({source})"
    for parent in root.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                return f"cannot be made: {parent} is a file"
            break
    for candidate in (root.absolute(), target):  # new or not: an experiment holds no cache
        for parent in candidate.parents:
            if is_experiment_dir(parent, strict=True):
                return f"is inside the experiment dir {parent}"
    if not root.exists() and not root.is_symlink():
        return None
    if not root.is_dir():
        return "is a file, not a directory"
    if read_marker(root) == CACHE_COMMAND:
        return None  # an earlier cache (experiment dirs never carry this marker)
    for source in inputs:  # an input's files are never written over
        if Path(source).is_dir() and Path(source).resolve() in target.parents:
            return f"already exists inside {source} (an input of this run)"
    if is_experiment_dir(root):
        marker = read_marker(root)
        return f"is an experiment dir{f' of `speechssl {marker}`' if marker else ''}"
    contents = sorted(
        p.name for p in root.iterdir() if p.name not in (MARKER, FILES_RECORD) and not is_temporary(p.name)
    )
    if contents:
        shown = ", ".join(contents[:5]) + (f" and {len(contents) - 5} more" if len(contents) > 5 else "")
        return f"already holds files that are no feature cache ({shown})"
    return None


def claim_cache_dir(root: str | Path, *, inputs: tuple[str | Path, ...] = ()) -> Path:
    """The output rule for a cache dir (new, empty, or a feature cache already), then its marker.
    A refusal names the cache option and never suggests --overwrite: that flag is about --out."""
    root = Path(root)
    problem = _cache_dir_problem(root, inputs)
    if problem is not None:
        raise OutputExistsError(
            f"feature cache {root} {problem}: name a new or empty dir, or an earlier feature cache, "
            f"in {CACHE_OPTION}"
        )
    root = check_output(root, CACHE_COMMAND, inputs=inputs)  # the rule itself: refuses nothing more
    root.mkdir(parents=True, exist_ok=True)
    write_marker(root, CACHE_COMMAND, shared=True)  # no other command writes over or into it
    return root


@contextmanager
def key_lock(root: Path, key: str) -> Iterator[None]:
    """Exclusive, blocking lock of one entry (`root/.<key>.lock`, lockf), as ExperimentLock: the
    file is removed on release, so a waiter checks it still locks the file the path names."""
    path = root / f".{key}.lock"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.info("feature cache: %s is being written by another run: waiting for it", root / key)
            fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _remove_unfinished(root: Path, key: str) -> None:
    """Temp dirs of earlier writers of `key` (killed dumps). Called under the key's lock, so no
    live writer of this key owns one (whatever host it runs on)."""
    gone = [p for p in root.iterdir() if p.name.startswith(f".{key}.") and ".tmp" in p.name]
    for path in gone:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    if gone:
        log.warning("feature cache: removed %d unfinished dump(s) of %s (killed runs)", len(gone), root / key)


# ---------------------------------------------------------------- one entry


class CachedSplit:
    """A finished entry: utt -> its (frames, num_hidden, hidden_dim) float16 memmap view, its
    bytes checked against the index's crc32 the first time this process reads them."""

    def __init__(self, path: Path, meta: dict[str, Any], index: dict[str, list[int]]) -> None:
        self.path, self.meta, self.index = path, meta, index
        self.num_hidden, self.hidden_dim = int(meta["num_hidden"]), int(meta["hidden_dim"])
        self.downsample_rate = int(meta["downsample_rate"])
        self._maps: dict[int, np.memmap] = {}
        self._checked: set[str] = set()

    def __contains__(self, utt: str) -> bool:
        return utt in self.index

    def frames(self, utt: str) -> np.ndarray:
        shard, first, count, crc = self.index[utt]
        info = self.meta["shards"][shard]
        if shard not in self._maps:
            self._maps[shard] = np.memmap(
                self.path / info["file"], dtype=DTYPE, mode="r",
                shape=(int(info["frames"]), self.num_hidden, self.hidden_dim),
            )  # fmt: skip
        block = self._maps[shard][first : first + count]  # (T, H, D), C-contiguous
        if utt not in self._checked:
            if zlib.crc32(block) != crc:
                raise FeatureCacheError(
                    f"feature cache entry {self.path} is damaged: utterance '{utt}' ({info['file']}, "
                    f"frames {first}..{first + count}) no longer matches the checksum written with it; "
                    f"delete {self.path} and run again (with --resume once EXP has a checkpoint): the "
                    "entry is computed again"
                )
            self._checked.add(utt)
        return block

    def __getstate__(self) -> dict[str, Any]:  # data-loader workers map (and check) the shards themselves
        return {**self.__dict__, "_maps": {}, "_checked": set()}


def open_entry(path: Path) -> tuple[CachedSplit | None, str | None]:
    """(the entry, None) when `path` is a finished entry whose files agree with its meta;
    (None, why not) for a damaged one; (None, None) when there is none."""
    if not path.is_dir():
        return None, None
    try:
        meta = json.loads((path / META).read_text())
        index = json.loads((path / INDEX).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            return None, f"{path / META} has format {meta.get('format_version')}, expected {FORMAT_VERSION}"
        frame_bytes = int(meta["num_hidden"]) * int(meta["hidden_dim"]) * DTYPE.itemsize
        used = [0] * len(meta["shards"])
        for utt, (shard, first, count, _crc) in index.items():
            if first != used[shard]:
                return None, f"{path / INDEX}: utterance '{utt}' starts at frame {first}, not {used[shard]}"
            used[shard] += count
        for k, info in enumerate(meta["shards"]):
            shard_path = path / info["file"]
            size = shard_path.stat().st_size if shard_path.is_file() else -1
            if used[k] != int(info["frames"]) or size != int(info["frames"]) * frame_bytes:
                return None, (
                    f"{shard_path} holds {size} bytes, its meta and index say "
                    f"{int(info['frames']) * frame_bytes} ({used[k]} indexed frames)"
                )
    except (FileNotFoundError, ValueError, KeyError, TypeError, IndexError) as err:
        # only definite evidence makes an entry damaged (and replaced); any other OSError (too many
        # open files, a network file system's hiccup) propagates: other runs may be reading the entry
        return None, f"{path} is damaged ({type(err).__name__}: {err})"
    return CachedSplit(path, meta, index), None


class _ShardWriter:
    """Appends utterances' (T, H, D) float16 frames to shard files of about SHARD_BYTES."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.shards: list[dict[str, Any]] = []
        self.index: dict[str, list[int]] = {}
        self._file: Any = None

    def write(self, utt: str, block: np.ndarray) -> None:
        if self._file is None or (self.shards[-1]["frames"] and self._bytes + block.nbytes > SHARD_BYTES):
            self._roll()
        shard = self.shards[-1]
        data = block.tobytes()
        self.index[utt] = [len(self.shards) - 1, shard["frames"], int(block.shape[0]), zlib.crc32(data)]
        self._file.write(data)
        shard["frames"] += int(block.shape[0])
        self._bytes += block.nbytes

    def _roll(self) -> None:
        self._close_file()
        name = f"shard_{len(self.shards):05d}.f16"
        self._file = open(self.directory / name, "wb")  # noqa: SIM115 (closed by _close_file)
        self._bytes = 0
        self.shards.append({"file": name, "frames": 0})

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def close(self) -> None:
        self._close_file()


def _describe_miss(root: Path, key: str, source: str, upstream_fp: str, split_dir: Path, rows: list) -> str:
    """Why no entry fits: an entry of the same upstream source or split that another fingerprint made."""
    here = str(split_dir.resolve())
    for meta_path in sorted(root.glob("*/" + META)):
        if meta_path.parent.name == key:
            continue
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        up, data = meta.get("upstream", {}), meta.get("data", {})
        if data.get("split_dir") != here:
            continue
        older = meta.get("format_version") != FORMAT_VERSION
        if older and (up.get("source") == source or up.get("fingerprint") == upstream_fp):
            return (  # its fingerprints are an older speechssl's too: not a sign of other weights
                f"entry {meta_path.parent.name} of this split was made by an older speechssl (format "
                f"{meta.get('format_version')}, no checksums): computed once more in format "
                f"{FORMAT_VERSION}; delete the old entry"
            )
        if up.get("source") == source and up.get("fingerprint") != upstream_fp:
            return f"entry {meta_path.parent.name} of {source} was made with other weights"
        if up.get("fingerprint") == upstream_fp:
            try:
                old = json.loads((meta_path.parent / INPUTS).read_text())
            except (OSError, ValueError):
                return f"entry {meta_path.parent.name} of this split was made from other data"
            return f"entry {meta_path.parent.name} was made from other data ({_data_change(old, rows)})"
    return "no entry of this upstream and data yet"


def _data_change(old: list, new: list) -> str:
    before = {row[0]: row for row in old}
    now = {row[0]: row for row in new}
    added, gone = sorted(set(now) - set(before)), sorted(set(before) - set(now))
    if added or gone:
        return f"utterance '{(added or gone)[0]}' is {'new' if added else 'gone'}"
    for utt, row in now.items():
        if row != before[utt]:
            old = before[utt]
            if row[1] != old[1] or row[2:4] != old[2:4]:
                what = "path" if row[1] != old[1] else "segment"
                return f"utterance '{utt}': its {what} changed ({row[1]})"
            stats = ("size", "mtime", "ctime", "inode")
            changed = [name for name, a, b in zip(stats, row[4:], old[4:], strict=False) if a != b]
            return f"utterance '{utt}': its audio file changed ({row[1]}: {', '.join(changed)})"
    return "the order of its utterances changed"


# ---------------------------------------------------------------- dumping and opening


class FeatureCache:
    """The entries of one upstream in a cache dir: `split(split_dir)` opens a split's entry,
    dumping it first when there is none (under its key's lock)."""

    def __init__(
        self,
        root: str | Path,
        upstream: UpstreamModel,
        source: str,
        *,
        batching: BatchingConfig,
        device: torch.device | str = "cpu",
        seed: int = 0,
    ) -> None:
        self.root = claim_cache_dir(root)  # the output rule: a new dir, an empty one or a cache
        self.upstream, self.source = upstream, str(source)
        self.batching, self.device, self.seed = batching, torch.device(device), seed
        self.fingerprint = upstream_fingerprint(upstream)
        self._opened: dict[str, CachedSplit] = {}

    def split(self, split_dir: str | Path) -> CachedSplit:
        split_dir = Path(split_dir)
        rows = split_inputs(split_dir)
        key = entry_key(self.fingerprint, _digest(rows))
        if key in self._opened:
            return self._opened[key]
        entry = self.root / key
        cached, _ = open_entry(entry)
        if cached is None:
            with key_lock(self.root, key):
                cached = self._make(entry, split_dir, rows)  # another run may have made it meanwhile
        else:
            log.info("feature cache: reusing %s for %s of %s", entry, split_dir, self.source)
        self._opened[key] = cached
        return cached

    def _make(self, entry: Path, split_dir: Path, rows: list) -> CachedSplit:
        """The entry, dumped first unless it exists now; holding its key's lock."""
        cached, problem = open_entry(entry)
        if cached is not None:
            log.info("feature cache: reusing %s (another run wrote it meanwhile)", entry)
            return cached
        key = entry.name
        if problem is not None:  # our own entry, damaged (a disk error, a hand edit): never read
            log.warning("feature cache: %s: recomputing", problem)
            stale = entry.with_name(f".{key}.{temp_tag()}.tmpdamaged")
            entry.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            why = _describe_miss(self.root, key, self.source, self.fingerprint, split_dir, rows)
            log.info("feature cache: computing %s for %s into %s (%s)", split_dir, self.source, entry, why)
        _remove_unfinished(self.root, key)
        self._dump(entry, split_dir, rows)
        cached, problem = open_entry(entry)
        if cached is None:
            raise FeatureCacheError(f"feature cache: the entry just written is damaged: {problem}")
        return cached

    @torch.no_grad()
    def _dump(self, entry: Path, split_dir: Path, rows: list) -> None:
        upstream = self.upstream.eval().to(self.device)
        dataset = AudioDataset(split_dir)  # whole utterances, no targets
        if len(dataset) != len(rows):
            raise FeatureCacheError(f"feature cache: {split_dir} has utterances that cannot be read")
        batched = pads_safely(upstream)
        batching = self.batching if batched else BatchingConfig(max_batch_seconds=1.0, max_batch_size=1)
        loader = build_loader(dataset, batching, train=False, seed=self.seed)
        need = min_input_samples(upstream)
        total_seconds = float(sum(dataset.full_durations))
        done, seconds, start = 0, 0.0, time.perf_counter()
        last_log = start
        with atomic_directory(entry) as tmp:
            writer = _ShardWriter(tmp)
            try:
                for batch in loader:
                    check_batch_frames(batch.utt_ids, batch.wav_lens, need, self.source)
                    out = upstream(batch.wavs.to(self.device), batch.wav_lens.to(self.device))
                    hidden = torch.stack(out.hidden_states, dim=2)  # (B, T, H, D)
                    for b, utt in enumerate(batch.utt_ids):
                        block = hidden[b, : int(out.lengths[b])].float().cpu().numpy()  # (T, H, D)
                        writer.write(utt, _float16(block, utt, self.source))
                    done += len(batch)
                    seconds += float(batch.wav_lens.sum()) / SAMPLE_RATE
                    now = time.perf_counter()
                    if now - last_log >= PROGRESS_SECONDS:
                        log.info(
                            "feature cache: %s: %d/%d utterances, %.0f/%.0f audio-s, %.1f audio-s/s",
                            split_dir, done, len(dataset), seconds, total_seconds, seconds / (now - start),
                        )  # fmt: skip
                        last_log = now
            finally:
                writer.close()
            elapsed = time.perf_counter() - start
            atomic_write_json(tmp / INDEX, writer.index)
            atomic_write_json(tmp / INPUTS, rows)
            meta = {
                "format_version": FORMAT_VERSION,
                "dtype": DTYPE.str,
                "num_hidden": upstream.num_layers + 1,
                "hidden_dim": upstream.hidden_dim,
                "downsample_rate": upstream.downsample_rate,
                "sample_rate": SAMPLE_RATE,
                "per_utterance": not batched,
                "upstream": {"source": self.source, "fingerprint": self.fingerprint},
                "data": {"split_dir": str(split_dir.resolve()), "fingerprint": _digest(rows),
                         "utterances": len(rows), "audio_seconds": seconds},
                "shards": writer.shards,
                "num_frames": sum(s["frames"] for s in writer.shards),
                "dump_seconds": elapsed,
            }  # fmt: skip
            atomic_write_json(tmp / META, meta)
        log.info(
            "feature cache: %s: %d utterances, %.0f audio-s in %.1f s (%.1f audio-s/s) -> %s",
            split_dir, done, seconds, elapsed, seconds / max(elapsed, 1e-9), entry,
        )  # fmt: skip


def _float16(block: np.ndarray, utt: str, source: str) -> np.ndarray:
    """`block` as float16; features outside its range (or not finite) are an error."""
    if not np.isfinite(block).all():
        raise FeatureCacheError(f"utterance '{utt}': upstream {source} gave NaN or infinite features")
    with np.errstate(over="ignore"):
        stored = np.ascontiguousarray(block, dtype=DTYPE)
    if not np.isfinite(stored).all():
        raise FeatureCacheError(
            f"utterance '{utt}': features of {source} exceed float16's range (max |x| = "
            f"{float(np.abs(block).max()):.4g}); train without the cache (feature_cache: null)"
        )
    return stored


# ---------------------------------------------------------------- training from the cache


@dataclass
class FeatureBatch:
    """Cached hidden states of a batch: the `Batch` of the cached path (same targets).
    features: (B, T, num_hidden, D) float16, zero-padded; lengths: (B,) valid frames."""

    utt_ids: list[str]
    features: Tensor
    lengths: Tensor
    targets: dict[str, Any] = field(default_factory=dict)
    target_lens: dict[str, Tensor] = field(default_factory=dict)
    downsample_rate: int = 1

    def __len__(self) -> int:
        return len(self.utt_ids)

    @property
    def wav_lens(self) -> Tensor:
        """Samples the frames stand for (the trainer's audio-seconds)."""
        return self.lengths * self.downsample_rate

    def hidden_states(self) -> list[Tensor]:
        """num_hidden tensors (B, T, D) in float32, as the upstream returns them."""
        return list(self.features.float().unbind(2))

    def _map(self, fn: Callable[[Tensor], Tensor]) -> FeatureBatch:
        def apply(x: Any) -> Any:
            return fn(x) if isinstance(x, Tensor) else x

        return FeatureBatch(
            self.utt_ids, fn(self.features), fn(self.lengths), {k: apply(v) for k, v in self.targets.items()},
            {k: fn(v) for k, v in self.target_lens.items()}, self.downsample_rate,
        )  # fmt: skip

    def to(self, device: torch.device | str, non_blocking: bool = False) -> FeatureBatch:
        return self._map(lambda x: x.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> FeatureBatch:
        return self._map(lambda x: x.pin_memory())


def collate_features(items: Sequence[dict[str, Any] | None], *, downsample_rate: int) -> FeatureBatch:
    """`collate_audio` with (T, H, D) frames where it pads waveforms: targets collate the same."""
    batch = collate_audio(items)
    return FeatureBatch(
        batch.utt_ids, batch.wavs, batch.wav_lens, batch.targets, batch.target_lens, downsample_rate
    )


@torch.no_grad()
def crop_frame_count(upstream: UpstreamModel, seconds: float) -> int:
    """Frames the upstream gives for a crop of `seconds` (the samples AudioDataset keeps)."""
    samples = round(seconds * SAMPLE_RATE)
    device = next((p.device for p in upstream.parameters()), torch.device("cpu"))
    out = upstream(torch.zeros(1, samples, device=device), torch.tensor([samples], device=device))
    return int(out.lengths[0])


class CachedFeatureDataset(Dataset):
    """A task's AudioDataset with its utterances' cached frames in place of their audio: same
    indices, durations and targets (what the samplers and the task read), the same crop offsets
    (`AudioDataset.crop_offset`)."""

    def __init__(
        self, dataset: AudioDataset, cache: CachedSplit, crop_frames: Callable[[float], int] | None = None
    ) -> None:
        if dataset.label_rates:  # frame-level targets would need the crop the audio path applies to them
            raise FeatureCacheError(
                f"feature cache {cache.path}: frame-level targets ({sorted(dataset.label_rates)}) are not "
                "cropped from cached features; train this task without feature_cache"
            )
        missing = [u for u in dataset.utt_ids() if u not in cache]
        if missing:
            raise FeatureCacheError(
                f"feature cache {cache.path} lacks utterance '{missing[0]}' of {dataset.data_dir}"
            )
        self.dataset, self.cache, self._crop_frames = dataset, cache, crop_frames
        self.durations, self.full_durations = dataset.durations, dataset.full_durations
        self._crop_count: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def utt_ids(self) -> list[str]:
        return self.dataset.utt_ids()

    def _crop(self, frames: np.ndarray, offset: float) -> np.ndarray:
        if self._crop_count is None:
            seconds = self.dataset.max_seconds
            assert seconds is not None and self._crop_frames is not None, "a crop needs crop_frames"
            self._crop_count = self._crop_frames(seconds)
        count = self._crop_count
        first = round(offset * SAMPLE_RATE / self.cache.downsample_rate)
        first = max(0, min(first, frames.shape[0] - count))
        return frames[first : first + count]

    def __getitem__(self, index: int) -> dict[str, Any]:
        data = self.dataset
        utt = data.utterances[index].utt_id
        frames = self.cache.frames(utt)  # (T, H, D) memmap view
        # the crop window the uncached path draws (AudioDataset's offset: seed, epoch, index)
        offset = data.crop_offset(index)
        if offset is not None:
            frames = self._crop(frames, offset)
        item: dict[str, Any] = {"utt_id": utt, "wav": torch.from_numpy(np.array(frames))}
        for name, table in data.targets.items():
            try:
                item[name] = data.target_transforms[name](table[utt])
            except ValueError as err:
                raise ValueError(f"utterance '{utt}': target '{name}': {err}") from None
        return item


def cached_loader(
    loader: DataLoader, cache: CachedSplit, crop_frames: Callable[[float], int] | None = None
) -> DataLoader:
    """`loader` (build_loader's or a task's) reading cached frames: the same batch sampler."""
    dataset = CachedFeatureDataset(loader.dataset, cache, crop_frames)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_sampler=loader.batch_sampler,
        collate_fn=partial(collate_features, downsample_rate=cache.downsample_rate),
        num_workers=loader.num_workers,
    )
