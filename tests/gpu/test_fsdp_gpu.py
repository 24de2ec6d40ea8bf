"""trainer.strategy fsdp on the GPU (NCCL, a group of one): fp32 matches DDP, bf16 (bf16 gathers,
fp32 shards and reductions) trains, writes fp32 weights and resumes bit for bit.

The CPU tests (tests/training/test_fsdp.py) cover two gloo ranks; these add what only a GPU runs:
the NCCL group, a CUDA device mesh, the fused CUDA AdamW on DTensor shards and bf16 on CUDA."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch.nn.attention import SDPBackend, sdpa_kernel

from tests.gpu._gpu import GPU
from tests.training.test_fsdp import SPEC, run

pytestmark = GPU


@pytest.fixture
def one_rank(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # CUBLAS_WORKSPACE_CONFIG is set by tests/gpu/_gpu.py
    yield
    torch.use_deterministic_algorithms(before)


def _spec(**trainer) -> dict:
    return dict(SPEC, trainer=dict(SPEC["trainer"], **trainer))


def _weights(run_dir, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step_{step}" / "model.safetensors"))


def test_fsdp_over_nccl_matches_ddp_in_fp32(tmp_path, one_rank):
    for strategy in ("ddp", "fsdp"):
        run(tmp_path / strategy, _spec(max_steps=3, strategy=strategy))
    assert not torch.distributed.is_initialized()
    assert (tmp_path / "fsdp" / "checkpoints" / "step_3" / ".metadata").is_file()
    a, b = _weights(tmp_path / "ddp", 3), _weights(tmp_path / "fsdp", 3)
    for key in a:
        # CUDA kernels may sum in another order than the CPU's; key biases: see the CPU test
        atol = 1e-4 if key.endswith("k_proj.bias") else 1e-5
        torch.testing.assert_close(b[key], a[key], atol=atol, rtol=0, msg=key)


def test_fsdp_bf16_on_gpu_resumes_bit_exactly(tmp_path, one_rank, deterministic):
    spec = _spec(strategy="fsdp", precision="bf16")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    with sdpa_kernel(SDPBackend.MATH):  # the fused attention backwards are not deterministic
        run(full, spec)
        (resumed / "checkpoints").mkdir(parents=True)
        shutil.copytree(full / "checkpoints" / "step_3", resumed / "checkpoints" / "step_3")
        os.symlink("step_3", resumed / "checkpoints" / "last")
        run(resumed, dict(spec, resume=True))
    a, b = _weights(full, 6), _weights(resumed, 6)
    start = _weights(full, 3)
    assert any(not torch.equal(a[k], start[k]) for k in a)  # the last 3 updates moved the weights
    for key in a:
        assert a[key].dtype == torch.float32 and a[key].isfinite().all(), key  # fp32 master weights
        assert torch.equal(a[key], b[key]), f"{key}: max diff {(a[key] - b[key]).abs().max()}"
