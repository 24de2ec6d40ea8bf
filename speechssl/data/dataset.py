"""Audio datasets over Kaldi data dirs, target transforms and batch collation.

`AudioDataset` yields `{"utt_id", "wav", <target>...}` per utterance of a
data dir; `collate_audio` pads a list of them into a `Batch`. Durations come
from utt2dur, else segments, else audio headers, and feed the
`DurationBucketSampler` (`dataset.durations`, one per dataset index).

Targets are `utt-id -> raw string` tables (units, transcripts, labels),
turned into values by a target transform (`ClassIndex`, the units parser
`speechssl.units.parse_units`, or any `str -> value` callable). Their ids
must equal the data dir's: a partial label file is a common silent bug, so
it is an error naming the first missing and extra ids and the file.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from speechssl.data.audio import SAMPLE_RATE, AudioError, AudioInfo, audio_info, load_audio, segment_frames
from speechssl.data.datadir import DataDir, Utterance
from speechssl.data.kaldi import read_table

logger = logging.getLogger(__name__)

TargetTransform = Callable[[str], Any]
TargetSource = Mapping[str, str] | str | os.PathLike


# ---------------------------------------------------------------- target transforms


class ClassIndex:
    """Map a class name (speaker, keyword, intent) to a scalar LongTensor index.

    The vocabulary is fixed at construction so indices agree between train
    and test sets; an unknown name is an error rather than a new class.
    """

    def __init__(self, names: Sequence[str]) -> None:
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique")
        self.names = list(names)
        self.index = {name: k for k, name in enumerate(self.names)}

    @classmethod
    def from_values(cls, table: Mapping[str, str]) -> ClassIndex:
        """Vocabulary of the sorted distinct values of a `utt -> name` table."""
        return cls(sorted(set(table.values())))

    def __len__(self) -> int:
        return len(self.names)

    def __call__(self, value: str) -> torch.Tensor:
        name = value.strip()
        if name not in self.index:
            raise ValueError(f"unknown class '{name}' ({len(self.names)} known classes)")
        return torch.tensor(self.index[name], dtype=torch.long)


# ---------------------------------------------------------------- targets


def _first(ids: Sequence[str], n: int = 3) -> str:
    shown = ", ".join(f"'{i}'" for i in list(ids)[:n])
    return shown + (", ..." if len(ids) > n else "")


def load_targets(
    name: str, source: TargetSource, utt_ids: Sequence[str], *, data_dir: str | os.PathLike
) -> dict[str, str]:
    """Read one target table (mapping or `utt value` file) and check its ids equal `utt_ids`."""
    if isinstance(source, Mapping):
        table, where = dict(source), f"target '{name}'"
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"target '{name}': {path} does not exist")
        table, where = read_table(path), f"target '{name}' ({path})"
    wanted = set(utt_ids)
    missing = [u for u in utt_ids if u not in table]
    extra = [u for u in table if u not in wanted]
    if missing or extra:
        parts = []
        if missing:
            parts.append(
                f"{len(missing)} utterance(s) of {data_dir} have no entry (first: {_first(missing)})"
            )
        if extra:
            parts.append(f"{len(extra)} id(s) are not utterances of {data_dir} (first: {_first(extra)})")
        raise ValueError(f"{where}: ids do not match the data dir: " + "; ".join(parts))
    return table


# ---------------------------------------------------------------- dataset


class AudioDataset(Dataset):
    """Utterances of a Kaldi data dir as `{"utt_id": str, "wav": float (samples,), <targets>...}`.

    data_dir: path or loaded `DataDir`.
    targets: name -> `utt value` table (a mapping or a file path).
    target_transforms: name -> `str -> value` (default: the raw string).
    sample_rate: output rate; other rates are resampled (see `load_audio`).
    channel: channel of multi-channel recordings (None: files must be mono).
    skip_bad: check every file's header up front and leave out utterances
        whose audio is missing/corrupt/empty or whose segment is outside the
        file (`num_skipped`, `skipped`); utterances that still fail when read
        (corrupt data past the header, a bad target value) make `__getitem__`
        return None, which `collate_audio` drops. Without it, such failures
        raise `AudioError` naming the utterance and path.
    max_seconds: crop longer utterances to this many seconds (`durations` are
        reported after cropping); `crop` picks the window: "start", or a
        "random" one drawn from (seed, epoch, index), see `set_epoch`.
        Utterance-level targets are kept whole; frame-level targets named in
        `label_rates` (name -> frames per second, e.g. 50 for HuBERT units)
        are cropped to the same window, whose random offset is then snapped
        to a frame of the lowest label rate so audio and labels stay aligned.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike | DataDir,
        *,
        targets: Mapping[str, TargetSource] | None = None,
        target_transforms: Mapping[str, TargetTransform] | None = None,
        sample_rate: int = SAMPLE_RATE,
        channel: int | None = None,
        skip_bad: bool = False,
        max_seconds: float | None = None,
        crop: Literal["start", "random"] = "start",
        label_rates: Mapping[str, float] | None = None,
        seed: int = 0,
    ) -> None:
        data = data_dir if isinstance(data_dir, DataDir) else DataDir.load(data_dir)
        if max_seconds is not None and not (max_seconds > 0 and math.isfinite(max_seconds)):
            raise ValueError(f"max_seconds must be a positive number of seconds or None, found {max_seconds}")
        if crop not in ("start", "random"):
            raise ValueError(f"crop must be 'start' or 'random', found {crop!r}")
        self.label_rates = dict(label_rates or {})
        unknown_rates = sorted(set(self.label_rates) - set(targets or {}))
        if unknown_rates:
            raise ValueError(
                f"label_rates for unknown target(s) {unknown_rates}; targets are {sorted(targets or {})}"
            )
        if any(not (r > 0 and math.isfinite(r)) for r in self.label_rates.values()):
            raise ValueError(f"label_rates must be positive frames per second, found {self.label_rates}")
        transforms = dict(target_transforms or {})
        unknown = sorted(set(transforms) - set(targets or {}))
        if unknown:
            raise ValueError(
                f"target_transforms for unknown target(s) {unknown}; targets are {sorted(targets or {})}"
            )
        self.data_dir = data.path
        self.sample_rate = sample_rate
        self.channel = channel
        self.skip_bad = skip_bad
        self.max_seconds = max_seconds
        self.crop = crop
        self.seed = seed
        self.epoch = 0
        self.skipped: list[tuple[str, str]] = []

        utterances = data.utterances()
        ids = [u.utt_id for u in utterances]
        self.targets = {
            name: load_targets(name, src, ids, data_dir=data.path) for name, src in (targets or {}).items()
        }
        self.target_transforms: dict[str, TargetTransform] = {
            name: transforms.get(name, str) for name in self.targets
        }

        durations = self._known_durations(data, utterances)
        if skip_bad or any(d is None for d in durations):
            utterances, durations = self._scan(utterances, durations)
        utterances, durations = self._check_durations(utterances, durations)
        self.utterances: list[Utterance] = utterances
        self.full_durations: list[float] = [float(d) for d in durations]
        cap = math.inf if max_seconds is None else max_seconds
        self.durations: list[float] = [min(d, cap) for d in self.full_durations]
        if self.skipped:
            logger.warning(
                "%s: skipped %d bad utterance(s): %s",
                data.path,
                len(self.skipped),
                "; ".join(f"{u}: {why}" for u, why in self.skipped),
            )

    # ------------------------------------------------------------ durations
    @staticmethod
    def _known_durations(data: DataDir, utterances: list[Utterance]) -> list[float | None]:
        """Seconds per utterance from utt2dur, else segment bounds; None where only the header knows."""
        out: list[float | None] = []
        for u in utterances:
            if data.utt2dur is not None and u.utt_id in data.utt2dur:
                out.append(data.utt2dur[u.utt_id])
            elif u.end is not None:
                out.append(u.end - u.start)
            else:
                out.append(None)
        return out

    def _scan(
        self, utterances: list[Utterance], durations: list[float | None]
    ) -> tuple[list[Utterance], list[float]]:
        """Read headers (once per file) to fill durations and, with skip_bad, leave out bad utterances."""
        infos: dict[str, AudioInfo] = {}  # per file: recordings hold many segments
        kept_utts, kept_durs = [], []
        for u, dur in zip(utterances, durations):
            try:
                info = infos.get(u.path)
                if info is None:
                    info = infos[u.path] = audio_info(u.path, utt_id=u.utt_id)
                where = f"utterance '{u.utt_id}' ({u.path})"
                if info.num_frames == 0:
                    raise AudioError(f"{where}: file holds no samples")
                if self.channel is None and info.num_channels > 1:
                    raise AudioError(
                        f"{where}: file has {info.num_channels} channels; choose one with channel="
                    )
                if self.channel is not None and not 0 <= self.channel < info.num_channels:
                    raise AudioError(
                        f"{where}: channel {self.channel} requested, file has {info.num_channels}"
                    )
                first, last = segment_frames(u.start, u.end, info, where=where)
                if dur is None or u.end is not None and last < round(u.end * info.sample_rate):
                    dur = (last - first) / info.sample_rate  # overshooting segments are truncated
            except AudioError as err:
                if not self.skip_bad:
                    raise
                self.skipped.append((u.utt_id, str(err)))
                continue
            kept_utts.append(u)
            kept_durs.append(dur)
        return kept_utts, kept_durs

    def _check_durations(
        self, utterances: list[Utterance], durations: list[float]
    ) -> tuple[list[Utterance], list[float]]:
        """Zero or negative durations (utt2dur, segments) are bad utterances."""
        kept_utts, kept_durs = [], []
        for u, dur in zip(utterances, durations):
            if not dur > 0:
                reason = f"utterance '{u.utt_id}' ({u.path}): duration is {dur} s (utt2dur or segments)"
                if not self.skip_bad:
                    raise AudioError(reason)
                self.skipped.append((u.utt_id, reason))
                continue
            kept_utts.append(u)
            kept_durs.append(dur)
        return kept_utts, kept_durs

    # ------------------------------------------------------------ items
    @property
    def num_skipped(self) -> int:
        """Utterances left out (at construction) or failed when read (in this process)."""
        return len(self.skipped)

    def utt_ids(self) -> list[str]:
        return [u.utt_id for u in self.utterances]

    def set_epoch(self, epoch: int) -> None:
        """New random crop windows for the epoch (with crop='random')."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.utterances)

    def crop_offset(self, index: int) -> float | None:
        """Seconds into the utterance where the crop window starts; None = no crop."""
        full = self.full_durations[index]
        if self.max_seconds is None or full <= self.max_seconds:
            return None
        if self.crop == "start":
            return 0.0
        rng = np.random.default_rng([self.seed, self.epoch, index])
        offset = float(rng.uniform(0.0, full - self.max_seconds))
        if self.label_rates:
            frame = 1.0 / min(self.label_rates.values())
            offset = math.floor(offset / frame) * frame  # align with label frames
        return offset

    def _crop_target(self, name: str, value: Any, offset: float) -> Any:
        """Cut a frame-level target to the audio's crop window."""
        rate = self.label_rates.get(name)
        if rate is None:
            return value
        first = round(offset * rate)
        return value[first : first + round(self.max_seconds * rate)]  # (frames, ...)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        u = self.utterances[index]
        offset = self.crop_offset(index)
        start, end = (
            (u.start, u.end) if offset is None else (u.start + offset, u.start + offset + self.max_seconds)
        )
        try:
            wav = load_audio(
                u.path,
                start=start,
                end=end,
                sample_rate=self.sample_rate,
                channel=self.channel,
                utt_id=u.utt_id,
            )
            if self.max_seconds is not None:
                wav = wav[: round(self.max_seconds * self.sample_rate)]  # (samples,) rounding may add one
            item: dict[str, Any] = {"utt_id": u.utt_id, "wav": wav}
            for name, table in self.targets.items():
                try:
                    item[name] = self.target_transforms[name](table[u.utt_id])
                    if offset is not None:
                        item[name] = self._crop_target(name, item[name], offset)
                except ValueError as err:
                    raise ValueError(f"utterance '{u.utt_id}': target '{name}': {err}") from None
        except ValueError as err:
            if not self.skip_bad:
                raise
            self.skipped.append((u.utt_id, str(err)))
            logger.warning("skipping %s", err)
            return None
        return item


# ---------------------------------------------------------------- batches


@dataclass
class Batch:
    """Padded audio with lengths, and targets: the one batch type of every training and
    evaluation loop (speechssl.data.batching), which the trainer moves with `to`.

    wavs: (B, S) float, zero-padded; wav_lens: (B,) valid samples.
    targets: name -> (B, L...) padded tensor (lengths in `target_lens`),
    (B,) stacked scalars, or a list (strings and other values).
    Code reads `batch.targets[name]`, `batch.target_lens[name]` and `batch.utt_ids`.
    host_wav_lens: `wav_lens` as the loader made them, on the host, kept by `to` so that a model on
    an accelerator can read lengths (frame counts, masks) without a device sync.
    """

    utt_ids: list[str]
    wavs: torch.Tensor
    wav_lens: torch.Tensor
    targets: dict[str, Any] = field(default_factory=dict)
    target_lens: dict[str, torch.Tensor] = field(default_factory=dict)
    host_wav_lens: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.utt_ids)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Move every tensor to `device`."""

        def move(x: Any) -> Any:
            return x.to(device, non_blocking=non_blocking) if isinstance(x, torch.Tensor) else x

        host = self.wav_lens if self.wav_lens.device.type == "cpu" else self.host_wav_lens
        return Batch(
            self.utt_ids,
            move(self.wavs),
            move(self.wav_lens),
            {k: move(v) for k, v in self.targets.items()},
            {k: move(v) for k, v in self.target_lens.items()},
            host,
        )

    def pin_memory(self) -> Batch:
        """Used by DataLoader(pin_memory=True)."""

        def pin(x: Any) -> Any:
            return x.pin_memory() if isinstance(x, torch.Tensor) else x

        return Batch(
            self.utt_ids,
            pin(self.wavs),
            pin(self.wav_lens),
            {k: pin(v) for k, v in self.targets.items()},
            {k: pin(v) for k, v in self.target_lens.items()},
        )


def collate_audio(
    items: Sequence[dict[str, Any] | None],
    *,
    target_pad_value: int | float = -100,
    pad_to: Mapping[str, int] | None = None,
    label_rates: Mapping[str, float] | None = None,
    sample_rate: int = SAMPLE_RATE,
) -> Batch:
    """Pad dataset items into a `Batch`; None items (skipped utterances) are dropped.

    Tensor targets of one or more dims are padded along their first dim with
    `target_pad_value` (-100: CrossEntropyLoss's ignore_index) and their
    lengths go to `target_lens`; scalar tensors are stacked to (B,); other
    values are kept as lists. An all-skipped batch has B = 0.
    pad_to (static shapes): utterance id -> the padded length (samples) of the shape group the
    sampler put it in by its stated duration. The batch is padded to its utterances' largest,
    so it keeps its shape; audio at most 10 ms longer than that (a utt2dur rounded to 10 ms)
    is cut to it, audio longer still is kept whole (a batch of its own shape, as without
    static shapes). Targets of a frame rate in `label_rates` go to that length's frames + 1
    (the label-count tolerance).
    """
    kept = [it for it in items if it is not None]
    utt_ids = [it["utt_id"] for it in kept]
    wav_list = [it["wav"] for it in kept]
    limit = max((pad_to[u] for u in utt_ids), default=0) if pad_to else 0
    if limit:
        slack = round(0.01 * sample_rate)
        wav_list = [w[:limit] if limit < len(w) <= limit + slack else w for w in wav_list]
    wav_lens = torch.tensor([len(w) for w in wav_list], dtype=torch.long)  # (B,)
    wavs = pad_sequence(wav_list, batch_first=True) if kept else torch.zeros(0, 0)  # (B, S)
    padded = max(limit, wavs.shape[1])
    if padded > wavs.shape[1]:
        wavs = torch.nn.functional.pad(wavs, (0, padded - wavs.shape[1]))
    batch = Batch(utt_ids, wavs, wav_lens)
    names = [k for k in (kept[0] if kept else {}) if k not in ("utt_id", "wav")]
    for name in names:
        values = [it[name] for it in kept]
        if all(isinstance(v, torch.Tensor) for v in values):
            if all(v.dim() == 0 for v in values):
                batch.targets[name] = torch.stack(values)  # (B,)
                continue
            if all(v.dim() >= 1 for v in values):
                batch.target_lens[name] = torch.tensor([v.shape[0] for v in values], dtype=torch.long)  # (B,)
                target = pad_sequence(values, batch_first=True, padding_value=target_pad_value)
                rate = (label_rates or {}).get(name) if limit else None
                if rate is not None:  # (B, L, ...) -> (B, max(L, frames + 1), ...)
                    width = math.ceil(padded * rate / sample_rate) + 1
                    pad = [0, 0] * (target.dim() - 2) + [0, max(0, width - target.shape[1])]
                    target = torch.nn.functional.pad(target, pad, value=target_pad_value)
                batch.targets[name] = target
                continue  # (B, L, ...)
        batch.targets[name] = values
    return batch
