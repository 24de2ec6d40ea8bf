"""wav2vec 2.0 / HuBERT model family: frontends, transformer encoder, configs, presets, checkpoints."""

from speechssl.models.checkpoint import load_model, resolve_model_config, save_checkpoint
from speechssl.models.config import ConvFrontendConfig, EncoderConfig, FbankFrontendConfig, ModelConfig
from speechssl.models.model import EncoderOutput, SSLModel, build_model
from speechssl.models.presets import PRESETS, get_preset

__all__ = [
    "PRESETS",
    "ConvFrontendConfig",
    "EncoderConfig",
    "EncoderOutput",
    "FbankFrontendConfig",
    "ModelConfig",
    "SSLModel",
    "build_model",
    "get_preset",
    "load_model",
    "resolve_model_config",
    "save_checkpoint",
]
