"""Exact resume on the GPU with deterministic algorithms: N steps == N/2, stop, resume, N/2."""

from __future__ import annotations

import pytest
import torch

from speechssl.config import from_dict
from speechssl.testing.training import ToyBatchSampler, ToyDataset, ToyModel, toy_collate
from speechssl.training import TrainerConfig, train
from tests.gpu._gpu import GPU

pytestmark = GPU

STEPS = 12
TRAINER = {"max_steps": STEPS, "lr": 0.01, "warmup_steps": 3, "save_every": 2, "log_every": 2,
           "keep_last": 2, "clip_norm": 1.0}  # fmt: skip


def _train(out, precision: str, *, stop_at: int | None = None, resume: bool = False) -> dict:
    dataset = ToyDataset(num_items=20)  # 5 batches of 4: the stop falls mid-epoch
    torch.manual_seed(0)
    model = ToyModel(dropout=0.3)  # dropout draws from the CUDA RNG: it must be restored too
    sampler = ToyBatchSampler(len(dataset), 4, seed=0, group=1)
    config = from_dict(TrainerConfig, dict(TRAINER, precision=precision))
    on_checkpoint = None if stop_at is None else (lambda step, _path: step >= stop_at)
    train(model, dataset, toy_collate, sampler, config, out, resume=resume, on_checkpoint=on_checkpoint)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # CUBLAS_WORKSPACE_CONFIG is set by tools/gpu_check.sh
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_stop_and_resume_on_gpu_is_bit_exact(tmp_path, deterministic, precision):
    full = _train(tmp_path / "full", precision)
    half = _train(tmp_path / "split", precision, stop_at=STEPS // 2)
    resumed = _train(tmp_path / "split", precision, resume=True)
    assert full.keys() == resumed.keys()
    assert any(not torch.equal(half[k], full[k]) for k in full)  # the stop really came early
    for key in full:
        assert torch.equal(full[key], resumed[key]), (
            f"{key}: max diff {(full[key] - resumed[key]).abs().max()}"
        )
