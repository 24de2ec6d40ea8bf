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
