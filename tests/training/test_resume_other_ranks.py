"""A checkpoint resumed on another number of ranks (a run moved to more or fewer GPUs) continues
its epoch where it stood, and the checkpoints after it resume again."""

from __future__ import annotations

from dataclasses import replace

import torch

from speechssl.data.batching import BatchingConfig, build_loader
from speechssl.models.checkpoint import write_manifest
from speechssl.testing.datadirs import frame_units_dataset
from speechssl.training import checkpoints as ckpt
from speechssl.training.config import TrainerConfig
from speechssl.training.pretrain import BatchObjective
from speechssl.training.trainer import train_on_loaders
from tests.gpu._gpu import tiny_pretrain_model


def _as_if_two_ranks_wrote(step_dir, batches_per_rank: int) -> None:
    """Rewrite a one-rank checkpoint's trainer state as two ranks would have written it."""
    path = step_dir / ckpt.STATE_FILE
    state = torch.load(path, weights_only=True)
    state["rng"] = state["rng"] * 2
    state["batches_done"] = batches_per_rank
    state["sampler"] = {**state["sampler"], "num_replicas": 2, "batches_yielded": batches_per_rank}
    torch.save(state, path)
    (step_dir / "manifest.json").unlink()
    write_manifest(step_dir, {"step": state["step"]})


def test_a_two_rank_checkpoint_resumes_on_one_where_its_epoch_stood(tmp_path, caplog):
    dataset = frame_units_dataset(tmp_path / "data")
    loader = lambda: build_loader(dataset, BatchingConfig(max_batch_seconds=1.0), train=True, seed=0)  # noqa: E731
    per_epoch = len(loader().batch_sampler)  # 12 utterances of 0.5-0.86 s: one a batch
    model = lambda: BatchObjective(tiny_pretrain_model("hubert_tiny"), ["units"])  # noqa: E731
    config = TrainerConfig(max_steps=2, save_every=2, log_every=1, lr=1e-4, num_workers=0)
    exp = tmp_path / "exp"
    train_on_loaders(model(), loader(), config, exp)
    _as_if_two_ranks_wrote(exp / "checkpoints" / "step_2", batches_per_rank=2)  # 4 batches of the epoch

    with caplog.at_level("INFO"):
        result = train_on_loaders(model(), loader(), replace(config, max_steps=4), exp,
                                  resume=True)  # fmt: skip
    assert result.step == 4
    assert f"saved by 2 ranks, now 1: epoch 0 continues after batch 4 of {per_epoch}" in caplog.text
    assert "(epoch 0, batch 4 of the epoch)" in caplog.text
    state = torch.load(exp / "checkpoints" / "step_4" / ckpt.STATE_FILE, weights_only=True)
    assert state["sampler"]["num_replicas"] == 1 and state["sampler"]["batches_yielded"] == 6  # 4 + 2 steps
    assert state["batches_done"] == 6
    again = train_on_loaders(model(), loader(), replace(config, max_steps=6), exp,
                             resume=True)  # fmt: skip
    assert again.step == 6
