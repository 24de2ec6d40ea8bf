"""Upstream names: the default derived from the source, `downstream train --name` in the
experiment record, and `downstream report` naming its columns by it and refusing collisions."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from speechssl.downstream.report import write_report
from speechssl.interop.upstream import upstream_name
from speechssl.testing.cli import downstream_train, run_cli


def test_default_name_is_the_run_not_a_generic_folder(tmp_path):
    for sub in (
        "exp/hubert_iter2/checkpoints/last",
        "exp/hubert_iter2/checkpoints/step_20",
        "exp/distill/final",
        "exp/ft/final/upstream",
        "hf/wavlm_base",
    ):
        (tmp_path / sub).mkdir(parents=True)
    (tmp_path / "hubert_base_ls960.pt").write_bytes(b"")
    assert upstream_name("fbank") == "fbank"
    assert upstream_name(tmp_path / "exp/hubert_iter2/checkpoints/last") == "hubert_iter2"
    assert upstream_name(f"{tmp_path}/exp/hubert_iter2/checkpoints/step_20/") == "hubert_iter2"
    assert upstream_name(tmp_path / "exp/distill/final") == "distill"
    assert upstream_name(tmp_path / "exp/ft/final/upstream") == "ft"
    assert upstream_name(tmp_path / "hf/wavlm_base") == "wavlm_base"
    assert upstream_name(tmp_path / "hubert_base_ls960.pt") == "hubert_base_ls960"
    assert upstream_name(tmp_path / "exp/hubert_iter2/checkpoints/last/../step_20") == "hubert_iter2"


def _experiment(
    root, exp: str, task: str, value: float, *, source: str, name: str | None = None, upstream: str = "last"
):
    """An evaluated experiment as `downstream train` + `evaluate` leave it (record and results)."""
    d = root / exp
    d.mkdir()
    record = {
        "task": task,
        "upstream": source,
        **({"name": name} if name else {}),
        "data_dir": "/d",
        "config": {},
    }
    (d / "downstream.yaml").write_text(yaml.safe_dump(record))
    (d / "results_test.json").write_text(
        json.dumps(
            {
                "task": task,
                "metric": "accuracy",
                "value": value,
                "split": "test",
                "upstream": upstream,
                "upstream_source": source,
                "metrics": {"accuracy": value},
                "layer_weights": [0.5, 0.5],
            }
        )
    )
    return d


def test_report_names_columns_by_the_record_and_refuses_a_collision(tmp_path):
    a = _experiment(
        tmp_path, "ks_a", "ks", 0.5, source="exp/hubert_iter1/checkpoints/last", name="hubert_iter1"
    )
    b = _experiment(
        tmp_path, "ks_b", "ks", 0.75, source="exp/hubert_iter2/checkpoints/last", name="hubert_iter2"
    )
    old = _experiment(
        tmp_path, "ks_old", "ks", 0.25, source="fbank", upstream="fbank"
    )  # a record without a name
    table = json.loads(write_report([a, b, old], tmp_path / "report")["json"].read_text())
    assert table["upstreams"] == ["hubert_iter1", "hubert_iter2", "fbank"]
    assert table["tasks"]["ks"]["values"] == {"hubert_iter1": 0.5, "hubert_iter2": 0.75, "fbank": 0.25}

    c = _experiment(tmp_path, "ks_c", "ks", 0.6, source="other/checkpoints/last", name="hubert_iter2")
    with pytest.raises(
        ValueError,
        match=r"two experiments give task ks for upstream hubert_iter2 \(.*ks_b from "
        r"exp/hubert_iter2/checkpoints/last and .*ks_c from other/checkpoints/last\)"
        r".*speechssl downstream train --name",
    ):
        write_report([a, b, c], tmp_path / "report2")
    assert not (tmp_path / "report2").exists()


def test_one_name_over_two_sources_is_a_warning(tmp_path, caplog):
    a = _experiment(tmp_path, "ks_a", "ks", 0.5, source="exp/a/checkpoints/last", name="hubert")
    b = _experiment(tmp_path, "pr_b", "pr", 0.4, source="exp/b/checkpoints/last", name="hubert")
    same = _experiment(tmp_path, "ic_a", "ic", 0.9, source="exp/./a/checkpoints/last", name="hubert")
    with caplog.at_level(logging.WARNING, logger="speechssl.downstream.report"):
        write_report([a, b, same], tmp_path / "report")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "upstream name hubert stands for two sources" in warnings[0]


def test_cli_name_goes_into_the_record_results_and_report(task_data, tmp_path, capsys):
    conf = tmp_path / "ks.yaml"
    conf.write_text("eval_every: 2\nlog_every: 2\nhead:\n  hidden_dim: 16\n")
    exps = []
    for name in ("fbank_a", "fbank_b"):
        exp = tmp_path / f"ks_{name}"
        assert (
            downstream_train(task_data["ks"], exp, "--name", name, "--config", conf, "--max-steps", "1") == 0
        )
        assert yaml.safe_load((exp / "downstream.yaml").read_text())["name"] == name
        assert run_cli("downstream", "evaluate", "--out", exp) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["upstream"] == name
        exps.append(str(exp))
    assert run_cli("downstream", "report", "--exps", *exps, "--out", tmp_path / "report") == 0
    assert "| task | metric | fbank_a | fbank_b |" in (tmp_path / "report" / "results.md").read_text()
    # a resumed run keeps its name; a bad name is refused before anything is written
    assert downstream_train(task_data["ks"], exps[0], "--config", conf, "--max-steps", "1", "--resume") == 0
    assert yaml.safe_load((tmp_path / "ks_fbank_a" / "downstream.yaml").read_text())["name"] == "fbank_a"
    assert downstream_train(task_data["ks"], tmp_path / "x", "--name", "a|b") == 1
    assert "upstream name 'a|b' must be non-empty text without '|'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_downstream_name_prints_the_default_name_recipes_use(tmp_path, capsys):
    run = tmp_path / "exp" / "hubert_iter2" / "checkpoints" / "last"
    run.mkdir(parents=True)
    assert run_cli("downstream", "name", "fbank", run, tmp_path / "exp" / "hubert_iter2") == 0
    assert capsys.readouterr().out.split() == ["fbank", "hubert_iter2", "hubert_iter2"]


def _scored(root, name: str, task: str, metric: str, value: float, *, source: str | None = None, sweep=None):
    """Results of one experiment as `downstream evaluate` writes them (with its lr sweep)."""
    d = root / f"{task}_{name}"
    d.mkdir()
    (d / "downstream.yaml").write_text(
        yaml.safe_dump(
            {"task": task, "upstream": source or name, "name": name, "data_dir": "/d", "config": {}}
        )
    )
    results = {
        "task": task,
        "metric": metric,
        "value": value,
        "split": "test",
        "upstream": name,
        "upstream_source": source or name,
        "metrics": {metric: value},
        "lr": 1e-3,
        "step": 4,
        "stopped": "patience",
        "last_step": 8,
        "sweep": sweep
        or [
            {"lr": 1e-2, "dev": value, "step": 2, "last_step": 6, "stopped": "patience",
             "dev_curve": [[2, value], [4, value], [6, value]]},
            {"lr": 1e-3, "dev": value, "step": 4, "last_step": 8, "stopped": "patience",
             "dev_curve": [[2, value / 2], [4, value], [6, value], [8, value]]},
        ],
    }  # fmt: skip
    (d / "results_test.json").write_text(json.dumps(results))
    return d


# (task, metric): values of fbank, a, b; ic: FBANK is the best row, so ic is left out
FIXTURE = {
    ("ks", "accuracy"): (0.1, 0.5, 0.9),
    ("pr", "per"): (0.8, 0.2, 0.4),
    ("ic", "accuracy"): (0.9, 0.5, 0.6),
}


def test_overall_score_on_a_hand_made_fixture(tmp_path):
    exps = []
    for (task, metric), values in FIXTURE.items():
        for name, value in zip(("fbank", "a", "b"), values):
            exps.append(
                _scored(tmp_path, name, task, metric, value, source="fbank" if name == "fbank" else None)
            )
    exps.append(_scored(tmp_path, "c", "ks", "accuracy", 0.3))  # no pr: no overall score
    written = write_report(exps, tmp_path / "report")
    overall = json.loads(written["json"].read_text())["overall"]
    # ks: a (0.5-0.1)/(0.9-0.1) = 0.5, b 1; pr (lower is better): a 1, b (0.4-0.8)/(0.2-0.8) = 2/3
    assert overall["baseline"] == "fbank" and overall["tasks"] == ["pr", "ks"]
    assert overall["excluded"] == {"ic": "no row beats FBANK"}
    scores = overall["scores"]
    assert scores["fbank"] == 0.0 and scores["a"] == pytest.approx(750.0)
    assert scores["b"] == pytest.approx(1000 * (1 + 2 / 3) / 2) and scores["c"] is None
    assert overall["missing"] == {"c": ["pr"]}
    md = written["markdown"].read_text()
    assert "| upstream | pr per % ↓ | ks accuracy % ↑ | ic accuracy % ↑ | SUPERB score ↑ |" in md
    assert "| a | 20.00 | 50.00 | 50.00 | 750 |" in md and "| b | 40.00 | 90.00 | 60.00 | 833 |" in md
    assert "| c | - | 30.00 | - | - |" in md
    assert "ic is left out of the overall score: no row beats FBANK" in md
    assert "c has no overall score: no result for pr" in md
    assert "FBANK is at chance on the mean-pooled tasks (ks, ic) by construction" in md
    # every learning rate's dev result, the chosen one marked; a curve PNG per task
    assert "| ks | a | 0.01 | accuracy 50.00 | 2 | 6 | patience |" in md
    assert "| ks | a | 0.001* | accuracy 50.00 | 4 | 8 | patience |" in md
    assert sorted(p.name for p in written["curves"]) == [
        "dev_curves_ic.png",
        "dev_curves_ks.png",
        "dev_curves_pr.png",
    ]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written["curves"])


def test_without_fbank_the_overall_score_is_not_computed(tmp_path):
    exps = [
        _scored(tmp_path, "a", "ks", "accuracy", 0.5),
        _scored(tmp_path, "b", "ks", "accuracy", 0.7),
    ]
    written = write_report(exps, tmp_path / "report")
    overall = json.loads(written["json"].read_text())["overall"]
    assert overall["baseline"] is None and overall["scores"] == {"a": None, "b": None}
    md = written["markdown"].read_text()
    assert "Overall score: not computed: no FBANK row" in md and "| a | 50.00 | - |" in md
    assert "at chance" not in md
    # two rows of upstream fbank: ambiguous
    two = [
        _scored(tmp_path, "fbank_a", "pr", "per", 0.5, source="fbank"),
        _scored(tmp_path, "fbank_b", "pr", "per", 0.6, source="fbank"),
    ]
    md = write_report(two, tmp_path / "report2")["markdown"].read_text()
    assert "two rows come from upstream `fbank` (fbank_a, fbank_b)" in md


def test_results_of_a_checkpoint_best_json_no_longer_chooses_are_refused(tmp_path):
    """evaluate, then --resume trains on and chooses another step: the old test score is stale."""
    import json as _json

    from speechssl.downstream.report import load_results

    exp = tmp_path / "exp"
    exp.mkdir()
    row = {"task": "lid", "metric": "accuracy", "value": 0.3, "split": "test", "upstream": "m",
           "checkpoint": str(exp / "checkpoints/step_10"), "step": 10, "lr": 1e-3}  # fmt: skip
    (exp / "results_test.json").write_text(_json.dumps(row))
    (exp / "best.json").write_text(
        _json.dumps({"run_dir": ".", "checkpoint": "checkpoints/step_10", "step": 10, "lr": 1e-3})
    )
    assert load_results([exp])[0]["value"] == 0.3
    (exp / "best.json").write_text(
        _json.dumps({"run_dir": ".", "checkpoint": "checkpoints/step_40", "step": 40, "lr": 1e-3})
    )
    with pytest.raises(
        ValueError, match=r"scored step 10 .* now chooses step 40 .*downstream evaluate --out"
    ):
        load_results([exp])
