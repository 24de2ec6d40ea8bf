"""Sharded feature dumping and reading (the layout of fairseq's simple_kmeans).

`dump_features` writes shard `rank` of `nshard` of a data dir as

    <out>/<rank>_<nshard>.npy    (frames, dim) float32/float16, every utterance concatenated
    <out>/<rank>_<nshard>.len    frames per utterance, one per line
    <out>/<rank>_<nshard>.ids    utterance ids, one per line, same order
    <out>/<rank>_<nshard>.json   what made it (feature, dim, frame rate, counts); written last

Each file is written to a temp name and renamed; the .json is the "finished"
marker, so a killed job leaves no marker and is redone, and a shard whose
marker matches the same utterances and feature is skipped. Shards are
contiguous ranges of the C-sorted utterance ids, so N jobs can run at once.
`FeatureReader` reads all shards of one `nshard` back.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from speechssl.io import atomic_file, atomic_write_text

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_SHARD_RE = re.compile(r"^(\d+)_(\d+)\.json$")


class FeatureExtractor(Protocol):
    """What `dump_features` needs from a feature: MFCC, upstream layer, ..."""

    name: str  # recorded in the shard's json (e.g. "mfcc", "upstream:<src>:layer6")
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


def _is_finished(paths: dict[str, Path], utt_ids: list[str], extractor: FeatureExtractor, dtype: str) -> bool:
    if not all(paths[k].is_file() for k in ("npy", "len", "ids", "json")):
        return False
    try:
        meta = json.loads(paths["json"].read_text())
    except json.JSONDecodeError:
        return False
    same = (
        meta.get("feature") == extractor.name
        and meta.get("feature_dim") == extractor.feature_dim
        and meta.get("dtype") == dtype
        and paths["ids"].read_text().split() == utt_ids
    )
    if not same:
        logger.info("%s exists but was made from other utterances or another feature: redoing it", paths["json"])
    return same


def _write_npy_from_raw(raw: Path, dest: Path, shape: tuple[int, int], dtype: np.dtype) -> None:
    """Prefix streamed raw frames with an .npy header (atomic rename into `dest`)."""
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    with atomic_file(dest) as tmp, open(tmp, "wb") as out, open(raw, "rb") as src:
        np.lib.format.write_array_header_1_0(out, header)
        shutil.copyfileobj(src, out, length=16 << 20)


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
    (same utterances, feature and dtype) is left untouched.
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
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = shard_paths(out_dir, rank, nshard)
    if _is_finished(paths, utt_ids, extractor, dtype):
        logger.info("shard %d/%d of %s is already dumped in %s: skipping", rank, nshard, data_dir, out_dir)
        return paths["npy"]
    paths["json"].unlink(missing_ok=True)  # from here on the shard is unfinished

    np_dtype = np.dtype(dtype)
    raw = out_dir / f".{rank}_{nshard}.raw.tmp{os.getpid()}"
    lengths: list[int] = []
    budget = int(batch_seconds * extractor.sample_rate)
    bar = tqdm(total=len(utterances), desc=f"{extractor.name} shard {rank}/{nshard}", unit="utt", disable=not progress)
    try:
        with open(raw, "wb") as sink:
            pending: list[tuple[str, torch.Tensor]] = []

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
                    if f.ndim != 2 or f.shape[1] != extractor.feature_dim:
                        raise ValueError(
                            f"utterance '{utt}': extractor returned shape {tuple(f.shape)},"
                            f" expected (frames, {extractor.feature_dim})"
                        )
                    if f.shape[0] == 0:
                        raise ValueError(f"utterance '{utt}': {wav.numel()} samples give no feature frame (too short)")
                    sink.write(np.ascontiguousarray(f, dtype=np_dtype).tobytes())
                    lengths.append(int(f.shape[0]))
                bar.update(len(pending))
                pending.clear()

            longest = 0
            for utt in utterances:
                # load_audio's errors name the utterance and file already
                wav = load_audio(utt.path, start=utt.start, end=utt.end,
                                 sample_rate=extractor.sample_rate, utt_id=utt.utt_id)  # (S,)
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
    _finish_shard(paths, utt_ids, lengths, extractor.name, extractor.feature_dim, extractor.frame_rate,
                  dtype, rank=rank, nshard=nshard, data_dir=str(data_dir))
    logger.info("wrote %d utterances, %d frames to %s", len(utt_ids), num_frames, paths["npy"])
    return paths["npy"]


def _finish_shard(
    paths: dict[str, Path], utt_ids: list[str], lengths: list[int], feature: str, feature_dim: int,
    frame_rate: float, dtype: str, *, rank: int, nshard: int, data_dir: str,
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
        "num_utts": len(utt_ids),
        "num_frames": int(sum(lengths)),
        "rank": rank,
        "nshard": nshard,
        "data_dir": data_dir,
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
    _finish_shard(paths, list(feats), [len(f) for f in feats.values()], feature, dims.pop(), frame_rate,
                  dtype, rank=rank, nshard=nshard, data_dir="")
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
        (nshard, ranks), = found.items()
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
            meta = json.loads(paths["json"].read_text())
            lengths = np.array(paths["len"].read_text().split(), dtype=np.int64)  # (utts,)
            ids = paths["ids"].read_text().split()
            if len(ids) != len(lengths) or int(lengths.sum()) != meta["num_frames"]:
                raise ValueError(
                    f"{paths['ids']} ({len(ids)} ids), {paths['len']} ({len(lengths)} lengths, "
                    f"{int(lengths.sum())} frames) and {paths['json']} ({meta['num_frames']} frames) disagree"
                )
            for utt in ids:
                if utt in seen:
                    raise ValueError(f"utterance '{utt}' is in shards {seen[utt]} and {rank} of {self.dir}")
                seen[utt] = rank
            self.meta.append(meta)
            self.lengths.append(lengths)
            self.ids.append(ids)
        first = self.meta[0]
        for meta in self.meta[1:]:
            if (meta["feature"], meta["feature_dim"]) != (first["feature"], first["feature_dim"]):
                raise ValueError(f"{self.dir}: shards hold different features ({first['feature']} vs {meta['feature']})")
        self.feature_name: str = first["feature"]
        self.feature_dim: int = first["feature_dim"]
        self.frame_rate: float = first["frame_rate"]

    def _array(self, rank: int) -> np.ndarray:
        if self._arrays[rank] is None:
            path = shard_paths(self.dir, rank, self.nshard)["npy"]
            arr = np.load(path, mmap_mode="r", allow_pickle=False)  # (frames, dim)
            if arr.shape != (int(self.lengths[rank].sum()), self.feature_dim):
                raise ValueError(f"{path} has shape {arr.shape}, its .len/.json say "
                                 f"({int(self.lengths[rank].sum())}, {self.feature_dim})")
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
        """(utt_id, (frames, dim) read-only view in the stored dtype), shard by shard."""
        for rank in range(self.nshard):
            arr = self._array(rank)
            offsets = np.concatenate([[0], np.cumsum(self.lengths[rank])])
            for i, utt in enumerate(self.ids[rank]):
                yield utt, arr[offsets[i] : offsets[i + 1]]

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

    def gather(self, selection: Sequence[tuple[int, int]]) -> np.ndarray:
        """The frames of the selected utterances, concatenated: (frames, dim) float32."""
        out = np.empty((self.count_frames(selection), self.feature_dim), dtype=np.float32)
        offsets = [np.concatenate([[0], np.cumsum(n)]) for n in self.lengths]
        pos = 0
        for rank, i in selection:
            a, b = offsets[rank][i], offsets[rank][i + 1]
            out[pos : pos + b - a] = self._array(rank)[a:b]
            pos += b - a
        return out


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
            raise ValueError("--feature upstream needs --upstream SRC (checkpoint dir, transformers dir or .pt) and --layer L")
        from speechssl.features.upstream_features import UpstreamExtractor

        return UpstreamExtractor(upstream, layer, device=device)
    raise ValueError(f"unknown feature '{feature}'; valid features: {', '.join(FEATURES)}")
