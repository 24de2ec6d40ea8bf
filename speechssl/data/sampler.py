"""Duration-bucketed, distributed, resumable batch sampler.

Batches are lists of dataset indices whose *padded* duration
(batch size x longest utterance) stays under ``max_batch_seconds``, so GPU
memory is bounded by the padded tensor, not by a count of utterances.

How an epoch's batches are made (identical on every rank, from seed+epoch):

1. Utterances longer than the cap are dropped (``long_utterances="drop"``,
   counted in ``num_dropped``) or kept at the cap (``"crop"``; the dataset must
   crop them, see ``crops``).
2. Indices are sorted by duration and cut into ``num_buckets`` equal-count
   buckets; with ``shuffle`` the order inside each bucket is shuffled. The
   result is "sorted up to local disorder": little padding, yet batch
   composition changes from epoch to epoch.
3. Batches are packed greedily along that order.
4. Balancing across ranks (so DDP never waits on a rank that ran out): the
   number of batches must be a multiple of ``num_replicas``. With
   ``drop_last=False`` the largest batches are split in two (a split batch
   still respects the cap) until it is; every kept utterance is then used
   exactly once per epoch across ranks. Only when every batch already holds
   a single utterance (fewer kept utterances than ranks, max_batch_size=1, or
   all utterances near the cap), so nothing can be split, are batches
   repeated from the start of the epoch to fill the gap: the one case where
   an utterance is used twice in an epoch. With ``drop_last=True`` the surplus batches (fewer than
   ``num_replicas``, taken from the end of the shuffled order) are left out of
   the epoch instead (``num_trimmed`` utterances).
5. With ``shuffle`` the batch order is shuffled; batches are then dealt
   round-robin: rank r gets batches r, r + R, r + 2R, ... Every rank thus gets
   the same number of disjoint batches.

Static shapes (``static_shapes=N``, for CUDA graphs, which replay only the
shapes they recorded): steps 2-3 become: the kept durations are cut into N
equal-count groups, each with one padded length (its longest, rounded up to
10 ms: ``shape_seconds``) and one batch size (as many utterances of that length
as the cap allows: ``shape_sizes``). Groups are shuffled inside and laid out
longest first; batches are cut along that order, each as large as its first
(longest) utterance's group allows, so a batch is never longer than its padded
length. The last batch is filled up by repeating its own utterances (at most
size - 1 repeats an epoch). Step 4 then repeats whole batches instead of
splitting them (a split batch has another shape). Every training batch thus
has one of N (batch, length) shapes, and the collate pads to the length
(``speechssl.data.batching``).

Resuming: ``state_dict()`` records the epoch and how many batches this rank
has yielded; after ``load_state_dict`` the next iteration starts at the
following batch (and yields nothing if the saved epoch was complete).
Without a load, iterating a finished epoch again replays it from its start.
Batches are a pure function of (durations, settings, seed, epoch), so nothing
else needs saving.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)

_EPS = 1e-9  # float slack on the cap comparison


def _fingerprint(durations: Sequence[float]) -> str:
    """Short hash of the durations, to refuse resuming on a different dataset."""
    data = np.asarray(durations, dtype=np.float64).tobytes()
    return hashlib.sha1(data).hexdigest()[:16]


def pack_greedy(
    order: Sequence[int],
    durations: Sequence[float],
    max_batch_seconds: float,
    max_batch_size: int | None = None,
) -> list[list[int]]:
    """Pack indices, in the given order, into batches with padded seconds <= cap."""
    batches: list[list[int]] = []
    batch: list[int] = []
    longest = 0.0
    for i in order:
        d = durations[i]
        new_longest = max(longest, d)
        full = max_batch_size is not None and len(batch) >= max_batch_size
        if batch and (full or (len(batch) + 1) * new_longest > max_batch_seconds + _EPS):
            batches.append(batch)
            batch, new_longest = [], d
        batch.append(i)
        longest = new_longest
    if batch:
        batches.append(batch)
    return batches


def shape_grid(
    durations: Sequence[float], num_shapes: int, max_batch_seconds: float, max_batch_size: int | None = None
) -> tuple[list[float], list[int]]:
    """The padded lengths (seconds, ascending) and batch sizes of `num_shapes` equal-count
    duration groups: each length is its group's longest, rounded up to 10 ms (never past
    the cap; no margin, which would cost utterances cropped to a round length, half the cap,
    a place in their batch); each size is how many such utterances fit the cap (and
    `max_batch_size`). An utterance longer than its duration says is padded to the next length."""
    durs = sorted(durations)
    if not durs:
        return [], []
    n = len(durs)
    lengths: list[float] = []
    for k in range(1, min(num_shapes, n) + 1):
        longest = durs[math.ceil(k * n / min(num_shapes, n)) - 1]
        # never below the longest: one a few nanoseconds past 10 ms would round down to it
        length = min(max(math.ceil(round(longest * 100, 6)) / 100, longest), max_batch_seconds)
        if not lengths or length > lengths[-1]:
            lengths.append(length)
    sizes = [max(1, math.floor(max_batch_seconds / length + _EPS)) for length in lengths]
    if max_batch_size is not None:
        sizes = [min(size, max_batch_size) for size in sizes]
    return lengths, sizes


def shape_group(lengths: Sequence[float], duration: float) -> int:
    """The group of `duration` in `shape_grid`'s ascending `lengths`: the first that holds it
    (len(lengths) when none does)."""
    return bisect.bisect_left(lengths, duration - _EPS)


def pack_static(
    order: Sequence[int], durations: Sequence[float], lengths: Sequence[float], sizes: Sequence[int]
) -> list[list[int]]:
    """Cut `order` (longest group first) into batches as large as the first utterance's group
    allows; the last batch is filled up with repeats of its own utterances."""
    batches: list[list[int]] = []
    pos = 0
    while pos < len(order):
        size = sizes[shape_group(lengths, durations[order[pos]])]
        batch = list(order[pos : pos + size])
        pos += size
        batch += [batch[j % len(batch)] for j in range(size - len(batch))]
        batches.append(batch)
    return batches


def split_to_multiple(batches: list[list[int]], multiple: int) -> list[list[int]]:
    """Split the largest batches in two until len(batches) % multiple == 0, if possible.

    Halves of a batch keep its (sorted) order, so padding barely grows.
    Returns the new list; its length may still not be a multiple when too few
    batches hold two or more utterances.
    """
    batches = [list(b) for b in batches]
    need = (-len(batches)) % multiple
    while need:
        largest = max(range(len(batches)), key=lambda k: (len(batches[k]), -k), default=None)
        if largest is None or len(batches[largest]) < 2:
            break
        b = batches[largest]
        half = len(b) // 2
        batches[largest : largest + 1] = [b[:half], b[half:]]
        need -= 1
    return batches


class DurationBucketSampler(Sampler[list[int]]):
    """Yield lists of dataset indices with padded duration <= `max_batch_seconds`.

    durations: seconds per dataset index (e.g. `AudioDataset.durations`).
    max_batch_size: optional cap on utterances per batch as well.
    num_replicas, rank: DDP world size and this process's rank.
    long_utterances: "drop" utterances longer than the cap, or "crop" them
        (they form single-utterance batches; the dataset must crop them to
        `crops[index]` seconds, e.g. `AudioDataset(max_seconds=max_batch_seconds)`).
    num_buckets: how many duration quantiles local shuffling is confined to;
        more buckets = less padding, less randomness in batch composition.
    weights: per index, how likely it is drawn (torch's WeightedRandomSampler semantics:
        each epoch draws as many indices as are kept, with replacement, with probability
        proportional to the weight, from (seed, epoch)); the draws are then bucketed and
        packed as usual. None: every kept index once per epoch.
    static_shapes: 0, or how many (batch, length) shapes every batch is made to have (see
        the module docstring; `shape_seconds`, `shape_sizes`). Replaces `num_buckets`.

    Call `set_epoch(epoch)` before each epoch (as with DistributedSampler).
    `len(sampler)` is this epoch's number of batches per rank (the same on
    every rank; it may vary by a batch or so between epochs).
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        *,
        max_batch_size: int | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        long_utterances: Literal["drop", "crop"] = "drop",
        num_buckets: int = 100,
        weights: Sequence[float] | None = None,
        static_shapes: int = 0,
    ) -> None:
        if not (max_batch_seconds > 0 and math.isfinite(max_batch_seconds)):
            raise ValueError(f"max_batch_seconds must be a positive number, found {max_batch_seconds}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, found {max_batch_size}")
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, found {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), found {rank}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, found {seed}")
        if long_utterances not in ("drop", "crop"):
            raise ValueError(f"long_utterances must be 'drop' or 'crop', found {long_utterances!r}")
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, found {num_buckets}")
        if static_shapes < 0:
            raise ValueError(f"static_shapes must be >= 0 (0: off), found {static_shapes}")
        durs = [float(d) for d in durations]
        if weights is not None:
            if len(weights) != len(durs):
                raise ValueError(f"weights has {len(weights)} entries for {len(durs)} durations")
            if not all(w >= 0 and math.isfinite(w) for w in weights) or not any(w > 0 for w in weights):
                raise ValueError("weights must be finite, >= 0 and not all 0")
        self.weights = None if weights is None else [float(w) for w in weights]
        for i, d in enumerate(durs):
            if not (d > 0 and math.isfinite(d)):
                raise ValueError(
                    f"duration of dataset index {i} must be a positive number of seconds, found {d}"
                )

        self.max_batch_seconds = float(max_batch_seconds)
        self.max_batch_size = max_batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.long_utterances = long_utterances
        self.num_buckets = num_buckets
        self.static_shapes = static_shapes
        self.epoch = 0
        self.batches_yielded = 0
        self._resumed = False  # honour a completed position once, right after load_state_dict
        self._fingerprint = _fingerprint(durs + (self.weights or []))

        long = [i for i, d in enumerate(durs) if d > self.max_batch_seconds + _EPS]
        if long_utterances == "drop":
            self.dropped: list[int] = long
            self.crops: dict[int, float] = {}
            dropped = set(long)
            self._kept = [i for i in range(len(durs)) if i not in dropped]
        else:
            self.dropped = []
            self.crops = {i: self.max_batch_seconds for i in long}
            self._kept = list(range(len(durs)))
        # Durations as the batches will see them (cropped ones at the cap).
        self._durations = [min(d, self.max_batch_seconds) for d in durs]
        self.shape_seconds, self.shape_sizes = ([], []) if not static_shapes else shape_grid(
            [self._durations[i] for i in self._kept], static_shapes, self.max_batch_seconds, max_batch_size
        )  # fmt: skip
        self._cache: tuple[int, list[list[int]], int] | None = None  # (epoch, global batches, trimmed)

    # ---------------------------------------------------------------- epochs
    @property
    def num_dropped(self) -> int:
        """Utterances longer than the cap left out of every epoch ("drop" mode)."""
        return len(self.dropped)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a new epoch starts from its first batch, the current one keeps its position."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, found {epoch}")
        if epoch != self.epoch:
            self.epoch = epoch
            self.batches_yielded = 0

    def _rng(self, salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, salt])

    def _epoch_batches(self) -> tuple[list[list[int]], int]:
        """All ranks' batches for this epoch, in dealing order, and the trimmed utterance count."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1], self._cache[2]
        durs = self._durations
        kept = self._kept
        if self.weights is not None and kept:
            p = np.asarray([self.weights[i] for i in kept], dtype=np.float64)
            if p.sum() > 0:
                draws = self._rng(3).choice(len(kept), size=len(kept), replace=True, p=p / p.sum())
                kept = [kept[int(k)] for k in draws]
        order = sorted(kept, key=lambda i: (durs[i], i))
        if self.static_shapes:
            batches = pack_static(self._static_order(order), durs, self.shape_seconds, self.shape_sizes)
        else:
            if self.shuffle and order:
                rng = self._rng(0)
                buckets = np.array_split(np.asarray(order, dtype=np.int64), min(self.num_buckets, len(order)))
                order = [int(i) for b in buckets for i in rng.permutation(b)]
            batches = pack_greedy(order, durs, self.max_batch_seconds, self.max_batch_size)
        trimmed = 0
        R = self.num_replicas
        if R > 1 and len(batches) % R:
            if self.drop_last:
                if self.shuffle:
                    perm = self._rng(1).permutation(len(batches))
                    batches = [batches[k] for k in perm]
                keep = len(batches) - len(batches) % R
                trimmed = sum(len(b) for b in batches[keep:])
                batches = batches[:keep]
            else:
                if not self.static_shapes:  # a split batch would have another shape
                    batches = split_to_multiple(batches, R)
                short = (-len(batches)) % R
                batches = batches + [list(batches[k % len(batches)]) for k in range(short)] if batches else []
        if self.shuffle and batches:
            perm = self._rng(2).permutation(len(batches))
            batches = [batches[k] for k in perm]
        self._cache = (self.epoch, batches, trimmed)
        return batches, trimmed

    def _static_order(self, order: list[int]) -> list[int]:
        """`order` laid out by shape group, longest group first, each shuffled inside."""
        groups: list[list[int]] = [[] for _ in self.shape_seconds]
        for i in order:
            groups[shape_group(self.shape_seconds, self._durations[i])].append(i)
        rng = self._rng(0)
        return [int(i) for g in reversed(groups) for i in (rng.permutation(g) if self.shuffle else g)]

    def rank_batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch, in iteration order."""
        batches, _ = self._epoch_batches()
        return batches[self.rank :: self.num_replicas]

    @property
    def num_trimmed(self) -> int:
        """Utterances left out of this epoch by drop_last balancing."""
        return self._epoch_batches()[1]

    def __len__(self) -> int:
        return len(self._epoch_batches()[0]) // self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches()
        start = self.batches_yielded
        if start >= len(batches) and not self._resumed:
            start = 0  # a finished epoch iterated again (e.g. a validation loader): replay it
        self._resumed = False
        for k in range(start, len(batches)):
            self.batches_yielded = k + 1
            yield list(batches[k])

    def padding_efficiency(self) -> float:
        """Real seconds / padded seconds over all ranks' batches of this epoch (1.0 = no padding)."""
        batches, _ = self._epoch_batches()
        durs = self._durations
        real = sum(durs[i] for b in batches for i in b)
        padded = sum(len(b) * self.padded_seconds(b) for b in batches)
        return real / padded if padded else 1.0

    def padded_seconds(self, batch: Sequence[int]) -> float:
        """The length a batch is padded to: its longest utterance, or with static shapes the
        padded length of that utterance's group."""
        longest = max(self._durations[i] for i in batch)
        if not self.static_shapes:
            return longest
        k = shape_group(self.shape_seconds, longest)
        return self.shape_seconds[k] if k < len(self.shape_seconds) else longest

    # -------------------------------------------------------------- resuming
    def state_dict(self, batches_consumed: int | None = None) -> dict[str, Any]:
        """Position to resume from.

        A DataLoader with workers draws batches from the sampler ahead of the
        training loop; pass the number of batches the loop actually consumed
        this epoch as `batches_consumed` so none are skipped on resume.
        """
        return {
            "epoch": self.epoch,
            "batches_yielded": self.batches_yielded if batches_consumed is None else int(batches_consumed),
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "max_batch_seconds": self.max_batch_seconds,
            "max_batch_size": self.max_batch_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "long_utterances": self.long_utterances,
            "num_buckets": self.num_buckets,
            "static_shapes": self.static_shapes,
            "durations_sha1": self._fingerprint,
            "weighted": self.weights is not None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the batch after `state['batches_yielded']` of `state['epoch']`.

        The settings that decide the batches must match, else the resumed
        epoch would differ from the interrupted one; a mismatch is an error.
        On another number of ranks the epoch's batches are dealt anew, and each
        rank continues after the same share of them (a few batches around that
        point are seen twice or not at all; a warning says so).
        """
        state = {"static_shapes": 0, **state}  # saved before static shapes existed: they were off
        mine = self.state_dict()
        for key in (
            "seed",
            "max_batch_seconds",
            "max_batch_size",
            "shuffle",
            "drop_last",
            "long_utterances",
            "num_buckets",
            "static_shapes",
            "durations_sha1",
            "weighted",
        ):
            if key in state and state[key] != mine[key]:
                what = "the dataset's durations" if key == "durations_sha1" else key
                raise ValueError(
                    f"cannot resume sampler: {what} was {state[key]!r} when saved, is {mine[key]!r} now"
                )
        epoch, done = int(state["epoch"]), int(state["batches_yielded"])
        self.epoch = epoch
        self._cache = None
        saved_ranks = int(state.get("num_replicas", self.num_replicas))
        if saved_ranks != self.num_replicas:
            share = min(len(self), done * saved_ranks // self.num_replicas)
            logger.warning(
                "the sampler's state was saved by %d ranks, now %d: epoch %d continues after batch %d of "
                "%d per rank (the same share of its batches), not bit for bit",
                saved_ranks, self.num_replicas, epoch, share, len(self),
            )  # fmt: skip
            done = share
        if not 0 <= done <= len(self):
            raise ValueError(
                f"cannot resume sampler: batches_yielded={done} outside [0, {len(self)}] for epoch {epoch}"
            )
        self.batches_yielded = done
        self._resumed = True
