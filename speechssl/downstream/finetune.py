"""wav2vec 2.0-style CTC fine-tuning as a downstream run of a CTC task (asr, pr) with a trained upstream.

As fairseq's `audio_finetuning` with `wav2vec_ctc` (configs base_10h, ...): a linear CTC head
(`w2v_encoder.proj`) on the encoder's last output after `final_dropout`, the conv frontend
frozen (feature_grad_mult 0; every tuning method leaves it out), the whole upstream run under
no_grad for the first `freeze_finetune_updates` updates so only the head learns, time/channel
masking and LayerDrop while training; the task's vocabulary, CTC loss (summed over frames,
averaged over utterances, zero_infinity) and metric. Any tuning method can stand in for "full".
The runner (speechssl.downstream.runner) does the rest: data checks, experiment, checkpoints,
dev selection, results. `config.finetune` (FinetuneConfig) turns it on.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from speechssl.config import apply_override, from_dict, load_yaml, to_dict
from speechssl.data.dataset import Batch
from speechssl.downstream.config import (
    DownstreamConfig,
    FinetuneConfig,
    check_tuning_overrides,
    finetune_defaults,
)
from speechssl.downstream.heads import LinearCTCHead
from speechssl.downstream.model import DownstreamModel
from speechssl.interop.upstream import Upstream, normalize_waveform
from speechssl.models.frontends import lengths_to_padding_mask
from speechssl.models.upstream_api import UpstreamModel
from speechssl.objectives.masking import MaskConfig, compute_channel_mask, compute_time_mask
from speechssl.training.checkpoints import seed_everything

FINETUNE_TASKS = ("asr", "pr")  # the CTC tasks
UNUSED_BY_FINETUNE = ("featurizer", "head")  # config sections a fine-tuning run has no use for


def encode(
    upstream: Upstream, wavs: Tensor, wav_lens: Tensor, mask: MaskConfig | None
) -> tuple[Tensor, Tensor]:
    """wavs: (B, S), wav_lens: (B,) -> the encoder's last output (B, T, D) (after the final
    LayerNorm of pre-norm models, as fairseq's w2v_encoder) and frames (B,); `mask`: time and
    channel masking (training)."""
    model = upstream.model
    if upstream.config.normalize_waveform:
        wavs = normalize_waveform(wavs, wav_lens)
    feats, lengths, padded = model.frontend_forward(wavs, wav_lens)  # (B, T, C), (B,)
    B, T, _ = feats.shape  # batch, frames, channels
    padding_mask = lengths_to_padding_mask(lengths, T)  # (B, T)
    x, _ = model.feature_projection(feats)  # (B, T, D)
    if mask is not None:
        time_mask = compute_time_mask(lengths, T, mask) if mask.mask_prob > 0 else None
        channel_mask = compute_channel_mask(B, x.shape[-1], mask, device=x.device)
        x = model.apply_masks(x, time_mask, channel_mask)
    last, _ = model.encoder_forward(x, padding_mask if padded else None)  # (B, T, D)
    return last, lengths


class FinalDropout(nn.Module):
    """The fine-tuned model's "featurizer": the last layer through dropout (fairseq final_dropout)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.dropout(x), lengths


class FinetuneModel(DownstreamModel):
    """Upstream (trained) -> last layer -> final dropout -> linear CTC head, with the trainer's
    `forward(batch) -> (loss, metrics)` and the task's loss and metric.

    Counts its training updates in a buffer (saved in checkpoints, so a resumed run knows how
    many are done) to know when `freeze_finetune_updates` is over."""

    def __init__(self, upstream: Upstream, head: nn.Module, task: Any, config: FinetuneConfig) -> None:
        super().__init__(upstream, FinalDropout(config.final_dropout), head, task)
        self.finetune = config
        self.register_buffer("num_micro_batches", torch.zeros((), dtype=torch.long))
        self._count: int | None = None  # host mirror of the buffer: no device sync per step
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_count", None))

    @property
    def num_updates(self) -> int:
        if self._count is None:
            self._count = int(self.num_micro_batches)
        return self._count  # one micro-batch per update (the runner does not accumulate)

    def features(self, batch: Batch, *, frozen: bool = False) -> tuple[Tensor, Tensor]:
        """Masked (training) encoder output through final dropout: ((B, T, D), frames (B,))."""
        config = self.finetune
        mask = config.mask if self.training and config.apply_mask else None
        no_grad = frozen or not self.upstream_trainable()
        self.check_frames(batch)
        with torch.no_grad() if no_grad else contextlib.nullcontext():
            x, lengths = encode(self.upstream, batch.wavs, batch.wav_lens, mask)
        return self.featurizer(x, lengths)

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        frozen = False
        if self.training:
            frozen = self.num_updates < self.finetune.freeze_finetune_updates
            self._count = (self._count or 0) + 1  # num_updates read it from the buffer above
            self.num_micro_batches.add_(1)
        x, lengths = self.features(batch, frozen=frozen)
        return self.task.loss(self.head, x, lengths, batch)


def check_finetune_task(task: Any) -> None:
    if task.name not in FINETUNE_TASKS:
        raise ValueError(
            f"CTC fine-tuning trains a CTC task ({', '.join(FINETUNE_TASKS)}); found task '{task.name}' "
            "(use `speechssl downstream train` with a tuning method for the others)"
        )


def configure_upstream(upstream: UpstreamModel, config: FinetuneConfig) -> None:
    """The LayerDrop override (in place), after the tuning method was applied."""
    if not isinstance(upstream, Upstream):
        raise ValueError(
            f"CTC fine-tuning needs an upstream with a transformer encoder; found {type(upstream).__name__}"
        )
    if config.layerdrop is not None:
        upstream.model.encoder.layerdrop = config.layerdrop


def build_finetune_model(task: Any, upstream: Upstream, config: FinetuneConfig, seed: int) -> FinetuneModel:
    """The task's CTC vocabulary under a linear head on the upstream's width (seeded); the
    runner checked the task (`check_finetune_task`)."""
    seed_everything(seed)
    head = LinearCTCHead(upstream.hidden_dim, len(task.tokens))  # fairseq: w2v_encoder.proj; HF: lm_head
    return FinetuneModel(upstream, head, task, config)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merge(merged[key], value)
        merged[key] = value
    return merged


def load_finetune_config(
    config_path: str | Path | None,
    overrides: list[str] = (),
    *,
    method: str | None = None,
    max_steps: int | None = None,
) -> DownstreamConfig:
    """`finetune_defaults()` under the YAML and the `key=value` overrides, then a method
    (`--method`) and a run length (`--max-steps`). A shorter run keeps the head-only share of
    updates (`finetune.freeze_finetune_updates`)."""
    check_tuning_overrides(overrides)
    data = load_yaml(config_path) if config_path is not None else {}
    for item in overrides:
        apply_override(data, item)
    source = " with ".join([*([str(config_path)] if config_path else []), *(f"--set {o}" for o in overrides)])
    if "finetune" in data and data["finetune"] is None:
        raise ValueError(f"'finetune' may not be null in a fine-tuning config (in {source})")
    for section in UNUSED_BY_FINETUNE:
        if section in data:
            keys = data[section]
            key = f"{section}.{next(iter(keys))}" if isinstance(keys, dict) and keys else section
            raise ValueError(
                f"{key} is not used by CTC fine-tuning (a linear CTC head on the last layer; in {source}): "
                "remove it, or use `speechssl downstream train` for a featurizer and a task head"
            )
    defaults = finetune_defaults()
    if "max_steps" in data and "freeze_finetune_updates" not in (data.get("finetune") or {}):
        # a run length from the YAML or --set keeps the default head-only share, as --max-steps does
        defaults = scale_run(defaults, data["max_steps"]) if isinstance(data["max_steps"], int) else defaults
    config = from_dict(
        DownstreamConfig,
        _merge(to_dict(defaults), data),
        source=str(config_path) if config_path else None,
        overrides=overrides,
    )
    if method is not None:
        config = replace(config, tuning=replace(config.tuning, method=method))
    return scale_run(config, max_steps)


def keep_recorded_freeze(
    config: DownstreamConfig, recorded: DownstreamConfig, overrides: list[str] = ()
) -> DownstreamConfig:
    """A resumed fine-tuning run keeps the head-only update count its experiment recorded (a longer
    `--max-steps` must not send an upstream that already trains back to head-only updates), unless
    `--set finetune.freeze_finetune_updates=N` asks for another count."""
    if config.finetune is None or recorded.finetune is None:
        return config
    if any(item.split("=", 1)[0].strip() == "finetune.freeze_finetune_updates" for item in overrides):
        return config
    count = recorded.finetune.freeze_finetune_updates
    return replace(config, finetune=replace(config.finetune, freeze_finetune_updates=count))


def scale_run(config: DownstreamConfig, max_steps: int | None) -> DownstreamConfig:
    """`config` run for `max_steps` updates (None: as it is); checkpoints every `eval_every`
    updates at most, and a fine-tuning run keeps its head-only share of the updates."""
    if max_steps is None:
        return config
    if max_steps <= 0:
        raise ValueError(f"max_steps must be > 0, found {max_steps}")
    finetune = config.finetune
    if finetune is not None:
        share = finetune.freeze_finetune_updates * max_steps / config.max_steps
        finetune = replace(finetune, freeze_finetune_updates=round(share))
    return replace(
        config, max_steps=max_steps, eval_every=min(config.eval_every, max_steps), finetune=finetune
    )
