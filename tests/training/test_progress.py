"""Progress on the console: a line after the first update and then every few seconds (besides every
`log_every` updates), during validation too, from every training command (they share the Trainer)."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from speechssl.testing.training import ToyBatchSampler, ToyDataset, ToyModel, toy_collate
from speechssl.training import TrainerConfig, train
from speechssl.training import logging as train_logging


def _train(tmp_path, caplog, **trainer):
    torch.manual_seed(0)
    cfg = TrainerConfig(**{"max_steps": 5, "save_every": 5, "log_every": 100, "lr": 0.01, **trainer})
    with caplog.at_level(logging.INFO, logger="speechssl.training"):
        train(
            ToyModel(),
            ToyDataset(16),
            toy_collate,
            ToyBatchSampler(16, 4, shuffle=False),
            cfg,
            tmp_path,
            valid_dataset=ToyDataset(8, seed=5),
            valid_sampler=ToyBatchSampler(8, 2, shuffle=False),
        )
    return [r.getMessage() for r in caplog.records]


def _steps(lines: list[str]) -> list[int]:
    return [int(m.group(1)) for line in lines if (m := re.match(r"step (\d+)/\d+ ", line))]


def test_first_update_is_logged_although_log_every_is_far(tmp_path, caplog):
    lines = _train(tmp_path, caplog)
    assert any(line.startswith("training: updates 1 to 5;") for line in lines)
    assert _steps(lines) == [1, 5]  # the first update, then the log step (max_steps)
    first = next(line for line in lines if line.startswith("step 1/5 "))
    assert "loss " in first and "ETA " in first


def test_a_line_every_few_seconds_between_log_steps_and_in_validation(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(train_logging, "HEARTBEAT_SECONDS", 0.0)  # every update is "a few seconds" later
    lines = _train(tmp_path, caplog)
    assert _steps(lines) == [1, 2, 3, 4, 5]
    assert [line for line in lines if line.startswith("validating at step 5: batch")] == [
        f"validating at step 5: batch {i}/4" for i in range(1, 5)
    ]


def test_heartbeat_leaves_training_unchanged(tmp_path, caplog, monkeypatch):
    """The heartbeat reads the main rank's sums only: the weights end the same with or without it."""
    _train(tmp_path / "a", caplog)
    monkeypatch.setattr(train_logging, "HEARTBEAT_SECONDS", 0.0)
    _train(tmp_path / "b", caplog)
    from speechssl.training import load_checkpoint

    a, _ = load_checkpoint(tmp_path / "a" / "checkpoints" / "last")
    b, _ = load_checkpoint(tmp_path / "b" / "checkpoints" / "last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("log_every", [1, 2])
def test_log_steps_are_not_doubled(tmp_path, caplog, monkeypatch, log_every):
    monkeypatch.setattr(train_logging, "HEARTBEAT_SECONDS", 0.0)
    assert _steps(_train(tmp_path, caplog, log_every=log_every)) == [1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def finetune_setup(tmp_path_factory):
    from speechssl.models.checkpoint import save_checkpoint
    from speechssl.models.model import build_model
    from speechssl.testing.datadirs import make_data_dir
    from speechssl.testing.models import tiny_config

    root = tmp_path_factory.mktemp("ft")
    config = tiny_config()
    torch.manual_seed(0)
    save_checkpoint(build_model(config), config, root / "upstream")
    corpus = make_data_dir(root / "corpus", name="all").path
    data = root / "asr"
    data.mkdir()
    for split in ("train", "dev", "test"):
        (data / split).symlink_to(corpus)
    return root / "upstream", data


@pytest.mark.parametrize("method", ["full", "lora"])
def test_finetune_first_line_names_the_method_and_its_first_update_is_logged(
    finetune_setup, tmp_path, caplog, method
):
    from speechssl.testing.cli import finetune_train

    upstream, data = finetune_setup
    with caplog.at_level(logging.INFO, logger="speechssl"):
        assert finetune_train(data, tmp_path / "ft", upstream, "--method", method, "--max-steps", "2",
                              "--set", "max_batch_seconds=4.0") == 0  # fmt: skip
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith(f"tuning {method}: "), lines[:3]
    assert "step 1/2 (50%)" in "\n".join(lines)
