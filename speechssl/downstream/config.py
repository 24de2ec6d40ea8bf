"""Typed defaults of a downstream run (`--config YAML` maps onto DownstreamConfig)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from speechssl.data.batching import BatchingConfig
from speechssl.downstream.featurizers import FeaturizerConfig


@dataclass(frozen=True, kw_only=True)
class HeadConfig:
    hidden_dim: int = 256  # pooled heads: frame projection; ASR: LSTM cells per direction
    lstm_layers: int = 2  # ASR BiLSTM layers (SUPERB: 2)
    dropout: float = 0.2  # ASR
    xvector_channels: int = 256  # ASV TDNN channels
    embed_dim: int = 128  # ASV speaker embedding
    am_margin: float = 0.2  # ASV additive margin m
    am_scale: float = 30.0  # ASV logit scale s

    def __post_init__(self) -> None:
        for name in ("hidden_dim", "lstm_layers", "xvector_channels", "embed_dim", "am_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, found {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), found {self.dropout}")


@dataclass(frozen=True, kw_only=True)
class DownstreamConfig:
    RENAMED_KEYS: ClassVar[dict[str, str]] = {
        "batch_seconds": "max_batch_seconds"
    }  # old YAMLs: one-line hint
    featurizer: FeaturizerConfig = field(default_factory=FeaturizerConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    # optimisation (AdamW through the trainer)
    lr: float = 1e-3
    lr_sweep: list[float] = field(default_factory=list)  # one run per lr; the best dev metric wins
    max_steps: int = 2000
    eval_every: int = 500  # updates between checkpoints, each scored on dev with the task metric
    schedule: Literal["constant", "linear", "polynomial", "tri_stage"] = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # data
    max_batch_seconds: float = 64.0  # padded seconds per batch (speechssl.data.batching; was batch_seconds)
    max_batch_size: int | None = None
    max_seconds: float | None = None  # crop training utterances to this length (None: whole)
    num_workers: int = 0
    # upstream
    upstream_trainable: bool = False  # False: frozen, run under torch.no_grad (SUPERB)
    tuning: str | None = None  # efficient tuning method by name (speechssl.tuning), e.g. "lora"
    tuning_options: dict[str, Any] = field(default_factory=dict)
    # ASR units
    asr_units: Literal["char", "sentencepiece"] = "char"
    sentencepiece_vocab_size: int = 300
    sentencepiece_model: str | None = None  # a model of `speechssl downstream tokenizer` (else trained here)
    # labels: a dev/test label (ks, ic, sid, pr) unseen in train and undeclared in <data>/labels.txt is
    # an error, unless this names a training class that such labels are mapped to (e.g. "_unknown_")
    unknown_label: str | None = None
    seed: int = 1
    log_every: int = 50

    def __post_init__(self) -> None:
        for name in ("lr", "max_steps", "eval_every", "log_every", "sentencepiece_vocab_size"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, found {getattr(self, name)}")
        if any(not (lr > 0 and math.isfinite(lr)) for lr in self.lr_sweep):
            raise ValueError(f"lr_sweep must hold positive learning rates, found {self.lr_sweep}")
        if len(set(self.lr_sweep)) != len(self.lr_sweep):
            raise ValueError(f"lr_sweep has duplicates: {self.lr_sweep}")
        self.batching()  # validates max_batch_seconds, max_batch_size and max_seconds
        if self.unknown_label is not None and not self.unknown_label.strip():
            raise ValueError("unknown_label must be a label or null, found an empty string")
        if self.upstream_trainable and self.tuning:
            raise ValueError(
                "choose either upstream_trainable (full fine-tuning) or a tuning method, not both"
            )

    def batching(self) -> BatchingConfig:
        """The batching settings (training utterances are cropped at a random window)."""
        return BatchingConfig(
            max_batch_seconds=self.max_batch_seconds,
            max_batch_size=self.max_batch_size,
            max_seconds=self.max_seconds,
            crop="random",
        )
