"""Compression: DistilHuBERT-style distillation and DPHuBERT-style structured pruning."""

from speechssl.compression.config import (
    DistillConfig,
    GatesConfig,
    LossConfig,
    PruneConfig,
    StudentConfig,
)
from speechssl.compression.distill import Distiller, build_student, distill, layer_loss
from speechssl.compression.hardconcrete import HardConcrete
from speechssl.compression.prune import GatedModel, Pruner, build_pruner, prune, prune_model

__all__ = [
    "DistillConfig",
    "Distiller",
    "GatedModel",
    "GatesConfig",
    "HardConcrete",
    "LossConfig",
    "PruneConfig",
    "Pruner",
    "StudentConfig",
    "build_pruner",
    "build_student",
    "distill",
    "layer_loss",
    "prune",
    "prune_model",
]
