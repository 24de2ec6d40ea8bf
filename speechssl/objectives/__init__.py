"""Pretraining objectives: span masking, wav2vec 2.0 contrastive + diversity, HuBERT masked prediction,
WavLM (HuBERT on utterance-mixed input) and data2vec (EMA-teacher regression)."""

from speechssl.objectives.data2vec import Data2VecObjectiveConfig
from speechssl.objectives.hubert import HubertObjectiveConfig
from speechssl.objectives.masking import (
    MaskConfig,
    compute_channel_mask,
    compute_mask_indices,
    compute_time_mask,
)
from speechssl.objectives.mixing import MixingConfig, NoiseBank, mix_batch
from speechssl.objectives.pretraining import (
    Data2VecPretrainModel,
    HubertPretrainModel,
    PretrainModelConfig,
    Wav2Vec2PretrainModel,
    WavLMPretrainModel,
    build_pretrain_model,
    get_pretrain_preset,
)
from speechssl.objectives.wav2vec2 import Wav2Vec2ObjectiveConfig, sample_negatives
from speechssl.objectives.wavlm import WavLMObjectiveConfig

__all__ = [
    "Data2VecObjectiveConfig",
    "Data2VecPretrainModel",
    "HubertObjectiveConfig",
    "HubertPretrainModel",
    "MaskConfig",
    "MixingConfig",
    "NoiseBank",
    "PretrainModelConfig",
    "Wav2Vec2ObjectiveConfig",
    "Wav2Vec2PretrainModel",
    "WavLMObjectiveConfig",
    "WavLMPretrainModel",
    "build_pretrain_model",
    "compute_channel_mask",
    "compute_mask_indices",
    "compute_time_mask",
    "get_pretrain_preset",
    "mix_batch",
    "sample_negatives",
]
