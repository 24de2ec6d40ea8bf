"""`downstream report` never prints stale numbers: after `train --resume` the convergence and
sweep columns come from best.json (the chosen checkpoint, and so the test score, unchanged), and
its own output follows the output rule (the marker lists the files; an edited one is refused)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
import yaml

from speechssl.downstream import DownstreamConfig, HeadConfig
from speechssl.downstream import runner as runner_mod
from speechssl.downstream.report import load_results, write_report
from speechssl.downstream.runner import evaluate_downstream, train_downstream
from speechssl.errors import OutputExistsError
from speechssl.outputs import FILES_RECORD, LOCK, MARKER
from speechssl.testing.cli import run_cli


class ScriptedDev:
    """score_split's stand-in: dev scores from a list in call order, every other split a constant."""

    def __init__(self, values: list[float], constant: float = 0.5) -> None:
        self.values, self.constant = list(values), constant

    def __call__(self, model, split, config):
        torch.rand(3), random.random(), np.random.rand()  # draws like a real scoring pass
        return {"accuracy": self.values.pop(0) if split == "dev" else self.constant}


def _config(**kw) -> DownstreamConfig:
    base = {"head": HeadConfig(hidden_dim=8), "max_batch_seconds": 2.0, "eval_every": 2, "log_every": 2}
    return DownstreamConfig(**{**base, **kw})


def _sweep_lines(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("| ks | fbank | 0.0")]


def test_report_after_a_resume_shows_the_current_convergence_and_sweep(task_data, tmp_path, monkeypatch):
    """The hostile test: train (max_steps 6), evaluate, `train --resume --max-steps 20`, report.
    The resume keeps the chosen checkpoint (lr 1e-2, step 4) but the chosen run now stops by
    patience at step 8 and the other rate's best dev result is 0.75 at step 10 (stopped at 14)."""
    config = _config(lr_sweep=[1e-2, 1e-3], patience=2)
    exp = tmp_path / "ks_fbank"
    # lr 1e-2 at steps 2, 4, 6, then lr 1e-3 at steps 2, 4, 6
    monkeypatch.setattr(runner_mod, "score_split", ScriptedDev([0.5, 0.9, 0.8, 0.3, 0.4, 0.5]))
    first = train_downstream("ks", "fbank", task_data["ks"], exp, config, max_steps=6)
    assert (first["lr"], first["step"], first["stopped"], first["last_step"]) == (1e-2, 4, "max_steps", 6)
    evaluate_downstream(exp)
    before = write_report([exp], tmp_path / "before")["markdown"].read_text()
    assert _sweep_lines(before) == [
        "| ks | fbank | 0.01* | accuracy 90.00 | 4 | 6 | max_steps |",
        "| ks | fbank | 0.001 | accuracy 50.00 | 6 | 6 | max_steps |",
    ]

    # resumed: lr 1e-2 at step 8 (patience: stops), lr 1e-3 at steps 8..14 (best 0.75 at 10)
    monkeypatch.setattr(runner_mod, "score_split", ScriptedDev([0.8, 0.6, 0.75, 0.7, 0.7]))
    again = train_downstream("ks", "fbank", task_data["ks"], exp, config, max_steps=20, resume=True)
    assert (again["lr"], again["step"], again["stopped"], again["last_step"]) == (1e-2, 4, "patience", 8)
    stale = json.loads((exp / "results_test.json").read_text())
    assert stale["last_step"] == 6 and stale["stopped"] == "max_steps"  # not evaluated again

    assert run_cli("downstream", "report", "--exps", exp, "--out", tmp_path / "after") == 0
    md = (tmp_path / "after" / "results.md").read_text()
    assert _sweep_lines(md) == [
        "| ks | fbank | 0.01* | accuracy 90.00 | 4 | 8 | patience |",
        "| ks | fbank | 0.001 | accuracy 75.00 | 10 | 14 | patience |",
    ]
    assert "Stopped at max_steps" not in md
    row = json.loads((tmp_path / "after" / "results.json").read_text())["experiments"][0]
    assert row["value"] == 0.5 and (row["step"], row["last_step"], row["stopped"]) == (4, 8, "patience")
    assert row["dev_curve"] == [[2, 0.5], [4, 0.9], [6, 0.8], [8, 0.8]]
    assert row["sweep"][1]["dev_curve"][-1] == [14, 0.7]


def test_results_of_an_unfinished_training_are_refused(tmp_path):
    """Results scored on a chosen checkpoint, but nothing chooses one now (best.json removed) or a
    training holds the lock (or a killed one left it): best.json may be about to change."""
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "downstream.yaml").write_text(yaml.safe_dump({"task": "ks", "upstream": "fbank"}))
    row = {"task": "ks", "metric": "accuracy", "value": 0.3, "split": "test", "upstream": "fbank",
           "checkpoint": str(exp / "checkpoints/step_10"), "step": 10, "lr": 1e-3}  # fmt: skip
    (exp / "results_test.json").write_text(json.dumps(row))
    evaluate = r"then `speechssl downstream evaluate --out .*exp --split test`$"
    with pytest.raises(
        FileNotFoundError,
        match=r"results_test.json scored step 10 but .*best.json does not exist: training of .* did not "
        r"finish: finish it with `speechssl downstream train \.\.\. --resume`, " + evaluate,
    ):
        load_results([exp])
    (exp / "best.json").write_text(json.dumps({"run_dir": ".", "step": 10, "lr": 1e-3}))
    assert load_results([exp])[0]["value"] == 0.3
    (exp / LOCK).write_text("{}")
    killed = r"exp is being trained, or its last training was killed \(.*\.speechssl_lock exists\)"
    with pytest.raises(ValueError, match=killed + ".*" + evaluate):
        load_results([exp])


def _scored(root, name: str, task: str, metric: str, value: float):
    """An evaluated experiment (record and results, with layer weights and a dev curve)."""
    d = root / f"{task}_{name}"
    d.mkdir()
    (d / "downstream.yaml").write_text(yaml.safe_dump({"task": task, "upstream": name, "name": name}))
    results = {"task": task, "metric": metric, "value": value, "split": "test", "upstream": name,
               "metrics": {metric: value}, "layer_weights": [0.5, 0.5], "lr": 1e-3, "step": 2,
               "sweep": [{"lr": 1e-3, "dev": value, "step": 2, "last_step": 4, "stopped": "max_steps",
                          "dev_curve": [[2, value], [4, value]]}]}  # fmt: skip
    (d / "results_test.json").write_text(json.dumps(results))
    return d


def test_report_output_follows_the_output_rule(tmp_path):
    ks = _scored(tmp_path, "a", "ks", "accuracy", 0.5)
    pr = _scored(tmp_path, "a", "pr", "per", 0.4)
    out = tmp_path / "report"
    write_report([ks, pr], out)
    marker = json.loads((out / MARKER).read_text())
    assert {
        "results.md",
        "results.json",
        "layer_weights.png",
        "dev_curves_ks.png",
        "dev_curves_pr.png",
    } <= set(marker["files"])
    # a re-run replaces its own files, drops the ones it no longer writes, keeps the user's
    (out / "notes.txt").write_text("mine\n")
    written = write_report([ks], out)
    assert not (out / "dev_curves_pr.png").exists() and (out / "dev_curves_ks.png").is_file()
    assert (out / "notes.txt").read_text() == "mine\n"
    assert "| pr |" not in written["markdown"].read_text()

    # a hand-edited results.md is refused, not overwritten; --overwrite replaces it
    edited = written["markdown"].read_text() + "\nMy conclusions.\n"
    (out / "results.md").write_text(edited)
    with pytest.raises(
        OutputExistsError,
        match=r"^--out .*report: results.md changed since `speechssl downstream report` wrote it; "
        r"move it away, or pass --overwrite to replace it$",
    ):
        write_report([ks, pr], out)
    assert (out / "results.md").read_text() == edited and (out / "results.json").is_file()
    assert "My conclusions" not in write_report([ks, pr], out, overwrite=True)["markdown"].read_text()
    write_report([ks], out)  # unchanged since: replaced without --overwrite
    assert (out / "notes.txt").read_text() == "mine\n"
    # a file of the user's where the report now writes is refused too
    (out / "dev_curves_pr.png").write_bytes(b"my plot")
    with pytest.raises(OutputExistsError, match=r"dev_curves_pr.png is not the report's own; move it away"):
        write_report([ks, pr], out)
    assert (out / "dev_curves_pr.png").read_bytes() == b"my plot"
    # files the marker lists but nothing noted (a run killed before it noted them) are its own
    (out / "dev_curves_pr.png").unlink()
    (out / FILES_RECORD).unlink()
    write_report([ks, pr], out)


def test_report_into_the_current_directory(tmp_path, monkeypatch, capsys):
    ks = _scored(tmp_path, "a", "ks", "accuracy", 0.5)
    (tmp_path / "rep").mkdir()
    monkeypatch.chdir(tmp_path / "rep")
    for _ in range(2):  # and again, replacing its own files
        assert run_cli("downstream", "report", "--exps", ks, "--out", ".") == 0
    assert "| ks | a | 0.001* | accuracy 50.00 | 2 | 4 | max_steps |" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "rep").iterdir() if not p.name.startswith(".")) == [
        "dev_curves_ks.png",
        "layer_weights.png",
        "results.json",
        "results.md",
    ]


def test_a_report_killed_after_writing_a_file_before_noting_it_is_replaced_by_the_next(tmp_path, monkeypatch):
    """A re-run killed between writing results.md and noting it left the old note beside the new
    file: the next run took its own file for one the user changed since."""
    import speechssl.downstream.report as report

    ks = _scored(tmp_path, "a", "ks", "accuracy", 0.5)
    out = tmp_path / "report"
    write_report([ks], out)

    def killed(path, command):
        raise KeyboardInterrupt  # as kill -9 right after the atomic write

    monkeypatch.setattr(report, "record_output", killed)
    with pytest.raises(KeyboardInterrupt):  # results.md rewritten (a new mtime), its note the old one
        write_report([ks], out)
    monkeypatch.undo()
    assert write_report([ks], out)["markdown"].is_file()


def test_a_file_it_no_longer_writes_is_dropped_only_if_unchanged_even_with_overwrite(tmp_path):
    """--overwrite lets the report replace what it writes; a file it drops (a task no longer
    reported) that the user edited since is not the report's to delete."""
    ks = _scored(tmp_path, "a", "ks", "accuracy", 0.5)
    pr = _scored(tmp_path, "a", "pr", "per", 0.4)
    out = tmp_path / "report"
    write_report([ks, pr], out)
    (out / "dev_curves_pr.png").write_bytes(b"annotated by hand")
    write_report([ks], out, overwrite=True)
    assert (out / "dev_curves_pr.png").read_bytes() == b"annotated by hand"
