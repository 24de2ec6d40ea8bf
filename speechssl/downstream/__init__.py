"""SUPERB-style downstream evaluation and CTC fine-tuning: upstreams, featurizers, heads, tasks,
metrics, the runner (train / evaluate with dev-based checkpoint and lr selection) and reports.
CTC fine-tuning is a run of the asr or pr task with `DownstreamConfig.finetune` set
(`finetune_defaults()`: fairseq base_10h)."""

from speechssl.downstream.config import DownstreamConfig, FinetuneConfig, HeadConfig, finetune_defaults
from speechssl.downstream.featurizers import FEATURIZERS, FeaturizerConfig, build_featurizer
from speechssl.downstream.runner import evaluate_downstream, train_downstream
from speechssl.downstream.tasks import TASKS, build_task

__all__ = [
    "FEATURIZERS",
    "TASKS",
    "DownstreamConfig",
    "FeaturizerConfig",
    "FinetuneConfig",
    "HeadConfig",
    "build_featurizer",
    "build_task",
    "evaluate_downstream",
    "finetune_defaults",
    "train_downstream",
]
