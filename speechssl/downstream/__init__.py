"""SUPERB-style downstream evaluation: upstreams, featurizers, heads, tasks, metrics,
the runner (train / evaluate with dev-based checkpoint and lr selection) and reports."""

from speechssl.downstream.config import DownstreamConfig, HeadConfig
from speechssl.downstream.featurizers import FEATURIZERS, FeaturizerConfig, build_featurizer
from speechssl.downstream.runner import evaluate_downstream, register_tuning, train_downstream
from speechssl.downstream.tasks import TASKS, build_task

__all__ = [
    "FEATURIZERS",
    "TASKS",
    "DownstreamConfig",
    "FeaturizerConfig",
    "HeadConfig",
    "build_featurizer",
    "build_task",
    "evaluate_downstream",
    "register_tuning",
    "train_downstream",
]
