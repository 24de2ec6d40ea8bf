"""RankMe during pretraining: the validation step's label-free health check.

A representation that collapses (every frame mapped near one point, or onto a few directions)
can still lower a pretraining loss for a while; RankMe (speechssl.analysis.rankme) falls to a
handful when it does, long before a downstream evaluation would show it. At each validation the
monitor runs the backbone without masks on the first validation batches until it has
`max_frames` frames (every valid frame of those batches, the last batch subsampled with a fixed
seed: the validation order is fixed, so every validation looks at the same frames and the values
are comparable), and
reports RankMe of each chosen layer as `valid/rankme_layer<L>` (TensorBoard and the log). A value
below `min_rankme` is a warning in the log and in the run's summary.

Cost: one unmasked forward over about `max_frames` frames (about 40 s of audio at 50 Hz for the
default 2048) and one SVD of a 2048 x D matrix per layer, per validation; next to the validation
itself that is small, so the monitor is on by default (the last layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from speechssl.analysis.rankme import rankme
from speechssl.models.frontends import normalize_waveform


@dataclass(frozen=True, kw_only=True)
class RankMeMonitorConfig:
    """The pretraining config's `monitor` section."""

    enabled: bool = True
    layers: tuple[int, ...] | None = None  # None: the last layer; 0 is the transformer input
    max_frames: int = 2048  # frames per validation (per rank)
    # a RankMe below this is a collapse warning; a collapsed model scores ~1 (one direction)
    min_rankme: float = 4.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_frames < 2:
            raise ValueError(f"max_frames must be >= 2, found {self.max_frames}")
        if not (math.isfinite(self.min_rankme) and self.min_rankme >= 0):
            raise ValueError(f"min_rankme must be a finite number >= 0, found {self.min_rankme}")
        if self.layers is not None:
            if not self.layers:
                raise ValueError("layers must name at least one layer (or be left out: the last layer)")
            if any(layer < 0 for layer in self.layers) or len(set(self.layers)) != len(self.layers):
                raise ValueError(f"layers must be distinct layer numbers >= 0, found {list(self.layers)}")


class RankMeMonitor:
    """The trainer's `valid_monitor`: `reset()`, `update(batch)` per validation batch, `compute()`
    -> {"rankme_layer<L>": value}, `check(values)` -> {metric: warning}."""

    def __init__(self, config: RankMeMonitorConfig, backbone: nn.Module, *, normalize: bool = False) -> None:
        num_layers = int(backbone.num_layers)
        layers = list(config.layers) if config.layers is not None else [num_layers]
        bad = [layer for layer in layers if layer > num_layers]
        if bad:
            raise ValueError(
                f"monitor.layers {bad}: the model has layers 0..{num_layers} (0: transformer input)"
            )
        self.config, self.layers = config, layers
        self.backbone, self.normalize = backbone, normalize
        self.reset()

    def reset(self) -> None:
        self.frames: list[list[Tensor]] = [[] for _ in self.layers]
        self.count = 0
        self.generator = torch.Generator().manual_seed(self.config.seed)

    @torch.no_grad()
    def update(self, batch: Any) -> None:
        """Keep frames of each chosen layer of `batch` (a Batch: wavs, wav_lens) until max_frames."""
        need = self.config.max_frames - self.count
        if need <= 0 or not self.config.enabled:
            return
        wavs, lengths = batch.wavs, batch.wav_lens
        if self.normalize:
            wavs = normalize_waveform(wavs, lengths)
        out = self.backbone(wavs, lengths, output_hidden_states=True)
        frames = out.lengths.cpu()  # (B,)
        valid = torch.arange(int(frames.max())) < frames[:, None]  # (B, T)
        flat = valid.flatten().nonzero().squeeze(1)  # indices of the valid frames in (B*T)
        if len(flat) > need:
            flat = flat[torch.randperm(len(flat), generator=self.generator)[:need]].sort().values
        for k, layer in enumerate(self.layers):
            hidden = out.hidden_states[layer]  # (B, T, D)
            rows = hidden.reshape(-1, hidden.shape[-1])[flat.to(hidden.device)]  # (n, D)
            self.frames[k].append(rows.detach().to("cpu", torch.float32))
        self.count += len(flat)

    def compute(self) -> dict[str, float]:
        """RankMe of each layer on the frames kept since `reset` (nothing when none were)."""
        if not self.config.enabled or self.count == 0:
            return {}
        return {
            f"rankme_layer{layer}": rankme(torch.cat(rows)) for layer, rows in zip(self.layers, self.frames)
        }

    def check(self, values: dict[str, float]) -> dict[str, str]:
        """{metric: warning} for each layer whose RankMe (in `values`, with or without the `valid/`
        prefix) is below min_rankme."""
        out = {}
        for layer in self.layers:
            key = f"rankme_layer{layer}"
            value = values.get(f"valid/{key}", values.get(key))
            if value is not None and value < self.config.min_rankme:
                out[key] = (
                    f"RankMe of layer {layer} is {value:.2f}, below monitor.min_rankme "
                    f"{self.config.min_rankme:g}: the representation may be collapsing (a collapsed "
                    "model scores ~1); check the learning rate, the targets and the masking"
                )
        return out
