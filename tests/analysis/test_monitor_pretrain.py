"""`speechssl pretrain` with the RankMe monitor: `valid/rankme_layer<L>` in TensorBoard and the log, a
value below `monitor.min_rankme` a warning in the log and in train_summary.json."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from speechssl.cli.main import main
from speechssl.testing.datadirs import make_data_dir
from speechssl.testing.training import TINY_PRETRAIN_ARGS
from speechssl.training.pretrain import PretrainConfig
from tests.analysis.test_monitor import CONF, tensorboard_scalars

pytestmark = pytest.mark.skipif(
    "monitor" not in {f.name for f in fields(PretrainConfig)},
    reason="the pretraining config has no `monitor` section yet (training/pretrain.py wiring)",
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for name in ("train", "dev"):
        make_data_dir(root, num_speakers=2, utts_per_speaker=2, base_seconds=1.0, name=name)
    return root


def pretrain(corpus, out, *extra) -> int:
    return main([
        "pretrain", "--config", str(CONF / "pretrain_wav2vec2_tiny.yaml"), "--train", str(corpus / "train"),
        "--valid", str(corpus / "dev"), "--out", str(out), "--max-steps", "2", *TINY_PRETRAIN_ARGS, *extra,
    ])  # fmt: skip


def test_pretrain_logs_rankme_and_reports_a_collapse_warning(corpus, tmp_path):
    # an impossible threshold: every validation of the tiny model is "collapsed"
    assert (
        pretrain(
            corpus, tmp_path / "exp", "--set", "monitor.min_rankme=1000", "--set", "monitor.layers=[0,2]"
        )
        == 0
    )
    summary = json.loads((tmp_path / "exp" / "train_summary.json").read_text())
    assert [w.split(":")[1].split(" is ")[0].strip() for w in summary["warnings"]] == [
        "RankMe of layer 0",
        "RankMe of layer 2",
    ]
    assert {"valid/rankme_layer0", "valid/rankme_layer2"} <= tensorboard_scalars(tmp_path / "exp")
    assert pretrain(corpus, tmp_path / "ok") == 0  # defaults: the last layer, min_rankme 4
    assert json.loads((tmp_path / "ok" / "train_summary.json").read_text())["warnings"] == []
    assert "valid/rankme_layer2" in tensorboard_scalars(tmp_path / "ok")


def test_monitor_settings_are_checked_before_the_run(corpus, tmp_path, capsys):
    assert pretrain(corpus, tmp_path / "bad", "--set", "monitor.layers=[7]") == 1
    assert "monitor.layers [7]: the model has layers 0..2" in capsys.readouterr().err
    assert pretrain(corpus, tmp_path / "bad2", "--set", "monitor.max_frame=5") == 1
    assert "unknown key 'max_frame'" in capsys.readouterr().err
