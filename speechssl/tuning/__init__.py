"""Efficient tuning of an upstream: adapters, LoRA, BitFit, prefix tuning, full
fine-tuning (frontend frozen), chosen by name from one registry (`METHODS`; a new method is
`METHODS[name] = fn(ssl_model, config) -> names of the parameters to train`). CTC fine-tuning
with any of them is a downstream run (speechssl.downstream.finetune, `speechssl finetune`)."""

from speechssl.tuning.adapters import AdapterConfig, AdapterLinear, BottleneckAdapter
from speechssl.tuning.bitfit import BitFitConfig
from speechssl.tuning.lora import LoRAConfig, LoRALinear, merge_lora
from speechssl.tuning.methods import (
    METHODS,
    AppliedTuning,
    TuningConfig,
    TuningReport,
    apply_tuning,
    count_parameters,
    load_tuned,
    load_tuned_state_dict,
    merge_tuning,
    read_tuned,
    save_tuned,
    tuned_state_dict,
    tuning_config,
)
from speechssl.tuning.prefix import PrefixConfig, PrefixSelfAttention, fold_prefixes

__all__ = [
    "METHODS",
    "AdapterConfig",
    "AdapterLinear",
    "AppliedTuning",
    "BitFitConfig",
    "BottleneckAdapter",
    "LoRAConfig",
    "LoRALinear",
    "PrefixConfig",
    "PrefixSelfAttention",
    "TuningConfig",
    "TuningReport",
    "apply_tuning",
    "count_parameters",
    "fold_prefixes",
    "load_tuned",
    "load_tuned_state_dict",
    "merge_lora",
    "merge_tuning",
    "read_tuned",
    "save_tuned",
    "tuned_state_dict",
    "tuning_config",
]
