"""Typed defaults of a downstream run (`--config YAML` maps onto DownstreamConfig).

One config for both commands: `speechssl downstream train` starts from DownstreamConfig's
defaults (SUPERB: frozen upstream, weighted sum, light head), `speechssl finetune train` from
`finetune_defaults()` (fairseq base_10h: the upstream trained with a linear CTC head on its last
layer, the `finetune` section set). The upstream's tuning is named one way in both: the
`tuning` section (speechssl.tuning.TuningConfig: `method` and that method's options)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from speechssl.data.batching import BatchingConfig
from speechssl.downstream.featurizers import FeaturizerConfig
from speechssl.objectives.masking import MaskConfig
from speechssl.training import TrainerConfig
from speechssl.tuning import TuningConfig

# the trainer's keep_last of a downstream run: more checkpoints than any run writes, so none is
# ever pruned (dev selection reads them all; a resume with another eval_every or max_steps counts
# its checkpoints differently, and a count of this run's saves would delete earlier ones)
KEEP_EVERY_CHECKPOINT = 2**62


def run_dir_name(lr: float) -> str:
    """EXP/<this>/: the run dir of one learning rate of a sweep."""
    return f"lr_{lr:g}"


@dataclass(frozen=True, kw_only=True)
class HeadConfig:
    """The task heads, by default in the sizes of s3prl's SUPERB experts (the embedded corpus's
    recipe, egs/mini_synth/superb1/conf/, names smaller ones)."""

    # KS / IC / SID: Linear(D, hidden_dim) before mean pooling (s3prl modelrc.projector_dim);
    # PR: Linear(D, hidden_dim) before the CTC output layer (s3prl ctc modelrc.project_dim)
    hidden_dim: int = 256
    # ASR (s3prl asr/config.yaml): Linear(D, lstm_dim) (modelrc.project_dim), then BiLSTMs of
    # lstm_dim cells per direction (RNNs.dim), dropout after each, a linear output layer
    lstm_dim: int = 1024
    lstm_layers: int = 2
    dropout: float = 0.2
    # ASR SpecAugment on the featurizer output, training only (s3prl specaug: widths drawn in
    # [0, width), zeros; time warping is not applied)
    spec_augment: bool = True
    num_time_masks: int = 2
    time_mask_width: int = 40  # frames
    num_freq_masks: int = 4
    freq_mask_width: int = 50  # feature channels
    # ASV x-vector (s3prl sv_voxceleb1/configs/amsoftmax.yaml): Linear(D, xvector_channels), TDNN
    # layers of xvector_channels x4 and xvector_agg_dim, mean+std pooling, Linear(2 agg, embed_dim)
    xvector_channels: int = 512  # modelrc.input_dim
    xvector_agg_dim: int = 1500  # module_config.XVector.agg_dim
    xvector_batch_norm: bool = False  # module_config.XVector.batch_norm
    embed_dim: int = 512  # the speaker embedding scored by cosine
    am_margin: float = 0.4  # ASV additive margin m (LossConfig.AMSoftmaxLoss.m)
    am_scale: float = 30.0  # ASV logit scale s
    asv_max_seconds: float | None = 8.0  # ASV training crop (s3prl max_timestep: 128000 samples)
    asv_min_seconds: float = 2.0  # ASV training utterances shorter are dropped (s3prl min_sec: 32000)
    # SD (s3prl diarization modelrc): sd_rnn_layers unidirectional LSTMs of sd_hidden_dim cells (0: a
    # linear head), then a linear layer to one activity logit per speaker slot
    sd_rnn_layers: int = 1
    sd_hidden_dim: int = 512

    def __post_init__(self) -> None:
        for name in (
            "hidden_dim", "lstm_dim", "lstm_layers", "xvector_channels", "xvector_agg_dim",
            "embed_dim", "am_scale", "sd_hidden_dim",
        ):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, found {getattr(self, name)}")
        for name in (
            "num_time_masks",
            "time_mask_width",
            "num_freq_masks",
            "freq_mask_width",
            "sd_rnn_layers",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, found {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), found {self.dropout}")
        if not (0 <= self.am_margin < 1):
            raise ValueError(f"am_margin must be in [0, 1), found {self.am_margin}")
        if self.asv_max_seconds is not None and not (
            math.isfinite(self.asv_max_seconds) and self.asv_max_seconds > 0
        ):
            raise ValueError(f"asv_max_seconds must be > 0 or null, found {self.asv_max_seconds}")
        if not (math.isfinite(self.asv_min_seconds) and self.asv_min_seconds >= 0):
            raise ValueError(f"asv_min_seconds must be >= 0, found {self.asv_min_seconds}")
        if self.asv_max_seconds is not None and self.asv_min_seconds > self.asv_max_seconds:
            raise ValueError(
                f"asv_min_seconds ({self.asv_min_seconds}) exceeds asv_max_seconds ({self.asv_max_seconds})"
            )


def _finetune_mask() -> MaskConfig:
    # fairseq base_10h: mask_prob 0.65 (length 10), mask_channel_prob 0.5 (length 64)
    return MaskConfig(mask_prob=0.65, mask_length=10, channel_prob=0.5, channel_length=64)


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """What wav2vec 2.0-style CTC fine-tuning adds to a downstream run (fairseq `wav2vec_ctc`):
    a linear CTC head on the encoder's LAST output (after `final_dropout`) instead of the
    featurizer and the task's head, the upstream under no_grad for the first
    `freeze_finetune_updates` updates (only the head learns), time/channel masking while
    training and a LayerDrop override. Only the CTC tasks (asr, pr) fine-tune."""

    freeze_finetune_updates: int = 10000  # fairseq: updates during which only the head trains
    mask: MaskConfig = field(default_factory=_finetune_mask)  # applied in training only
    apply_mask: bool = True  # fairseq: apply_mask
    layerdrop: float | None = 0.1  # fairseq: layerdrop of the encoder while fine-tuning; None: the model's
    final_dropout: float = 0.0  # fairseq: final_dropout (before the CTC head)

    def __post_init__(self) -> None:
        if self.freeze_finetune_updates < 0:
            raise ValueError(f"freeze_finetune_updates must be >= 0, found {self.freeze_finetune_updates}")
        if self.layerdrop is not None and not 0 <= self.layerdrop < 1:
            raise ValueError(f"layerdrop must be in [0, 1) or null, found {self.layerdrop}")
        if not 0 <= self.final_dropout < 1:
            raise ValueError(f"final_dropout must be in [0, 1), found {self.final_dropout}")


@dataclass(frozen=True, kw_only=True)
class DownstreamConfig:
    RENAMED_KEYS: ClassVar[dict[str, str]] = {  # old YAMLs: one-line hint
        "batch_seconds": "max_batch_seconds",
        "tuning_options": "the tuning section's method options (tuning: {method: lora, lora: {rank: 8}})",
        "upstream_trainable": "tuning.method: full (the conv frontend stays frozen)",
    }
    featurizer: FeaturizerConfig = field(default_factory=FeaturizerConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    # optimisation: "adam" is torch.optim.Adam with torch's defaults as s3prl's experts (betas
    # (0.9, 0.999), eps 1e-8, no weight decay; run as AdamW with weight_decay 0, the same update);
    # "adamw": betas (0.9, 0.98), eps 1e-6, decoupled weight_decay (fine-tuning: fairseq's Adam)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    lr_sweep: list[float] = field(default_factory=list)  # one run per lr; the best dev metric wins
    max_steps: int = 20000  # a cap: patience ends a converged run first
    eval_every: int = 500  # updates between checkpoints, each scored on dev with the task metric
    # early stopping: a run ends when the dev metric has not improved (strictly) for this many
    # evaluations in a row; null: train to max_steps
    patience: int | None = 5
    schedule: Literal["constant", "linear", "polynomial", "tri_stage"] = "constant"
    warmup_steps: int = 0
    tri_stage_ratios: tuple[float, float, float] = (0.1, 0.4, 0.5)  # tri_stage: warmup, hold, decay
    eps: float | None = None  # None: the optimizer's (adam 1e-8, adamw 1e-6)
    weight_decay: float = 0.0  # adamw only
    clip_norm: float = 1.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # data
    max_batch_seconds: float = 64.0  # padded seconds per batch (speechssl.data.batching; was batch_seconds)
    max_batch_size: int | None = None
    max_seconds: float | None = None  # crop training utterances to this length (None: whole)
    num_workers: int = 0
    # upstream: "frozen" runs under torch.no_grad (SUPERB); any other method of speechssl.tuning.METHODS
    # (adapter, lora, bitfit, prefix, full, or one a user added there) trains with the task
    tuning: TuningConfig = field(default_factory=TuningConfig)
    finetune: FinetuneConfig | None = None  # CTC fine-tuning (see FinetuneConfig); null: a head on features
    # a dir of cached upstream features (speechssl.downstream.feature_cache), shared by runs: a frozen
    # upstream's hidden layers are dumped once per split and every head and lr trains from them; null: off
    feature_cache: str | None = None
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
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 evaluations or null, found {self.patience}")
        if self.eps is not None and not (self.eps > 0 and math.isfinite(self.eps)):
            raise ValueError(f"eps must be > 0 or null, found {self.eps}")
        if self.optimizer == "adam" and self.weight_decay:
            raise ValueError(
                f"weight_decay ({self.weight_decay}) needs optimizer: adamw (adam runs with torch's "
                "defaults, without weight decay)"
            )
        if any(not (lr > 0 and math.isfinite(lr)) for lr in self.lr_sweep):
            raise ValueError(f"lr_sweep must hold positive learning rates, found {self.lr_sweep}")
        if len(set(self.lr_sweep)) != len(self.lr_sweep):
            raise ValueError(f"lr_sweep has duplicates: {self.lr_sweep}")
        named: dict[str, float] = {}
        for lr in self.lr_sweep:  # one run dir per rate, else the second run reads the first's
            other = named.setdefault(run_dir_name(lr), lr)
            if other != lr:
                raise ValueError(
                    f"lr_sweep: {other!r} and {lr!r} both name run dir {run_dir_name(lr)} "
                    "(6 significant digits): give rates that differ there"
                )
        self.batching()  # validates max_batch_seconds, max_batch_size and max_seconds
        self.trainer()  # validates the schedule (tri_stage_ratios, warmup_steps, ...)
        if self.feature_cache is not None and not self.feature_cache.strip():
            raise ValueError("feature_cache must be a directory or null, found an empty string")
        if self.unknown_label is not None and not self.unknown_label.strip():
            raise ValueError("unknown_label must be a label or null, found an empty string")
        if self.finetune is not None:
            if self.finetune.freeze_finetune_updates > self.max_steps:
                raise ValueError(
                    f"finetune.freeze_finetune_updates must be in [0, max_steps={self.max_steps}], "
                    f"found {self.finetune.freeze_finetune_updates}"
                )
            if self.tuning.method == "frozen":
                raise ValueError(
                    "CTC fine-tuning needs a tuning method that trains something; found 'frozen' "
                    "(use `speechssl downstream train` for a frozen upstream)"
                )

    def trainer(self, lr: float | None = None) -> TrainerConfig:
        """The trainer's settings for one run (`lr`: one of an lr sweep): a checkpoint every
        `eval_every` updates, all of them kept for the dev selection (`KEEP_EVERY_CHECKPOINT`)."""
        unused = True if self.finetune is not None and self.finetune.freeze_finetune_updates else None
        return TrainerConfig(
            max_steps=self.max_steps,
            lr=self.lr if lr is None else lr,
            schedule=self.schedule,
            warmup_steps=self.warmup_steps,
            tri_stage_ratios=self.tri_stage_ratios,
            **self.optimizer_settings(),
            clip_norm=self.clip_norm,
            precision=self.precision,
            save_every=self.eval_every,
            keep_last=KEEP_EVERY_CHECKPOINT,
            log_every=min(self.log_every, self.max_steps),
            seed=self.seed,
            num_workers=self.num_workers,
            find_unused_parameters=unused,  # DDP: the head-only updates leave the upstream out
        )

    def optimizer_settings(self) -> dict[str, Any]:
        """The trainer's AdamW settings for `optimizer`: torch.optim.Adam's update is AdamW's with
        weight_decay 0, so "adam" is AdamW with Adam's betas and eps and no decay."""
        if self.optimizer == "adam":
            return {"betas": (0.9, 0.999), "eps": 1e-8 if self.eps is None else self.eps, "weight_decay": 0.0}
        return {
            "betas": (0.9, 0.98),
            "eps": 1e-6 if self.eps is None else self.eps,
            "weight_decay": self.weight_decay,
        }

    def batching(self) -> BatchingConfig:
        """The batching settings (training utterances are cropped at a random window)."""
        return BatchingConfig(
            max_batch_seconds=self.max_batch_seconds,
            max_batch_size=self.max_batch_size,
            max_seconds=self.max_seconds,
            crop="random",
        )


def check_tuning_overrides(overrides: Sequence[str]) -> None:
    """`--set tuning=lora` names the method where the tuning section is meant: say which key."""
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "tuning" and value.strip() and not value.strip().startswith("{"):
            raise ValueError(f"--set {item}: tuning is a section; use tuning.method={value.strip()}")


def finetune_defaults() -> DownstreamConfig:
    """The defaults of `speechssl finetune train`: fairseq's base_10h (lr 5e-5, 20k updates,
    tri-stage 0.1/0.4/0.5, adam eps 1e-8, no weight decay, no clipping, 10k head-only updates,
    3.2M samples per batch), the whole upstream but its conv frontend trained; no early stopping
    (the tri-stage schedule runs to its end, as in fairseq). fairseq's adam has betas (0.9, 0.98)
    and decoupled weight decay: optimizer adamw."""
    return DownstreamConfig(
        optimizer="adamw",
        lr=5e-5,
        max_steps=20000,
        eval_every=1000,
        patience=None,
        schedule="tri_stage",
        tri_stage_ratios=(0.1, 0.4, 0.5),
        eps=1e-8,
        weight_decay=0.0,
        clip_norm=0.0,
        log_every=200,
        max_batch_seconds=200.0,
        tuning=TuningConfig(method="full"),
        finetune=FinetuneConfig(),
    )
