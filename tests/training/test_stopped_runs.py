"""Runs stopped (Ctrl-C, kill) and resumed end as an uninterrupted run ends: the same `best`, the
checkpoint of the lowest validation loss, never pruned; a result that counts every session."""

import pytest
import torch

from speechssl.testing.training import ToyBatchSampler, ToyDataset, ToyModel, toy_collate
from speechssl.training import TrainerConfig, checkpoints, train


def _train(out, max_steps, resume=False, monitor=None):
    torch.manual_seed(0)
    config = TrainerConfig(max_steps=max_steps, save_every=2, log_every=2, keep_last=1, lr=0.01)
    data, sampler = ToyDataset(16), ToyBatchSampler(16, 4, shuffle=False)
    valid = {"valid_dataset": ToyDataset(8, seed=5), "valid_sampler": ToyBatchSampler(8, 4, shuffle=False)}
    return train(
        ToyModel(dropout=0.0),
        data,
        toy_collate,
        sampler,
        config,
        out,
        resume=resume,
        valid_monitor=monitor,
        **valid,
    )


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


class _WarnsOnce:
    """A validation monitor that warns at its first check only, as a collapse seen before a kill."""

    calls = 0

    def reset(self):
        pass

    def update(self, batch):
        pass

    def compute(self):
        return {}

    def check(self, values):
        _WarnsOnce.calls += 1
        return {"collapse": "RankMe fell"} if _WarnsOnce.calls == 1 else {}


def test_a_resumed_runs_result_counts_every_session_and_keeps_earlier_warnings(tmp_path):
    """What the run's summary (train_summary.json, the recipe's table) reports: the audio and time
    of the whole run, not of the last session (a resume after the final checkpoint said 0 s and
    0 audio-s/s), and a warning of an earlier session."""
    whole = _train(tmp_path / "whole", 8)
    _WarnsOnce.calls = 0
    first = _train(tmp_path / "resumed", 4, monitor=_WarnsOnce())
    resumed = _train(tmp_path / "resumed", 8, resume=True, monitor=_WarnsOnce())
    assert resumed.run_audio_seconds == pytest.approx(whole.run_audio_seconds) and whole.run_audio_seconds > 0
    assert resumed.run_wall_seconds > first.run_wall_seconds > 0
    assert resumed.warnings == ("first at step 2: RankMe fell",)
    again = _train(tmp_path / "resumed", 8, resume=True)  # nothing left to train
    assert again.run_audio_seconds == pytest.approx(whole.run_audio_seconds)
    assert again.run_wall_seconds > first.run_wall_seconds and again.warnings == resumed.warnings
