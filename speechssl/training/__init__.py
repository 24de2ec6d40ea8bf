"""Training engine: DDP trainer with AMP, accumulation, clipping, schedules,
atomic resumable checkpoints, NaN skipping and TensorBoard logging."""

from speechssl.training.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from speechssl.training.config import TrainerConfig
from speechssl.training.distributed import DistInfo, distributed, env_rank, env_world_size
from speechssl.training.optim import build_optimizer, split_decay
from speechssl.training.schedules import build_schedule
from speechssl.training.trainer import BadStepsError, Trainer, TrainResult, train

__all__ = [
    "BadStepsError",
    "CheckpointError",
    "DistInfo",
    "TrainResult",
    "Trainer",
    "TrainerConfig",
    "build_optimizer",
    "build_schedule",
    "distributed",
    "env_rank",
    "env_world_size",
    "load_checkpoint",
    "save_checkpoint",
    "split_decay",
    "train",
]
