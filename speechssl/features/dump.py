"""Sharded feature dumping and reading (the layout of fairseq's simple_kmeans).

`dump_features` writes shard `rank` of `nshard` of a data dir as

    <out>/<rank>_<nshard>.npy    (frames, dim) float32/float16, every utterance concatenated
    <out>/<rank>_<nshard>.len    frames per utterance, one per line
    <out>/<rank>_<nshard>.ids    utterance ids, one per line, same order
    <out>/<rank>_<nshard>.json   what made it; written last

Each file is written to a temp name and renamed; the .json is the "finished"
marker, so a killed job leaves no marker and is redone (its temp files are
removed by the next run). The .json records a fingerprint of the inputs (per
utterance: audio path, segment, file size and mtime; the feature's settings,
including the upstream weights' fingerprint; the dtype) and checks of the
outputs (.npy byte size, sha256 of .len and .ids). A re-run skips a shard only
when all of these still match, and otherwise redoes it with a log line saying
why (which utterance changed, which file is truncated). `FeatureReader`
refuses a damaged shard with an error naming the file. Shards are contiguous
ranges of the C-sorted utterance ids, so N jobs can run at once into one dir.
Recordings longer than an extractor's `stream_samples` are read and computed
in chunks when the extractor can (`extract_stream`; MFCC), in bounded memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from speechssl.errors import SpeechSSLError
from speechssl.io import atomic_file, atomic_write_text, pid_alive, remove_stale_temporaries, temp_tag

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: input fingerprints and output checks in the .json
_SHARD_RE = re.compile(r"^(\d+)_(\d+)\.json$")
_SHARD_FILE_RE = re.compile(r"^\d+_\d+\.(npy|len|ids|json)$")
_OLD_RAW_TEMP_RE = re.compile(r"^\.\d+_\d+\.raw\.tmp(\d+)$")  # temp name of speechssl <= format 1


class DamagedShardError(SpeechSSLError, ValueError):
    """A feature shard whose files disagree with each other or with what was recorded when it was written."""


class NonFiniteFeaturesError(SpeechSSLError, ValueError):
    """Features holding NaN or infinite values (a broken upstream, or a float16 overflow)."""


class FeatureExtractor(Protocol):
    """What `dump_features` needs from a feature: MFCC, upstream layer, ..."""

    name: str  # recorded in the shard's json (e.g. "mfcc", "upstream:<src>:layer6")
    # Optionally also `settings: dict` (everything the output depends on, JSON-able: recorded in the
    # .json and compared on re-runs), and `stream_samples: int` with `extract_stream(read, num_samples)`
    # yielding (frames, feature_dim) blocks of one long recording (see MfccExtractor).
    feature_dim: int
    frame_rate: float  # output frames per second
    sample_rate: int  # audio is loaded at this rate

    def extract(self, wavs: list[torch.Tensor]) -> list[np.ndarray]:
        """(samples,) waveforms -> (frames, feature_dim) arrays, one per waveform."""
        ...


def shard_range(num_items: int, nshard: int, rank: int) -> tuple[int, int]:
    """[start, end) of shard `rank`: contiguous, sizes differ by at most one."""
    if nshard < 1:
        raise ValueError(f"nshard must be >= 1, found {nshard}")
    if not 0 <= rank < nshard:
        raise ValueError(f"rank must be in [0, {nshard - 1}], found {rank}")
    return num_items * rank // nshard, num_items * (rank + 1) // nshard


def shard_paths(out_dir: str | Path, rank: int, nshard: int) -> dict[str, Path]:
    out_dir = Path(out_dir)
    stem = f"{rank}_{nshard}"
    return {ext: out_dir / f"{stem}.{ext}" for ext in ("npy", "len", "ids", "json")}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _audio_fingerprint(utt) -> list:
    """[path, start, end, size, mtime_ns] of an utterance's audio: a file rewritten under the same
    id changes size or mtime. A missing file gets size -1 (load_audio names it when it is read)."""
    try:
        stat = os.stat(utt.path)
        size, mtime = int(stat.st_size), int(stat.st_mtime_ns)
    except OSError:
        size, mtime = -1, -1
    return [str(utt.path), utt.start, utt.end, size, mtime]


def _describe_change(utt: str, old: list, new: list) -> str:
    if old[0] != new[0]:
        return f"utterance '{utt}' now reads {new[0]} (was {old[0]})"
    if old[1:3] != new[1:3]:
        return f"utterance '{utt}': its segment is now {new[1]}-{new[2]} s (was {old[1]}-{old[2]} s)"
    if old[3] != new[3]:
        return f"utterance '{utt}': {new[0]} changed size ({old[3]} -> {new[3]} bytes)"
    return f"utterance '{utt}': {new[0]} was modified after the shard was written"


def _settings(extractor: FeatureExtractor) -> dict[str, Any]:
    return json.loads(json.dumps(getattr(extractor, "settings", {}), default=str))  # as the .json stores it


def _npy_problem(path: Path, shape: tuple[int, int], dtype: str) -> str | None:
    """Why the .npy at `path` is not a complete (shape) array of dtype, or None."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                found_shape, fortran, found_dtype = np.lib.format.read_array_header_1_0(f)
            else:
                found_shape, fortran, found_dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except (OSError, ValueError) as err:
        return f"{path} is not a readable .npy file ({err})"
    if tuple(found_shape) != shape or found_dtype != np.dtype(dtype) or fortran:
        return (
            f"{path} holds a {found_dtype} array of shape {tuple(found_shape)}, "
            f"its .len/.json say {dtype} {shape}"
        )
    expected = offset + math.prod(shape) * np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size != expected:
        what = "truncated" if size < expected else "longer than its header says"
        return f"{path} is {what} ({size} of {expected} bytes)"
    return None


def read_shard_meta(paths: dict[str, Path]) -> tuple[dict | None, str | None]:
    """(the .json of a finished shard, None) when its files agree with each other and with what was
    recorded when it was written; (meta or None, why not) otherwise. Costs a read of .len/.ids and
    of the .npy header, never of the features."""
    missing = [paths[k].name for k in ("npy", "len", "ids") if not paths[k].is_file()]
    try:
        meta = json.loads(paths["json"].read_text())
        if not isinstance(meta, dict) or not {"feature", "feature_dim", "num_frames"} <= set(meta):
            raise ValueError("not a shard description")
    except (OSError, ValueError) as err:
        return None, f"{paths['json']} is damaged ({err})"
    if missing:
        return meta, f"{', '.join(missing)} of {paths['json']} missing"
    for key in ("len", "ids"):
        recorded = meta.get(f"{key}_sha256")
        if recorded is not None and _sha256(paths[key]) != recorded:
            return meta, f"{paths[key]} was changed or damaged after it was written (its checksum differs)"
    text = paths["len"].read_text(errors="replace").split()
    bad = next((i for i, v in enumerate(text) if not v.isdigit()), None)
    if bad is not None:
        return meta, f"{paths['len']} line {bad + 1}: '{text[bad][:20]}' is not a frame count"
    lengths = [int(v) for v in text]
    ids = paths["ids"].read_text(errors="replace").split()
    num_utts = meta.get("num_utts", len(ids))
    if not len(ids) == len(lengths) == num_utts or sum(lengths) != meta["num_frames"]:
        return meta, (
            f"{paths['ids']} ({len(ids)} ids), "
            f"{paths['len']} ({len(lengths)} lengths, {sum(lengths)} frames) "
            f"and {paths['json']} ({num_utts} utterances, {meta['num_frames']} frames) disagree"
        )
    problem = _npy_problem(
        paths["npy"], (int(meta["num_frames"]), int(meta["feature_dim"])), meta.get("dtype", "float32")
    )
    return meta, problem


def _redo_reason(
    paths: dict[str, Path],
    utterances: list,
    fingerprints: list[list],
    extractor: FeatureExtractor,
    dtype: str,
) -> str | None:
    """Why the shard in `paths` cannot be reused for these inputs, or None when it can."""
    if not paths["json"].exists():
        return "not dumped yet"
    meta, problem = read_shard_meta(paths)
    if problem:
        return problem
    if meta.get("format_version", 1) < 2:
        return f"{paths['json']} was written by an older speechssl that recorded no input fingerprints"
    if (meta["feature"], meta["feature_dim"]) != (extractor.name, extractor.feature_dim):
        return f"it holds {meta['feature']} ({meta['feature_dim']} dims), not {extractor.name}"
    if meta.get("settings") != _settings(extractor):
        return f"it was made with other {extractor.name} settings ({meta.get('settings')})"
    if meta.get("dtype") != dtype:
        return f"it is stored as {meta.get('dtype')}, not {dtype}"
    ids = paths["ids"].read_text().split()
    utt_ids = [u.utt_id for u in utterances]
    if ids != utt_ids:
        gone, new = sorted(set(ids) - set(utt_ids)), sorted(set(utt_ids) - set(ids))
        detail = f"'{new[0]}' is new" if new else f"'{gone[0]}' is gone" if gone else "their order differs"
        return f"the data dir's utterances of this shard changed ({detail})"
    recorded = meta.get("inputs", [])
    changed = [i for i, fp in enumerate(fingerprints) if i >= len(recorded) or recorded[i] != fp]
    if changed:
        i = changed[0]
        more = f" (and {len(changed) - 1} more utterance(s))" if len(changed) > 1 else ""
        return _describe_change(utt_ids[i], recorded[i], fingerprints[i]) + more
    return None


def _remove_killed_temporaries(out_dir: Path) -> None:
    """Temp files of killed jobs (any shard: a pid that no longer runs) go; live writers' stay."""
    removed = remove_stale_temporaries(out_dir)
    for p in out_dir.iterdir():
        m = _OLD_RAW_TEMP_RE.match(p.name)
        if m and not pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        logger.info(
            "removed %d temp file(s) of killed jobs from %s: %s",
            len(removed),
            out_dir,
            ", ".join(p.name for p in removed[:5]),
        )


def is_feature_dump(path: str | Path) -> bool:
    """Whether `path` is a dir holding only feature shards (e.g. written before output markers)."""
    path = Path(path)
    if not path.is_dir():
        return False
    names = [p.name for p in path.iterdir() if not p.name.startswith(".")]
    return bool(names) and all(_SHARD_FILE_RE.match(n) for n in names)


def _write_npy_from_raw(raw: Path, dest: Path, shape: tuple[int, int], dtype: np.dtype) -> None:
    """Prefix streamed raw frames with an .npy header (atomic rename into `dest`)."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    with atomic_file(dest) as tmp, open(tmp, "wb") as out, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(out, header)
        shutil.copyfileobj(src, out, length=16 << 20)


def _checked(block: np.ndarray, utt: str, extractor: FeatureExtractor, dtype: np.dtype) -> np.ndarray:
    """`block` in the storage dtype; NaN/inf (from the extractor, or a float16 overflow) is refused,
    as it would poison k-means."""
    if not np.isfinite(block).all():
        frame = int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
        raise NonFiniteFeaturesError(
            f"utterance '{utt}': {extractor.name} gave NaN or infinite features (frame {frame}); "
            "nothing was written for this shard (check the model or audio they come from)"
        )
    with np.errstate(over="ignore"):
        stored = np.ascontiguousarray(block, dtype=dtype)
    if not np.isfinite(stored).all():
        frame = int(np.flatnonzero(~np.isfinite(stored).all(axis=1))[0])
        raise NonFiniteFeaturesError(
            f"utterance '{utt}': {extractor.name} features exceed the {dtype} range (frame {frame}); "
            "use --dtype float32"
        )
    return stored


def _stream_reader(utt, sample_rate: int):
    """(num_samples, read(a, b)) reading samples [a, b) of an utterance straight from its file, or
    None when the file is at another rate (it is then loaded and resampled whole)."""
    from speechssl.data.audio import audio_info, load_audio, segment_frames

    info = audio_info(utt.path, utt_id=utt.utt_id)
    if info.sample_rate != sample_rate:
        return None
    first, last = segment_frames(utt.start, utt.end, info, where=f"utterance '{utt.utt_id}' ({utt.path})")

    def read(a: int, b: int) -> torch.Tensor:
        # whole samples through load_audio's checks (channels, truncation, NaN), in seconds it rounds back
        return load_audio(
            utt.path,
            start=(first + a) / sample_rate,
            end=(first + b) / sample_rate,
            sample_rate=None,
            utt_id=utt.utt_id,
        )

    return last - first, read


def dump_features(
    data_dir: str | Path,
    extractor: FeatureExtractor,
    out_dir: str | Path,
    *,
    nshard: int = 1,
    rank: int = 0,
    dtype: str = "float32",
    batch_seconds: float = 60.0,
    progress: bool = True,
) -> Path:
    """Extract features of shard `rank`/`nshard` of `data_dir` into `out_dir`; returns the .npy path.

    `batch_seconds` bounds the padded audio per extractor call (matters for
    upstream models; MFCC is computed per utterance anyway). A finished shard
    whose recorded inputs and files still check out is left untouched; any other
    is redone, with a log line saying why.
    """
    from speechssl.data.audio import load_audio
    from speechssl.data.datadir import DataDir

    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be 'float32' or 'float16', found '{dtype}'")
    if batch_seconds <= 0:
        raise ValueError(f"batch_seconds must be positive, found {batch_seconds}")
    utterances = DataDir.load(data_dir).utterances()
    start, end = shard_range(len(utterances), nshard, rank)
    utterances = utterances[start:end]
    utt_ids = [u.utt_id for u in utterances]
    fingerprints = [_audio_fingerprint(u) for u in utterances]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_killed_temporaries(out_dir)
    paths = shard_paths(out_dir, rank, nshard)
    reason = _redo_reason(paths, utterances, fingerprints, extractor, dtype)
    if reason is None:
        logger.info("shard %d/%d of %s is already dumped in %s: skipping", rank, nshard, data_dir, out_dir)
        return paths["npy"]
    if paths["json"].exists():
        logger.warning("redoing shard %d/%d in %s: %s", rank, nshard, out_dir, reason)
    paths["json"].unlink(missing_ok=True)  # from here on the shard is unfinished

    np_dtype = np.dtype(dtype)
    raw = out_dir / f".{rank}_{nshard}.raw.{temp_tag()}.tmp"  # remove_stale_temporaries' pattern
    lengths: list[int] = []
    budget = int(batch_seconds * extractor.sample_rate)
    stream_samples = (
        getattr(extractor, "stream_samples", None) if hasattr(extractor, "extract_stream") else None
    )
    bar = tqdm(
        total=len(utterances),
        desc=f"{getattr(extractor, 'label', extractor.name)} shard {rank}/{nshard}",
        unit="utt",
        disable=not progress,
    )
    try:
        with open(raw, "wb") as sink:
            pending: list[tuple[str, torch.Tensor]] = []

            def write(utt: str, block: np.ndarray) -> None:
                if block.ndim != 2 or block.shape[1] != extractor.feature_dim:
                    raise ValueError(
                        f"utterance '{utt}': extractor returned shape {tuple(block.shape)},"
                        f" expected (frames, {extractor.feature_dim})"
                    )
                sink.write(_checked(block, utt, extractor, np_dtype).tobytes())

            def flush() -> None:
                try:
                    feats = extractor.extract([w for _, w in pending])
                except ValueError as err:  # find the utterance it is about, and name it
                    for utt, wav in pending:
                        try:
                            extractor.extract([wav])
                        except ValueError as single:
                            raise ValueError(f"utterance '{utt}': {single}") from None
                    raise ValueError(f"utterances {', '.join(u for u, _ in pending)}: {err}") from None
                for (utt, wav), f in zip(pending, feats, strict=True):
                    if f.ndim == 2 and f.shape[0] == 0:
                        raise ValueError(
                            f"utterance '{utt}': {wav.numel()} samples give no feature frame (too short)"
                        )
                    write(utt, f)
                    lengths.append(int(f.shape[0]))
                bar.update(len(pending))
                pending.clear()

            def stream(utt: str, num_samples: int, read) -> None:
                """One long recording, chunk by chunk, straight into the sink."""
                frames = 0
                try:
                    for block in extractor.extract_stream(read, num_samples):
                        write(utt, block)
                        frames += int(block.shape[0])
                except NonFiniteFeaturesError:
                    raise
                except ValueError as err:
                    raise ValueError(f"utterance '{utt}': {err}") from None
                lengths.append(frames)
                bar.update(1)

            longest = 0
            for utt in utterances:
                reader = None
                if stream_samples is not None:
                    reader = _stream_reader(utt, extractor.sample_rate)
                if reader is not None and reader[0] > stream_samples:
                    if pending:
                        flush()
                        longest = 0
                    stream(utt.utt_id, *reader)
                    continue
                # load_audio's errors name the utterance and file already
                wav = load_audio(
                    utt.path,
                    start=utt.start,
                    end=utt.end,
                    sample_rate=extractor.sample_rate,
                    utt_id=utt.utt_id,
                )  # (S,)
                n = wav.numel()
                if pending and (len(pending) + 1) * max(longest, n) > budget:
                    flush()
                    longest = 0
                pending.append((utt.utt_id, wav))
                longest = max(longest, n)
            if pending:
                flush()
        num_frames = sum(lengths)
        _write_npy_from_raw(raw, paths["npy"], (num_frames, extractor.feature_dim), np_dtype)
    finally:
        bar.close()
        raw.unlink(missing_ok=True)
    _finish_shard(
        paths,
        utt_ids,
        lengths,
        extractor.name,
        extractor.feature_dim,
        extractor.frame_rate,
        dtype,
        rank=rank,
        nshard=nshard,
        data_dir=str(data_dir),
        settings=_settings(extractor),
        inputs=fingerprints,
    )
    logger.info("wrote %d utterances, %d frames to %s", len(utt_ids), num_frames, paths["npy"])
    return paths["npy"]


def _finish_shard(
    paths: dict[str, Path],
    utt_ids: list[str],
    lengths: list[int],
    feature: str,
    feature_dim: int,
    frame_rate: float,
    dtype: str,
    *,
    rank: int,
    nshard: int,
    data_dir: str,
    settings: dict | None = None,
    inputs: list[list] | None = None,
) -> None:
    """Write .len and .ids, then the .json marker that makes the shard finished."""
    atomic_write_text(paths["len"], "".join(f"{n}\n" for n in lengths))
    atomic_write_text(paths["ids"], "".join(f"{u}\n" for u in utt_ids))
    meta = {
        "format_version": FORMAT_VERSION,
        "feature": feature,
        "feature_dim": feature_dim,
        "frame_rate": frame_rate,
        "dtype": dtype,
        "settings": settings or {},
        "num_utts": len(utt_ids),
        "num_frames": int(sum(lengths)),
        "rank": rank,
        "nshard": nshard,
        "data_dir": data_dir,
        "npy_bytes": paths["npy"].stat().st_size,
        "len_sha256": _sha256(paths["len"]),
        "ids_sha256": _sha256(paths["ids"]),
        "inputs": inputs or [],  # per utterance of .ids: [audio path, start, end, size, mtime_ns]
    }
    atomic_write_text(paths["json"], json.dumps(meta, indent=2) + "\n")


def write_shard(
    out_dir: str | Path,
    feats: dict[str, np.ndarray],
    *,
    feature: str,
    frame_rate: float,
    rank: int = 0,
    nshard: int = 1,
    dtype: str = "float32",
) -> Path:
    """Write in-memory features {utt: (frames, dim)} as one finished shard (tests, small jobs)."""
    if not feats:
        raise ValueError("no features to write")
    dims = {f.shape[1] for f in feats.values()}
    if len(dims) != 1:
        raise ValueError(f"features have different dims {sorted(dims)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = shard_paths(out_dir, rank, nshard)
    paths["json"].unlink(missing_ok=True)
    array = np.concatenate([np.asarray(f, dtype=dtype) for f in feats.values()])  # (frames, dim)
    with atomic_file(paths["npy"]) as tmp:
        np.save(tmp, array, allow_pickle=False)
    _finish_shard(
        paths,
        list(feats),
        [len(f) for f in feats.values()],
        feature,
        dims.pop(),
        frame_rate,
        dtype,
        rank=rank,
        nshard=nshard,
        data_dir="",
    )
    return paths["npy"]


class FeatureReader:
    """All shards of one dump: iterate (utt_id, (frames, dim) array) or sample frames for k-means."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)
        if not self.dir.is_dir():
            raise FileNotFoundError(f"feature dir {self.dir} does not exist")
        found: dict[int, set[int]] = {}
        for p in self.dir.iterdir():
            m = _SHARD_RE.match(p.name)
            if m:
                found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
        if not found:
            raise FileNotFoundError(f"no finished feature shard (<rank>_<nshard>.json) in {self.dir}")
        if len(found) > 1:
            raise ValueError(f"{self.dir} mixes dumps with nshard {sorted(found)}; remove the stale ones")
        ((nshard, ranks),) = found.items()
        missing = sorted(set(range(nshard)) - ranks)
        if missing:
            raise FileNotFoundError(
                f"{self.dir}: shard(s) {', '.join(f'{r}_{nshard}' for r in missing)} not finished; run "
                f"`speechssl features ... --nshard {nshard} --rank R` for each"
            )
        self.nshard = nshard
        self.meta: list[dict] = []
        self.lengths: list[np.ndarray] = []  # per shard, frames per utterance
        self.ids: list[list[str]] = []
        self._arrays: list[np.ndarray | None] = [None] * nshard
        seen: dict[str, int] = {}
        for rank in range(nshard):
            paths = shard_paths(self.dir, rank, nshard)
            meta, problem = read_shard_meta(paths)
            if problem:
                raise DamagedShardError(
                    f"feature shard {rank}_{nshard} is damaged: {problem}; re-run `speechssl features ... "
                    f"--nshard {nshard} --rank {rank}` (it redoes damaged shards)"
                )
            lengths = np.array(paths["len"].read_text().split(), dtype=np.int64)  # (utts,)
            ids = paths["ids"].read_text().split()
            for utt in ids:
                if utt in seen:
                    raise ValueError(f"utterance '{utt}' is in shards {seen[utt]} and {rank} of {self.dir}")
                seen[utt] = rank
            self.meta.append(meta)
            self.lengths.append(lengths)
            self.ids.append(ids)
        first = self.meta[0]
        for rank, meta in enumerate(self.meta[1:], start=1):
            key = ("feature", "feature_dim", "frame_rate")
            if [meta[k] for k in key] != [first[k] for k in key]:
                raise ValueError(
                    f"{self.dir}: shards hold different features (shard 0_{nshard}: {first['feature']}, "
                    f"{first['feature_dim']} dims at {first['frame_rate']} Hz; shard {rank}_{nshard}: "
                    f"{meta['feature']}, {meta['feature_dim']} dims at {meta['frame_rate']} Hz)"
                )
        # where each utterance starts in its shard's array
        self._offsets = [np.concatenate([[0], np.cumsum(n)]) for n in self.lengths]
        self.feature_name: str = first["feature"]
        self.feature_dim: int = first["feature_dim"]
        self.frame_rate: float = first["frame_rate"]

    def npy_path(self, rank: int) -> Path:
        return shard_paths(self.dir, rank, self.nshard)["npy"]

    def _array(self, rank: int) -> np.ndarray:
        if self._arrays[rank] is None:
            path = shard_paths(self.dir, rank, self.nshard)["npy"]
            arr = np.load(path, mmap_mode="r", allow_pickle=False)  # (frames, dim)
            if arr.shape != (int(self.lengths[rank].sum()), self.feature_dim):
                raise ValueError(
                    f"{path} has shape {arr.shape}, its .len/.json say "
                    f"({int(self.lengths[rank].sum())}, {self.feature_dim})"
                )
            self._arrays[rank] = arr
        return self._arrays[rank]

    @property
    def num_utts(self) -> int:
        return sum(len(i) for i in self.ids)

    @property
    def num_frames(self) -> int:
        return int(sum(int(n.sum()) for n in self.lengths))

    def __len__(self) -> int:
        return self.num_utts

    def utt_ids(self) -> list[str]:
        return [u for ids in self.ids for u in ids]

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        """(utt_id, (frames, dim) read-only view in the stored dtype), shard by shard; NaN or
        infinite features are an error naming the shard file and utterance."""
        for rank in range(self.nshard):
            arr, offsets = self._array(rank), self._offsets[rank]
            for i, utt in enumerate(self.ids[rank]):
                feats = arr[offsets[i] : offsets[i + 1]]
                self.check_finite(rank, i, feats)
                yield utt, feats

    def select(self, percent: float = 1.0, seed: int = 0) -> list[tuple[int, int]]:
        """(shard, utterance index) of a random `percent` of the utterances of each shard
        (all of them for percent >= 1), as fairseq's learn_kmeans samples."""
        if not 0 < percent:
            raise ValueError(f"percent must be in (0, 1], found {percent}")
        rng = np.random.default_rng(seed)
        picked = []
        for rank, lengths in enumerate(self.lengths):
            n = len(lengths)
            if percent >= 1:
                idx = np.arange(n)
            else:
                idx = np.sort(rng.choice(n, size=math.ceil(n * percent), replace=False))
            picked += [(rank, int(i)) for i in idx]
        return picked

    def count_frames(self, selection: Sequence[tuple[int, int]]) -> int:
        return int(sum(int(self.lengths[r][i]) for r, i in selection))

    def check_finite(self, rank: int, index: int, feats: np.ndarray, start: int = 0) -> None:
        """Raise NonFiniteFeaturesError naming the shard file and utterance when `feats` (the frames of
        utterance `index` of shard `rank`, from frame `start` on) hold NaN or infinite values."""
        finite = np.isfinite(feats).all(axis=1)  # (frames,)
        if finite.all():
            return
        bad = int((~finite).sum())
        span = (
            f"its {len(finite)} frames"
            if len(finite) == self.lengths[rank][index]
            else f"its frames {start}-{start + len(finite) - 1}"
        )
        raise NonFiniteFeaturesError(
            f"{self.npy_path(rank)}: utterance '{self.ids[rank][index]}' holds NaN or infinite features "
            f"({bad} of {span}, "
            f"first at frame {start + int(np.flatnonzero(~finite)[0])}); they come "
            f"from {self.feature_name}: fix that model or audio and dump the features again"
        )

    def gather(self, selection: Sequence[tuple[int, int]]) -> np.ndarray:
        """The frames of the selected utterances, concatenated: (frames, dim) float32."""
        out = np.empty((self.count_frames(selection), self.feature_dim), dtype=np.float32)
        pos = 0
        for rank, i in selection:
            a, b = self._offsets[rank][i], self._offsets[rank][i + 1]
            out[pos : pos + b - a] = self._array(rank)[a:b]
            self.check_finite(rank, i, out[pos : pos + b - a])
            pos += b - a
        return out

    def read(self, rank: int, index: int, start: int, stop: int) -> np.ndarray:
        """Frames `start:stop` of utterance `index` of shard `rank`, float32: only those are read
        from the memory-mapped shard, so a long recording is read a block at a time."""
        a = self._offsets[rank][index]
        feats = np.array(self._array(rank)[a + start : a + min(stop, self.lengths[rank][index])], np.float32)
        self.check_finite(rank, index, feats, start)
        return feats


FEATURES = ("mfcc", "upstream")


def build_extractor(
    feature: str, *, upstream: str | Path | None = None, layer: int | None = None, device: str | None = None
) -> FeatureExtractor:
    """The extractor named `feature`: "mfcc" (39-dim, 50 Hz) or "upstream" (layer `layer` of `upstream`)."""
    if feature == "mfcc":
        if upstream is not None or layer is not None:
            raise ValueError("--upstream/--layer apply to --feature upstream only, not mfcc")
        from speechssl.features.mfcc import MfccExtractor

        return MfccExtractor()
    if feature == "upstream":
        if upstream is None or layer is None:
            raise ValueError(
                "--feature upstream needs --upstream SRC (checkpoint dir, transformers dir or .pt) "
                "and --layer L"
            )
        from speechssl.features.upstream_features import UpstreamExtractor

        logger.info("loading upstream %s for layer %d features", upstream, layer)  # can take a while
        return UpstreamExtractor(upstream, layer, device=device)
    raise ValueError(f"unknown feature '{feature}'; valid features: {', '.join(FEATURES)}")
