"""egs/mini_synth/superb1 end to end with a tiny WavLM upstream (random weights: the scores sit at
chance; the point is that every stage runs on the family): PR and KS, 2 updates each, then the report."""

from __future__ import annotations

import json
import math

import pytest

from tests.recipes.test_superb_recipe import _recipe_copy, _run

TASKS = ("pr", "ks")


@pytest.mark.slow
def test_mini_superb_recipe_runs_on_a_tiny_wavlm(tmp_path):
    import torch

    from speechssl import load_upstream
    from speechssl.models.checkpoint import save_checkpoint
    from speechssl.models.model import build_model
    from speechssl.models.presets import get_preset

    work = _recipe_copy(tmp_path)
    torch.manual_seed(0)
    config = get_preset("wavlm_tiny")
    wavlm = tmp_path / "pretrain" / "wavlm_tiny" / "checkpoints" / "last"
    save_checkpoint(build_model(config), config, wavlm)
    assert load_upstream(wavlm).config.family == "wavlm"

    proc = _run(
        work,
        "--local_data_opts", "--hours 0.01 --nj 2",
        "--tasks", " ".join(TASKS),
        "--upstreams", str(wavlm),
        "--max_steps", "2",
        "--nj", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for n in (1, 3, 4, 5):
        assert f"Stage {n}:" in proc.stdout
    for task in TASKS:
        record = (work / "exp" / f"{task}_wavlm_tiny" / "downstream.yaml").read_text()
        assert "name: wavlm_tiny" in record and f"upstream: {wavlm}" in record
        assert (work / "exp" / f"{task}_wavlm_tiny" / "results_test.json").is_file()

    report = work / "exp" / "superb_report"
    table = json.loads((report / "results.json").read_text())
    assert table["upstreams"] == ["wavlm_tiny"]
    assert list(table["tasks"]) == list(TASKS)
    for task, entry in table["tasks"].items():
        value = entry["values"]["wavlm_tiny"]
        assert isinstance(value, float | int) and math.isfinite(value), (task, value)
    assert (report / "layer_weights.png").stat().st_size > 0
