"""Convergence by default: patience on the dev metric (trainer hook and runner), the lr sweep's
choice, and a resumed run that keeps its patience state exactly."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from speechssl.downstream import DownstreamConfig, HeadConfig
from speechssl.downstream import runner as runner_mod
from speechssl.downstream.runner import evaluate_downstream, patience_state, train_downstream
from speechssl.testing.training import ToyBatchSampler, ToyDataset, ToyModel, toy_collate
from speechssl.training import TrainerConfig, train

SMALL = HeadConfig(hidden_dim=8)


def small_config(**kw) -> DownstreamConfig:
    base = {"head": SMALL, "max_batch_seconds": 2.0, "eval_every": 2, "log_every": 2, "lr": 1e-2}
    return DownstreamConfig(**{**base, **kw})


class FakeDev:
    """A stand-in for runner.score_split: dev scores from a list (in call order) or a constant;
    every call also draws from every RNG, which must not change training."""

    def __init__(self, values=None, constant: float = 0.5, fail_at_call: int | None = None) -> None:
        self.values, self.constant, self.fail_at_call = list(values or []), constant, fail_at_call
        self.calls: list[str] = []

    def __call__(self, model, split, config):
        self.calls.append(split)
        if self.fail_at_call is not None and len(self.calls) == self.fail_at_call:
            raise KeyboardInterrupt("killed between a checkpoint and its dev score")
        torch.rand(7), random.random(), np.random.rand()
        value = self.values.pop(0) if self.values and split == "dev" else self.constant
        return {"accuracy": value}


def _steps(run_dir) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*"))


# --- the rule ------------------------------------------------------------------------------
def test_patience_state_counts_evaluations_without_a_strict_improvement():
    higher = lambda a, b: a > b  # noqa: E731
    lower = lambda a, b: a < b  # noqa: E731
    flat = [[2, 0.5], [4, 0.5], [6, 0.5]]
    assert patience_state(flat, higher, 2) == (2, 2, True)  # a tie is no improvement
    assert patience_state(flat, higher, 3) == (2, 2, False)
    assert patience_state(flat, higher, None) == (2, 2, False)
    rising = [[2, 0.1], [4, 0.3], [6, 0.2], [8, 0.4]]
    assert patience_state(rising, higher, 1) == (8, 0, False)
    # an error rate: lower wins, so the same curve's best is its first point
    assert patience_state(rising, lower, 2) == (2, 3, True)
    assert patience_state([], higher, 1) == (None, 0, False)
    with pytest.raises(ValueError, match="patience must be >= 1 evaluations or null, found 0"):
        small_config(patience=0)


# --- the trainer hook ----------------------------------------------------------------------
def _toy(tmp_path, on_checkpoint=None, *, max_steps=8, resume=False):
    torch.manual_seed(0)
    model = ToyModel(dropout=0.3)  # dropout: training draws from the global RNG
    config = TrainerConfig(max_steps=max_steps, save_every=2, log_every=2, lr=0.05, keep_last=10)
    sampler = ToyBatchSampler(16, 4, shuffle=True)
    result = train(
        model,
        ToyDataset(16),
        toy_collate,
        sampler,
        config,
        tmp_path,
        on_checkpoint=on_checkpoint,
        resume=resume,
    )
    return model, result


def _draws(step, path):
    torch.randn(5), random.random(), np.random.rand()  # a scorer that uses RNG
    return False


def test_on_checkpoint_stops_the_trainer_and_leaves_its_rng_alone(tmp_path):
    plain, result = _toy(tmp_path / "plain")
    assert not result.stopped_early and result.step == 8
    drawn, _ = _toy(tmp_path / "drawn", _draws)
    for a, b in zip(plain.parameters(), drawn.parameters()):
        assert torch.equal(a, b)  # scoring between updates does not change the run

    asked = []
    _, result = _toy(tmp_path / "stop", lambda step, path: asked.append((step, path.name)) or step == 4)
    assert result.stopped_early and result.step == 4 and asked == [(2, "step_2"), (4, "step_4")]
    assert _steps(tmp_path / "stop") == [2, 4]
    # resumed with a hook that lets it go on: asked once about the checkpoint it resumes from,
    # then the run ends as the uninterrupted one did
    asked.clear()
    resumed, result = _toy(tmp_path / "stop", lambda step, path: asked.append(step) or False, resume=True)
    assert asked == [4, 6, 8] and result.step == 8 and not result.stopped_early
    for a, b in zip(plain.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


# --- the runner ----------------------------------------------------------------------------
def test_patience_stops_a_run_whose_dev_metric_stalls(task_data, tmp_path, monkeypatch):
    fake = FakeDev(constant=0.25)
    monkeypatch.setattr(runner_mod, "score_split", fake)
    out = tmp_path / "exp"
    best = train_downstream("ks", "fbank", task_data["ks"], out, small_config(patience=2), max_steps=40)
    # evaluations at 2, 4, 6: no improvement after step 2 for 2 evaluations -> stop at 6, not 40
    assert _steps(out) == [2, 4, 6]
    assert best["stopped"] == "patience" and best["last_step"] == 6 and best["step"] == 2
    assert best["dev_curve"] == [[2, 0.25], [4, 0.25], [6, 0.25]]
    assert json.loads((out / "best.json").read_text())["stopped"] == "patience"
    assert fake.calls == ["dev"] * 3  # each checkpoint scored once, during training
    results = evaluate_downstream(out)
    assert results["stopped"] == "patience" and results["step"] == 2 and results["last_step"] == 6
    assert results["dev_curve"] == best["dev_curve"] and len(results["sweep"]) == 1

    # without patience the same run goes to max_steps
    monkeypatch.setattr(runner_mod, "score_split", FakeDev(constant=0.25))
    full = train_downstream(
        "ks", "fbank", task_data["ks"], tmp_path / "full", small_config(patience=None), max_steps=8
    )
    assert (
        full["stopped"] == "max_steps"
        and full["last_step"] == 8
        and _steps(tmp_path / "full") == [2, 4, 6, 8]
    )


def test_lr_sweep_picks_the_rate_with_the_best_dev_metric(task_data, tmp_path, monkeypatch):
    # runs go in sweep order, 2 evaluations each: 1e-3 holds the best dev score (0.6 at step 2)
    monkeypatch.setattr(runner_mod, "score_split", FakeDev([0.3, 0.4, 0.6, 0.5, 0.2, 0.1]))
    config = small_config(lr_sweep=[1e-2, 1e-3, 1e-4], patience=None)
    best = train_downstream("ks", "fbank", task_data["ks"], tmp_path / "exp", config, max_steps=4)
    assert best["lr"] == 1e-3 and best["step"] == 2 and best["run_dir"] == "lr_0.001"
    assert [r["dev_curve"] for r in best["runs"]] == [
        [[2, 0.3], [4, 0.4]],
        [[2, 0.6], [4, 0.5]],
        [[2, 0.2], [4, 0.1]],
    ]
    results = evaluate_downstream(tmp_path / "exp")
    assert results["lr"] == 1e-3
    assert [(s["lr"], s["dev"], s["step"]) for s in results["sweep"]] == [
        (1e-2, 0.4, 4),
        (1e-3, 0.6, 2),
        (1e-4, 0.2, 2),
    ]


def test_a_resumed_run_keeps_its_patience_counter(task_data, tmp_path, monkeypatch):
    """A run with a stalled dev metric and patience 3 stops at step 8 (evaluations 2..8) whether
    it runs through, resumes after max_steps 4, or was killed between step 6's checkpoint and its
    score; its weights are the same bit for bit."""
    config = small_config(patience=3)
    monkeypatch.setattr(runner_mod, "score_split", FakeDev(constant=0.5))
    through = tmp_path / "through"
    best = train_downstream("ks", "fbank", task_data["ks"], through, config, max_steps=40)
    assert best["stopped"] == "patience" and best["last_step"] == 8

    # a first session of 4 updates (2 evaluations without improvement), then resumed for 40
    monkeypatch.setattr(runner_mod, "score_split", FakeDev(constant=0.5))
    split = tmp_path / "split"
    first = train_downstream("ks", "fbank", task_data["ks"], split, config, max_steps=4)
    assert first["stopped"] == "max_steps" and first["evals_since_best"] == 1
    again = train_downstream("ks", "fbank", task_data["ks"], split, config, max_steps=40, resume=True)
    assert again["stopped"] == "patience" and again["last_step"] == 8 and _steps(split) == [2, 4, 6, 8]

    # killed after step 6 was written but before it was scored: the resume scores it first
    fake = FakeDev(constant=0.5, fail_at_call=3)
    monkeypatch.setattr(runner_mod, "score_split", fake)
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        train_downstream("ks", "fbank", task_data["ks"], killed, config, max_steps=40)
    assert _steps(killed) == [2, 4, 6] and "step_6" not in json.loads(
        (killed / "dev_scores.json").read_text()
    )
    fake.fail_at_call = None
    again = train_downstream("ks", "fbank", task_data["ks"], killed, config, max_steps=40, resume=True)
    assert again["stopped"] == "patience" and again["last_step"] == 8 and _steps(killed) == [2, 4, 6, 8]

    reference = load_file(str(through / "checkpoints" / "step_8" / "model.safetensors"))
    for run in (split, killed):
        state = load_file(str(run / "checkpoints" / "step_8" / "model.safetensors"))
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], reference[k]) for k in reference), run

    # a stopped run stays stopped on resume, even with a larger max_steps
    stopped = train_downstream("ks", "fbank", task_data["ks"], through, config, max_steps=80, resume=True)
    assert stopped["last_step"] == 8 and _steps(through) == [2, 4, 6, 8]
    # a larger patience lets it go on from its last checkpoint
    longer = train_downstream(
        "ks", "fbank", task_data["ks"], through, small_config(patience=4), max_steps=80, resume=True
    )
    assert longer["last_step"] == 10 and longer["stopped"] == "patience"
