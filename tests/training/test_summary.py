"""`speechssl summarize`: the recipe's closing table, under the output-path rule."""

from __future__ import annotations

import json

from speechssl.cli.main import main


def _run_dir(tmp_path):
    run = tmp_path / "exp" / "hubert_iter1"
    run.mkdir(parents=True)
    summary = {
        "steps": 1500,
        "wall_seconds": 228.0,
        "audio_seconds_per_second": 97.4,
        "best_valid_loss": 3.21,
        "last_checkpoint": str(run / "checkpoints" / "step_1500"),
        "tensorboard": str(run / "tensorboard"),
    }
    (run / "train_summary.json").write_text(json.dumps(summary))
    return run


def test_summary_table_and_rerun_replace_only_its_own_file(tmp_path, capsys):
    run = _run_dir(tmp_path)
    out = tmp_path / "exp" / "summary.md"
    assert main(["summarize", "--runs", str(run), "--out", str(out)]) == 0
    assert f"| {run} | 1500 | 3.8 | 97 | 3.210 |" in out.read_text()
    assert main(["summarize", "--runs", str(run), "--out", str(out)]) == 0  # a recipe re-run
    out.write_text("my own notes\n")
    capsys.readouterr()
    assert main(["summarize", "--runs", str(run), "--out", str(out)]) == 1
    assert "summary.md already exists; choose another --out, or pass --overwrite" in capsys.readouterr().err
    assert out.read_text() == "my own notes\n"
    assert main(["summarize", "--runs", str(run), "--out", str(run)]) == 1  # never an input
    assert (run / "train_summary.json").is_file()
