"""Pretraining objectives: span masking, wav2vec 2.0 contrastive + diversity, HuBERT masked prediction."""

from speechssl.objectives.hubert import HubertObjectiveConfig
from speechssl.objectives.masking import (
    MaskConfig,
    compute_channel_mask,
    compute_mask_indices,
    compute_time_mask,
)
from speechssl.objectives.pretraining import (
    HubertPretrainModel,
    PretrainModelConfig,
    Wav2Vec2PretrainModel,
    build_pretrain_model,
    get_pretrain_preset,
)
from speechssl.objectives.wav2vec2 import Wav2Vec2ObjectiveConfig, sample_negatives

__all__ = [
    "HubertObjectiveConfig",
    "HubertPretrainModel",
    "MaskConfig",
    "PretrainModelConfig",
    "Wav2Vec2ObjectiveConfig",
    "Wav2Vec2PretrainModel",
    "build_pretrain_model",
    "compute_channel_mask",
    "compute_mask_indices",
    "compute_time_mask",
    "get_pretrain_preset",
    "sample_negatives",
]
