"""A short prune run: the sparsity warm-up keeps its share of --max-steps, a ramp longer than the
run is a warning, and gates forced to a target they missed are a warning naming both sparsities
(and recorded in prune_summary.json). distill and prune write EXP/config.yaml as pretrain does."""

from __future__ import annotations

import json
import logging

import yaml

from speechssl.compression import DistillConfig, PruneConfig
from speechssl.compression.prune import check_warmup_fits, report_sparsity
from speechssl.config import load_config
from speechssl.testing.cli import run_cli
from tests.compression.test_distill import _cli_setup

PRUNE = "target_sparsity: 0.5\nsparsity_warmup_steps: 60\n"  # the TRAIN section runs 100 updates


def _prune(tmp_path, caplog, *extra):
    common = _cli_setup(tmp_path, PRUNE, max_steps=4)
    with caplog.at_level(logging.INFO, logger="speechssl.compression.prune"):
        assert (
            run_cli("prune", *common, "--config", tmp_path / "prune.yaml", "--out", tmp_path / "p", *extra)
            == 0
        )
    return tmp_path / "p"


def test_short_run_scales_the_warmup_and_warns_that_the_gates_missed_the_target(tmp_path, caplog):
    exp = _prune(tmp_path, caplog)
    assert (
        "sparsity warm-up: 2 updates (the config's 60 of 100; --max-steps 4 keeps its share)" in caplog.text
    )
    used = load_config(PruneConfig, exp / "config.yaml")  # the resolved config, next to the experiment
    written = {"config.yaml", "checkpoints", "tensorboard", "pruned", "final", "prune_summary.json"}
    assert written <= {p.name for p in exp.iterdir()}  # what `speechssl prune --help` says it writes
    assert used.sparsity_warmup_steps == 2 and used.trainer.max_steps == 4
    summary = json.loads((exp / "prune_summary.json").read_text())
    assert summary["reached_target"] is False and summary["expected_sparsity"] < 0.2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    expected = (
        f"the gates missed the target: expected sparsity {summary['expected_sparsity']:.3f} after 4 updates, "
        "target 0.500; the pruned model is forced to the target"
    )
    assert any(w.startswith(expected) for w in warnings), warnings
    assert abs(summary["sparsity"] - 0.5) < 0.02  # forced there all the same


def test_warmup_not_shorter_than_the_run_is_a_warning(caplog):
    config = PruneConfig(sparsity_warmup_steps=200, target_sparsity=0.6)  # trainer.max_steps 1000
    with caplog.at_level(logging.WARNING, logger="speechssl.compression.prune"):
        check_warmup_fits(config)
    assert caplog.text == ""
    config = load_config(PruneConfig, None, ["sparsity_warmup_steps=2000", "target_sparsity=0.6"])
    with caplog.at_level(logging.WARNING, logger="speechssl.compression.prune"):
        check_warmup_fits(config)
    assert (
        "sparsity_warmup_steps (2000) is not shorter than the run (trainer.max_steps 1000): by the last "
        "update the target has ramped to 0.300 of 0.600" in caplog.text
    )


def test_reached_target_is_an_info_line(caplog):
    with caplog.at_level(logging.INFO, logger="speechssl.compression.prune"):
        assert report_sparsity(0.745, 0.75, 100)
        assert not report_sparsity(0.70, 0.75, 100)
    levels = [(r.levelno, r.getMessage()[:30]) for r in caplog.records]
    assert levels == [
        (logging.INFO, "gates reached the target: expe"),
        (logging.WARNING, "the gates missed the target: e"),
    ]


def test_distill_writes_its_resolved_config(tmp_path):
    common = _cli_setup(tmp_path, PRUNE, max_steps=2)
    out = tmp_path / "d"
    assert (
        run_cli(
            "distill",
            *common,
            "--config",
            tmp_path / "distill.yaml",
            "--out",
            out,
            "--set",
            "trainer.lr=0.003",
        )
        == 0
    )
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert {"config.yaml", "checkpoints", "tensorboard", "final"} <= {p.name for p in out.iterdir()}
    assert saved["trainer"]["lr"] == 0.003 and saved["trainer"]["max_steps"] == 2
    assert load_config(DistillConfig, out / "config.yaml").student.num_layers == 1
