"""`speechssl features --feature upstream` says that it loads the model before it does, and its progress
bar names the upstream as given (no weights fingerprint)."""

from __future__ import annotations

import logging

from speechssl.testing.cli import dump_features
from tests.features.test_upstream_features import save_tiny


def test_upstream_dump_logs_the_model_load_and_a_short_bar(tiny_data, tmp_path, caplog, capsys):
    ckpt = save_tiny(tmp_path / "ckpt")
    with caplog.at_level(logging.INFO, logger="speechssl.features"):
        assert (
            dump_features(tiny_data, tmp_path / "f", "--upstream", ckpt, "--layer", "1", feature="upstream")
            == 0
        )
    assert f"loading upstream {ckpt} for layer 1 features" in caplog.text
    err = capsys.readouterr().err
    assert f"{ckpt} layer 1 shard 0/1: 100%" in err
    assert "@" not in err.split(" shard 0/1")[0].rsplit("\r", 1)[-1]  # no fingerprint in the bar's name
