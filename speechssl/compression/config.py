"""Typed configs of `speechssl distill` and `speechssl prune` (YAML via speechssl.config).

Both hold the data / trainer sections of `speechssl pretrain`, so one recipe
setting (batch seconds, lr, steps) means the same thing in every stage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from speechssl.objectives.masking import MaskConfig
from speechssl.training.config import TrainerConfig
from speechssl.training.pretrain import PretrainDataConfig


def _refuse_pretraining_only(data: PretrainDataConfig, trainer: TrainerConfig, command: str) -> None:
    """The data and trainer sections are pretraining's; two of their options do not apply here."""
    if data.padding_free:  # it would be silently ignored
        raise ValueError(
            f"data.padding_free is for pretraining: {command} runs its student on padded batches"
        )
    if trainer.strategy == "fsdp":  # it trained, then failed to save or prune the sharded student
        raise ValueError(
            f"trainer.strategy fsdp is for pretraining: {command} trains, prunes and saves its student "
            "whole on each rank (use ddp)"
        )


def _check_layers(name: str, layers: Sequence[int] | None) -> None:
    if layers is None:
        return
    if not layers or min(layers) < 1:
        raise ValueError(f"{name} must list transformer layers numbered from 1, found {list(layers)}")


@dataclass(frozen=True, kw_only=True)
class LossConfig:
    """DistilHuBERT's layer loss: l1_weight * L1 + cos_weight * (-log sigmoid(cos))."""

    l1_weight: float = 1.0
    cos_weight: float = 1.0  # DistilHuBERT: lambda = 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.l1_weight) and math.isfinite(self.cos_weight)) or (
            self.l1_weight < 0 or self.cos_weight < 0 or self.l1_weight + self.cos_weight == 0
        ):
            raise ValueError(
                f"l1_weight and cos_weight must be finite, >= 0 and not both 0, found "
                f"{self.l1_weight}, {self.cos_weight}"
            )


@dataclass(frozen=True, kw_only=True)
class StudentConfig:
    """The student: the teacher's frontend and width, fewer transformer layers."""

    num_layers: int = 2  # DistilHuBERT: 2
    # teacher layers (1-based) copied into student layers 1..num_layers; None: 1..num_layers
    init_layers: list[int] | None = None
    init_from_teacher: bool = True  # False: random init (ablation)
    layerdrop: float = 0.0

    def __post_init__(self) -> None:
        if self.num_layers < 1:
            raise ValueError(f"student.num_layers must be >= 1, found {self.num_layers}")
        _check_layers("student.init_layers", self.init_layers)
        if self.init_layers is not None and len(self.init_layers) != self.num_layers:
            raise ValueError(
                f"student.init_layers must list {self.num_layers} teacher layers, found {self.init_layers}"
            )
        if not 0.0 <= self.layerdrop < 1.0:
            raise ValueError(f"student.layerdrop must be in [0, 1), found {self.layerdrop}")

    def teacher_layers_to_copy(self) -> list[int]:
        return list(self.init_layers) if self.init_layers is not None else list(range(1, self.num_layers + 1))


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """`speechssl distill`: DistilHuBERT (+ optional Recycle-and-Distill masking distillation)."""

    student: StudentConfig = field(default_factory=StudentConfig)
    target_layers: list[int] = field(
        default_factory=lambda: [4, 8, 12]
    )  # teacher layers, one linear head each
    loss: LossConfig = field(default_factory=LossConfig)
    # Masking distillation: the student sees masked frames (learned mask embedding) and
    # predicts the teacher's features of the unmasked input. None: off (DistilHuBERT).
    mask: MaskConfig | None = None
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        _check_layers("target_layers", self.target_layers)
        _refuse_pretraining_only(self.data, self.trainer, "distill")


@dataclass(frozen=True, kw_only=True)
class GatesConfig:
    """Which structures get HardConcrete gates (DPHuBERT prunes all of them)."""

    conv_channels: bool = True  # output channels of every conv layer but the last (see prune.py)
    heads: bool = True
    attention: bool = True  # whole attention blocks
    ffn_units: bool = True
    ffn: bool = True  # whole feed-forward blocks
    init_keep_prob: float = 0.99  # DPHuBERT: droprate_init 0.01
    lr_scale: float = 40.0  # gate lr = trainer.lr * lr_scale (DPHuBERT: 0.02 vs 5e-4 -> 40)

    def __post_init__(self) -> None:
        if not 0.0 < self.init_keep_prob < 1.0:
            raise ValueError(f"gates.init_keep_prob must be in (0, 1), found {self.init_keep_prob}")
        if not (math.isfinite(self.lr_scale) and self.lr_scale > 0):
            raise ValueError(f"gates.lr_scale must be a finite number > 0, found {self.lr_scale}")


@dataclass(frozen=True, kw_only=True)
class PruneConfig:
    """`speechssl prune`: DPHuBERT joint distillation and structured pruning."""

    target_sparsity: float = 0.75  # fraction of the teacher's parameters to remove
    sparsity_warmup_steps: int = 0  # the target ramps linearly from 0 over this many updates (CoFi)
    lambda_lr: float = 1.0  # step size of the multipliers' gradient ascent (plain, once per update)
    gates: GatesConfig = field(default_factory=GatesConfig)
    # teacher layers matched by the same student layer; None: N/3, 2N/3 and N (DPHuBERT: 4, 8, 12)
    distill_layers: list[int] | None = None
    loss: LossConfig = field(default_factory=LossConfig)
    final_distill_steps: int = 0  # layer-wise distillation of the dense pruned model afterwards
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        if not 0.0 < self.target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be in (0, 1), found {self.target_sparsity}")
        if self.sparsity_warmup_steps < 0 or self.final_distill_steps < 0:
            raise ValueError("sparsity_warmup_steps and final_distill_steps must be >= 0")
        if not (math.isfinite(self.lambda_lr) and self.lambda_lr > 0):
            raise ValueError(f"lambda_lr must be a finite number > 0, found {self.lambda_lr}")
        _check_layers("distill_layers", self.distill_layers)
        _refuse_pretraining_only(self.data, self.trainer, "prune")

    def layers_for(self, num_layers: int) -> list[int]:
        """The distilled layers of a teacher with `num_layers` layers (checked against it)."""
        layers = self.distill_layers or sorted({max(1, num_layers * k // 3) for k in (1, 2, 3)})
        if max(layers) > num_layers:
            raise ValueError(f"distill_layers {layers} exceed the teacher's {num_layers} layers")
        return list(layers)
