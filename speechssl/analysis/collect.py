"""One pass of one or two upstreams over a data dir, keeping what the analyses need of each layer.

Every analysis looks at the same frames: the utterances are taken in a seeded random order (all of
them, or `max_utts`), every layer of every model sees the same audio, and a uniform random sample
of at most `max_frames` frames of all those utterances is kept (reservoir sampling, seeded; the
same frame positions for every layer and both models). Utterance means (one vector per utterance
and layer) are kept for all of them. `keep_utterances` (unit quality per layer, which needs every
frame of an utterance) keeps whole utterances instead, in the same order, until `max_frames` frames.

Two models must have the same frame rate (downsample rate): CKA compares features of the same
frames. Their frame counts for one utterance may differ by one frame (conventions for the last
partial frame differ), which is trimmed; more is an error naming the utterance.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from speechssl.data.audio import SAMPLE_RATE, load_audio
from speechssl.data.datadir import DataDir, Utterance
from speechssl.features.upstream_features import check_dumpable, default_device, pads_safely
from speechssl.models.upstream_api import UpstreamModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class CollectConfig:
    """Which layers and how many frames an analysis looks at."""

    layers: tuple[int, ...] | None = None  # None: every layer, 0 (transformer input) .. num_layers
    max_frames: int = 10000  # frames kept per layer (RankMe, CKA); whole utterances up to it (layers)
    max_utts: int | None = None  # utterances run through the model(s); None: all of them
    seed: int = 0
    batch_seconds: float = 60.0  # padded audio per forward (models that pad safely)
    device: str | None = None  # None: cuda when available

    def __post_init__(self) -> None:
        if self.max_frames < 2:
            raise ValueError(f"max_frames must be >= 2, found {self.max_frames}")
        if self.max_utts is not None and self.max_utts < 1:
            raise ValueError(f"max_utts must be >= 1, found {self.max_utts}")
        if not (math.isfinite(self.batch_seconds) and self.batch_seconds > 0):
            raise ValueError(f"batch_seconds must be a finite number > 0, found {self.batch_seconds}")
        if self.layers is not None:
            if not self.layers:
                raise ValueError("layers must name at least one layer (or be omitted: every layer)")
            if len(set(self.layers)) != len(self.layers):
                raise ValueError(f"layers must be distinct, found {list(self.layers)}")


@dataclass
class LayerFeatures:
    """What a pass kept of one upstream: per analysed layer, the sampled frames (the same rows for
    every layer and model), the utterance means and, when asked, whole utterances."""

    name: str
    layers: list[int]
    hidden_dim: int
    frame_rate: float  # frames per second
    frames: list[np.ndarray] = field(default_factory=list)  # per layer (N, D) float32
    utterance_means: list[np.ndarray] = field(default_factory=list)  # per layer (U, D) float32
    utterances: dict[str, list[np.ndarray]] = field(default_factory=dict)  # utt -> per layer (T, D)
    num_utts: int = 0  # utterances run
    num_frames_seen: int = 0  # frames of those utterances (the sample is drawn from them)


def check_layers(upstream: UpstreamModel, name: str, layers: Sequence[int] | None) -> list[int]:
    """The layers to analyse of `upstream` (all when None); one outside 0..num_layers is an error."""
    num_layers = int(upstream.num_layers)
    if layers is None:
        return list(range(num_layers + 1))
    bad = [layer for layer in layers if not 0 <= layer <= num_layers]
    if bad:
        raise ValueError(
            f"--layers {' '.join(map(str, bad))}: upstream '{name}' has layers 0..{num_layers} "
            "(0: transformer input, L: output of layer L)"
        )
    return list(layers)


def check_same_frames(upstreams: Sequence[tuple[str, UpstreamModel]]) -> None:
    """Two models are compared on the same frames only at the same frame rate."""
    rates = {name: int(up.downsample_rate) for name, up in upstreams}
    if len(set(rates.values())) > 1:
        shown = ", ".join(f"'{n}' {r}" for n, r in rates.items())
        raise ValueError(
            f"the upstreams have different frame rates (samples per frame: {shown}); CKA compares "
            "the same frames, so both must have the same downsample rate"
        )


def select_utterances(data_dir: DataDir, config: CollectConfig) -> list[Utterance]:
    """All utterances (or `max_utts` of them) in a seeded random order."""
    utterances = data_dir.utterances()
    if not utterances:
        raise ValueError(f"{data_dir.path}: no utterances")
    order = np.random.default_rng(config.seed).permutation(len(utterances))
    if config.max_utts is not None:
        order = order[: config.max_utts]
    return [utterances[i] for i in order]


def _groups(utterances: list[Utterance], wavs: dict[str, torch.Tensor], budget: int, batched: bool):
    """Consecutive utterances whose padded batch stays within `budget` samples (one each unbatched)."""
    group: list[Utterance] = []
    longest = 0
    for utt in utterances:
        n = wavs[utt.utt_id].numel()
        if group and (not batched or (len(group) + 1) * max(longest, n) > budget):
            yield group
            group, longest = [], 0
        group.append(utt)
        longest = max(longest, n)
    if group:
        yield group


@torch.inference_mode()
def _forward(
    upstream: UpstreamModel, wavs: list[torch.Tensor], layers: list[int], device: torch.device
) -> list[list[np.ndarray]]:
    """Per utterance, per layer: (frames, D) float32 of its valid frames."""
    lengths = torch.tensor([w.numel() for w in wavs], dtype=torch.long)  # (B,)
    batch = torch.zeros(len(wavs), int(lengths.max()))  # (B, S_max), zero padded
    for i, w in enumerate(wavs):
        batch[i, : w.numel()] = w
    out = upstream(batch.to(device), lengths.to(device))
    frames = out.lengths.cpu().tolist()
    hidden = [out.hidden_states[layer].float().cpu() for layer in layers]  # per layer (B, T, D)
    return [[h[i, : frames[i]].numpy() for h in hidden] for i in range(len(wavs))]


class _Reservoir:
    """A uniform random sample of at most `size` rows of a stream (Vitter's algorithm R), drawn
    once for all layers and models so that they keep the same frame positions."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seen = size, 0
        self.rng = np.random.default_rng(seed)

    def slots(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows of the next `count` stream items to keep, reservoir slot of each)."""
        index = self.seen + np.arange(count)  # stream positions
        self.seen += count
        slot = np.where(index < self.size, index, self.rng.integers(0, index + 1))
        keep = np.flatnonzero(slot < self.size)
        # a slot drawn twice in one block: the later item replaces the earlier, as one at a time
        last = len(keep) - 1 - np.unique(slot[keep][::-1], return_index=True)[1]
        keep = keep[last]
        return keep, slot[keep]


def collect(
    upstreams: Sequence[tuple[str, UpstreamModel]],
    data_dir: str | DataDir,
    config: CollectConfig,
    *,
    keep_utterances: bool = False,
    concatenate: bool = True,
    progress: bool = True,
) -> list[LayerFeatures]:
    """Run each upstream over the selected utterances of `data_dir`; see the module docstring.
    `concatenate: False` leaves `frames` empty when whole utterances are kept (callers that only
    read `utterances`, such as QbE, then hold each frame once)."""
    data = data_dir if isinstance(data_dir, DataDir) else DataDir.load(data_dir)
    if len(upstreams) > 1:
        check_same_frames(upstreams)
    device = torch.device(config.device or default_device())
    results = []
    for name, upstream in upstreams:
        check_dumpable(upstream, name)  # fbank_global_cmvn: no train-split statistics here
        upstream.eval().to(device)
        layers = check_layers(upstream, name, config.layers)
        rate = SAMPLE_RATE / float(upstream.downsample_rate)
        results.append(
            LayerFeatures(name=name, layers=layers, hidden_dim=int(upstream.hidden_dim), frame_rate=rate)
        )
    utterances = select_utterances(data, config)
    kept_bytes = sum(4 * config.max_frames * len(r.layers) * r.hidden_dim for r in results)
    logger.info(
        "analysing %s on %d utterances of %s: %s, %s",
        " and ".join(r.name for r in results),
        len(utterances),
        data.path,
        "whole utterances" if keep_utterances else "a random sample of their frames",
        "every frame"
        if config.max_frames >= 2**40
        else f"up to {config.max_frames} frames ({kept_bytes / 2**20:.0f} MiB)",
    )
    reservoir = _Reservoir(config.max_frames, config.seed)
    if not keep_utterances:
        for r in results:
            r.frames = [np.zeros((config.max_frames, r.hidden_dim), np.float32) for _ in r.layers]
    sums: list[list[list[np.ndarray]]] = [[[] for _ in r.layers] for r in results]
    batched = all(pads_safely(up) for _, up in upstreams)
    budget = int(config.batch_seconds * SAMPLE_RATE)
    kept_frames = 0
    bar = tqdm(total=len(utterances), desc="analyze", unit="utt", disable=not progress)
    try:
        pending = list(utterances)
        while pending and not (keep_utterances and kept_frames >= config.max_frames):
            chunk, pending = pending[:64], pending[64:]  # audio of at most 64 utterances in memory
            wavs = {
                u.utt_id: load_audio(
                    u.path, start=u.start, end=u.end, sample_rate=SAMPLE_RATE, utt_id=u.utt_id
                )
                for u in chunk
            }
            for group in _groups(chunk, wavs, budget, batched):
                if keep_utterances and kept_frames >= config.max_frames:
                    break
                outs = [
                    _forward(up, [wavs[u.utt_id] for u in group], r.layers, device)
                    for (_, up), r in zip(upstreams, results)
                ]
                for i, utt in enumerate(group):
                    if keep_utterances and kept_frames >= config.max_frames:
                        break  # the rest of a batch is not kept
                    per_model = [out[i] for out in outs]
                    counts = [feats[0].shape[0] for feats in per_model]
                    if max(counts) - min(counts) > 1:
                        shown = ", ".join(f"'{r.name}' {c}" for r, c in zip(results, counts))
                        raise ValueError(
                            f"utterance '{utt.utt_id}': the upstreams give different frame counts ({shown})"
                        )
                    frames = min(counts)
                    if frames == 0:
                        raise ValueError(
                            f"utterance '{utt.utt_id}': {wavs[utt.utt_id].numel()} samples give no frame"
                        )
                    rows, slots = reservoir.slots(frames)
                    for r, feats, acc in zip(results, per_model, sums):
                        feats = [f[:frames] for f in feats]
                        for k, f in enumerate(feats):
                            acc[k].append(f.mean(axis=0, dtype=np.float64).astype(np.float32))
                            if not keep_utterances:
                                r.frames[k][slots] = f[rows]
                        if keep_utterances:
                            r.utterances[utt.utt_id] = feats
                        r.num_utts += 1
                        r.num_frames_seen += frames
                    kept_frames += frames
                bar.update(len(group))
    finally:
        bar.close()
    for r, acc in zip(results, sums):
        r.utterance_means = [np.stack(means) for means in acc]
        if keep_utterances:
            r.frames = (
                [np.concatenate([u[k] for u in r.utterances.values()]) for k in range(len(r.layers))]
                if concatenate
                else []
            )
        else:
            r.frames = [f[: min(config.max_frames, reservoir.seen)] for f in r.frames]
        per_layer = r.frames or [f for feats in r.utterances.values() for f in feats]
        for k, f in enumerate(per_layer):
            if not np.isfinite(f).all():
                layer = r.layers[k % len(r.layers)]
                raise ValueError(f"upstream '{r.name}' gives NaN or infinite features at layer {layer}")
    logger.info(
        "analysed %d utterances (%d frames); kept %d frames per layer",
        results[0].num_utts,
        results[0].num_frames_seen,
        len(results[0].frames[0]) if results[0].frames else results[0].num_frames_seen,
    )
    return results
