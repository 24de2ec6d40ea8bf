"""A run stopped (Ctrl-C, kill) while it points `last` and `best` at a new checkpoint resumes to the
`best` an uninterrupted run ends with: the checkpoint of the lowest validation loss, never pruned."""

import pytest
import torch

from speechssl.testing.training import ToyBatchSampler, ToyDataset, ToyModel, toy_collate
from speechssl.training import TrainerConfig, checkpoints, train


def _train(out, max_steps, resume=False):
    torch.manual_seed(0)
    config = TrainerConfig(max_steps=max_steps, save_every=2, log_every=2, keep_last=1, lr=0.01)
    data, sampler = ToyDataset(16), ToyBatchSampler(16, 4, shuffle=False)
    valid = {"valid_dataset": ToyDataset(8, seed=5), "valid_sampler": ToyBatchSampler(8, 4, shuffle=False)}
    return train(ToyModel(dropout=0.0), data, toy_collate, sampler, config, out, resume=resume, **valid)


def _stop_at(monkeypatch, call):
    """Ctrl-C at the `call`-th pointing of a link whose name passes `call`'s test (numbered from 1)."""
    point, seen = checkpoints.point, []

    def stopping(root, name, target):
        seen.append(name)
        if call(len(seen), name, target):
            raise KeyboardInterrupt
        point(root, name, target)

    monkeypatch.setattr(checkpoints, "point", stopping)


@pytest.mark.parametrize(
    ("max_steps", "stop"),
    [
        (8, lambda n, name, target: name == "best" and target.name == "step_8"),  # the last, best, save
        (2, lambda n, name, target: n == 1),  # the first save: no link yet
    ],
    ids=["before-best-of-the-last-save", "before-any-link"],
)
def test_a_run_stopped_while_linking_resumes_to_the_same_best(tmp_path, monkeypatch, max_steps, stop):
    whole = _train(tmp_path / "whole", max_steps)
    assert whole.best_checkpoint is not None and whole.best_checkpoint.name == f"step_{max_steps}"
    with monkeypatch.context() as patch:
        _stop_at(patch, stop)
        with pytest.raises(KeyboardInterrupt):
            _train(tmp_path / "stopped", max_steps)
    resumed = _train(tmp_path / "stopped", max_steps, resume=True)
    assert resumed.best_checkpoint is not None and resumed.best_checkpoint.name == whole.best_checkpoint.name
    assert resumed.best_valid_loss == whole.best_valid_loss
    weights = tmp_path / "stopped" / "checkpoints" / "best" / "model.safetensors"
    assert weights.read_bytes() == (whole.best_checkpoint / "model.safetensors").read_bytes()
