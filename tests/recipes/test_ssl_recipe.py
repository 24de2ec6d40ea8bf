"""The embedded pretraining recipe (egs/mini_synth/ssl1) end to end, every stage, tiny settings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import speechssl

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "egs" / "mini_synth" / "ssl1"
TINY = (
    "--max-steps 3 --save-every 3 --set trainer.log_every=1 --set trainer.num_workers=0"
    " --set model.encoder.num_layers=2 --set model.encoder.embed_dim=32 --set model.encoder.ffn_dim=64"
)


def copy_recipe(dest: Path) -> Path:
    """The recipe dir as a user has it, outside the repo so the test writes nothing there."""
    shutil.copytree(RECIPE / "conf", dest / "conf")
    shutil.copytree(RECIPE / "local", dest / "local")
    shutil.copy2(RECIPE / "run.sh", dest / "run.sh")
    (dest / "ssl.sh").symlink_to(REPO / "recipes" / "ssl.sh")
    (dest / "utils").symlink_to(REPO / "recipes" / "utils")
    return dest


def run_recipe(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(["./run.sh", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_mini_recipe_runs_every_stage_and_resumes_from_markers(tmp_path):
    cwd = copy_recipe(tmp_path / "ssl1")
    tiny = ["--local_data_opts", "--hours 0.03 --nj 2", "--n_clusters", "8 10", "--km_layers", "1",
            "--pretrain_args", TINY]  # fmt: skip
    result = run_recipe(cwd, *tiny)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for stage in range(1, 10):
        assert f"Stage {stage}" in result.stdout
    # two HuBERT iterations, each with units, their quality and a checkpoint that loads
    for it, units in ((1, "mfcc_k8"), (2, "hubert_iter1_layer1_k10")):
        assert (cwd / f"data/read/train/units_{units}/labels").is_file()
        up = speechssl.load_upstream(cwd / f"exp/hubert_iter{it}/checkpoints/last")
        assert up.num_layers == 2
    quality = json.loads((cwd / "exp/hubert_unit_quality.json").read_text())
    assert [r["name"] for r in quality["results"]] == ["mfcc_k8", "hubert_iter1_layer1_k10"]
    assert all(0.0 <= r["pnmi"] <= 1.0 for r in quality["results"])
    assert (cwd / "exp/hubert_unit_quality.png").is_file()
    assert (cwd / "exp/hubert.onnx").is_file()  # the filterbank frontend exports to ONNX (not hf)
    for dset in ("read_train", "read_dev"):  # one log per feature shard (the recipe's job pool)
        assert all((cwd / f"dump/mfcc/log/features.{dset}.{r}.log").is_file() for r in (0, 1))
    summary = (cwd / "exp/hubert_summary.md").read_text()
    assert "PNMI" in summary and "exp/hubert_iter2" in summary

    # a second run skips what is done (.done markers) and still ends with the summary: unit quality
    # (stage 6) and the export (stage 8) are neither recomputed nor rewritten
    finished = [cwd / f"exp/unit_quality_{u}.json" for u in ("mfcc_k8", "hubert_iter1_layer1_k10")]
    finished.append(cwd / "exp/hubert.onnx")
    written = {path: path.stat().st_mtime_ns for path in finished}
    again = run_recipe(cwd, *tiny, "--stage", "3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "pretraining" in again.stdout and "step 1/" not in again.stdout + again.stderr
    for it in (1, 2):
        assert f"Stage 6 (iteration {it}): unit quality on read/dev: done" in again.stdout
    exported = "Stage 8: export of exp/hubert_iter2/checkpoints/last as onnx: done (exp/hubert.onnx)"
    assert exported in again.stdout
    assert {path: path.stat().st_mtime_ns for path in finished} == written
    assert "Stage 9: summary" in again.stdout and (cwd / "exp/hubert_summary.md").is_file()
    # one job log per k-means labelling (stage 5), beside the feature shards' logs
    label_log = (cwd / "dump/mfcc/log/units_mfcc_k8.read_dev.log").read_text()
    assert label_log.startswith("# speechssl kmeans label")


def test_misspelt_option_and_missing_input_stop_with_exit_2(tmp_path):
    cwd = copy_recipe(tmp_path / "ssl1")
    bad = run_recipe(cwd, "--n_cluster", "5")
    assert bad.returncode == 2 and "unknown option --n_cluster" in bad.stderr
    missing = run_recipe(cwd, "--stage", "2", "--stop_stage", "2")
    assert missing.returncode == 2 and "data/read/train is missing: run stage 1" in missing.stdout


def test_new_options_are_checked_before_any_stage(tmp_path):
    cwd = copy_recipe(tmp_path / "ssl1")
    checks = [
        (["--ssl_type", "bert"], "--ssl_type must be hubert, wavlm, wav2vec2 or data2vec, got 'bert'"),
        (["--init_from", "https://example.org/hubert_base_ls960.pt"],
         "is a URL and this recipe never downloads: fetch it yourself, then pass the local file or dir, "
         "e.g. --init_from /path/to/hubert_base_ls960.pt"),
        (["--init_from", "facebook/hubert-base-ls960"],
         "--init_from facebook/hubert-base-ls960 does not exist on this machine"),
        (["--ssl_type", "data2vec", "--km_model", "km.bin"], "--km_model is for HuBERT / WavLM units"),
        (["--km_model_layer", "6"], "--km_model_layer needs --km_model and --init_from"),
        (["--noise_set", "noise/train"], "--noise_set is for --ssl_type wavlm"),
    ]  # fmt: skip
    for args, message in checks:
        result = run_recipe(cwd, *args)
        assert result.returncode == 2 and message in result.stdout, (args, result.stdout[-2000:])
        assert "Stage 1" not in result.stdout and not (cwd / "data").exists()
