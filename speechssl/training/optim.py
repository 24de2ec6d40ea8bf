"""AdamW with weight decay only on weight matrices.

Decaying LayerNorm/GroupNorm gains, biases or a learned mask embedding pulls
them towards 0 for no regularisation benefit (fairseq and HF do the same
split). Rule: a parameter is decayed iff it has >= 2 dims and does not
belong to a normalisation layer.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from speechssl.training.config import TrainerConfig

log = logging.getLogger(__name__)

_NORM_TYPES = (
    nn.modules.normalization.LayerNorm,
    nn.modules.normalization.GroupNorm,
    nn.modules.batchnorm._NormBase,
    nn.modules.normalization.RMSNorm,
)


def split_decay(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of parameters (trainable only) with and without weight decay."""
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(False)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or id(p) in norm_params or name.endswith(".bias"):
            no_decay.append(name)
        else:
            decay.append(name)
    return decay, no_decay


def build_optimizer(model: nn.Module, config: TrainerConfig) -> torch.optim.AdamW:
    """AdamW over two groups (decay / no decay). Uses the fused kernel when the
    device supports it: it takes a `found_inf` flag, so a NaN step is skipped
    on the device without a host sync."""
    params = dict(model.named_parameters())
    decay, no_decay = split_decay(model)
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": config.weight_decay, "name": "decay"},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0, "name": "no_decay"},
    ]
    groups = [g for g in groups if g["params"]]
    kwargs = dict(lr=config.lr, betas=config.betas, eps=config.eps)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError) as err:  # a device or dtype without the fused kernel
        log.warning("fused AdamW unavailable (%s); NaN checks will sync with the host each step", err)
        return torch.optim.AdamW(groups, **kwargs)
