"""Shared by the tests marked `gpu`: the marks (skipped without CUDA) and a tiny pretraining batch."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from speechssl.objectives import build_pretrain_model, get_pretrain_preset
from speechssl.testing.models import random_waves

# deterministic cuBLAS (test_resume_gpu): read when CUDA starts, so set at collection, before any test
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def tiny_pretrain_model(preset: str, seed: int = 0) -> torch.nn.Module:
    """The preset's pretraining model with dropout and LayerDrop off (so runs differ only by precision)."""
    config = get_pretrain_preset(preset)
    encoder = replace(config.model.encoder, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                      feature_proj_dropout=0.0, layerdrop=0.0)  # fmt: skip
    config = replace(config, model=replace(config.model, encoder=encoder))
    torch.manual_seed(seed)
    return build_pretrain_model(config)


def tiny_batch(model: torch.nn.Module, device: str = "cuda") -> tuple[torch.Tensor, ...]:
    """A padded batch of odd lengths and random HuBERT-style targets (50 classes), on `device`."""
    wavs, lengths = random_waves([9617, 7203, 5111], seed=3)
    frames = (lengths - 400) // 320 + 1
    targets = torch.randint(0, 50, (3, int(frames.max())), generator=torch.Generator().manual_seed(4))
    return wavs.to(device), lengths.to(device), targets.to(device)
