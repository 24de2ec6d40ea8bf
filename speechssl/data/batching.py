"""The one way utterances become batches: `BatchingConfig` + `build_loader`.

Every command that trains or scores on audio (pretrain, distill, prune,
downstream, fine-tuning) builds its training and evaluation loaders here, so
one setting means the same thing in every stage:

- training: duration-bucketed, shuffled per epoch from the seed, sharded over
  the DDP ranks; utterances longer than the cap are cropped (`max_seconds`
  set: the dataset crops them) or dropped.
- evaluation: no shuffling, nothing dropped: the cap grows to the longest
  utterance, so every utterance is scored exactly once.

Batches are `speechssl.data.dataset.Batch` (see `collate_audio`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Literal

from torch.utils.data import DataLoader

from speechssl.data.dataset import AudioDataset, collate_audio
from speechssl.data.sampler import DurationBucketSampler


@dataclass(frozen=True, kw_only=True)
class BatchingConfig:
    """How utterances become batches (fairseq: dataset.max_tokens, task.max_sample_size)."""

    max_batch_seconds: float = 64.0  # padded audio-seconds per device and micro-batch
    max_batch_size: int | None = None  # utterances per micro-batch, on top of the seconds cap
    max_seconds: float | None = None  # training utterances are cropped to this length (None: whole)
    crop: Literal["random", "start"] = "random"  # where the crop window goes (random: new each epoch)
    num_buckets: int = 100  # length buckets of the sampler (more: less padding, less shuffling)
    # > 0: every training batch has one of this many (batch, length) shapes, so CUDA graphs
    # (trainer.compile_mode reduce-overhead) replay instead of recording anew; costs padding
    static_shapes: int = 0

    def __post_init__(self) -> None:
        for name in ("max_batch_seconds", "max_seconds"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, found {value}")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or null, found {self.max_batch_size}")
        if self.num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, found {self.num_buckets}")
        if self.static_shapes < 0:
            raise ValueError(f"static_shapes must be >= 0 (0: off), found {self.static_shapes}")
        if self.crop not in ("random", "start"):
            raise ValueError(f"crop must be 'random' or 'start', found {self.crop!r}")
        if self.max_seconds is not None and self.max_seconds > self.max_batch_seconds:
            raise ValueError(
                f"max_seconds ({self.max_seconds}) exceeds max_batch_seconds ({self.max_batch_seconds}):"
                " a cropped utterance would not fit in a batch"
            )


def _sampler(
    durations: list[float],
    config: BatchingConfig,
    *,
    train: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> DurationBucketSampler:
    """The batch sampler of `build_loader`."""
    if train:
        return DurationBucketSampler(
            durations, config.max_batch_seconds, max_batch_size=config.max_batch_size,
            num_replicas=world_size, rank=rank, seed=seed, num_buckets=config.num_buckets,
            long_utterances="crop" if config.max_seconds else "drop", static_shapes=config.static_shapes,
        )  # fmt: skip
    cap = max(config.max_batch_seconds, max(durations, default=0.0))  # never drop at evaluation
    return DurationBucketSampler(
        durations, cap, max_batch_size=config.max_batch_size, num_replicas=world_size, rank=rank, seed=seed,
        num_buckets=config.num_buckets, shuffle=False,
    )  # fmt: skip


def build_loader(
    dataset: AudioDataset,
    config: BatchingConfig,
    *,
    train: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    target_pad_value: int | float = -100,
) -> DataLoader:
    """A DataLoader of `Batch`es over `dataset`; its `batch_sampler` is the DurationBucketSampler.

    train: shuffled, resumable training batches (the trainer re-opens the loader every epoch
    from `loader.dataset`, `loader.collate_fn` and `loader.batch_sampler`); otherwise every
    utterance once, in duration order. rank, world_size: this process's share (DDP).
    target_pad_value: padding of sequence targets (-100: CrossEntropyLoss's ignore_index)."""
    sampler = _sampler(dataset.durations, config, train=train, seed=seed, rank=rank, world_size=world_size)
    rate = dataset.sample_rate
    pad_to = None  # static shapes: each utterance's group length, by the duration it was packed by
    if sampler.static_shapes:
        pad_to = {u: round(sampler.padded_seconds([i]) * rate) for i, u in enumerate(dataset.utt_ids())}
    collate = partial(collate_audio, target_pad_value=target_pad_value, pad_to=pad_to,
                      label_rates=dataset.label_rates, sample_rate=rate)  # fmt: skip
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)
