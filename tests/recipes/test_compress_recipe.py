"""The compression recipe (egs/mini_synth/compress1): distil, prune, compare, export; tiny settings."""

from __future__ import annotations

import json
import shutil

import pytest

import speechssl
from speechssl.models import build_model, get_preset, save_checkpoint
from speechssl.testing.datadirs import make_data_dir
from tests.recipes.test_ssl_recipe import REPO, run_recipe

RECIPE = REPO / "egs" / "mini_synth" / "compress1"


@pytest.mark.slow
def test_compress_recipe_distils_prunes_compares_and_exports(tmp_path):
    cwd = tmp_path / "compress1"
    shutil.copytree(RECIPE / "conf", cwd / "conf")
    shutil.copy2(RECIPE / "run.sh", cwd / "run.sh")
    (cwd / "compress.sh").symlink_to(REPO / "recipes" / "compress.sh")
    (cwd / "utils").symlink_to(REPO / "recipes" / "utils")
    teacher = get_preset("hubert_tiny")  # 2 layers: distil into 1, distil layers 1 and 2
    save_checkpoint(build_model(teacher), teacher, tmp_path / "teacher")
    make_data_dir(tmp_path, num_speakers=2, utts_per_speaker=2, base_seconds=1.0, name="train")
    args = [
        "--teacher", str(tmp_path / "teacher"), "--train_set", str(tmp_path / "train"), "--valid_set", "",
        "--superb_dir", "", "--compare_seconds", "1", "--target_sparsity", "0.5",
        "--distill_args", "--max-steps 2 --set student.num_layers=1 --set target_layers=[1,2]",
        "--prune_args", "--max-steps 2 --final-distill-steps 1 --set distill_layers=[1,2]",
    ]  # fmt: skip
    result = run_recipe(cwd, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert speechssl.load_upstream(cwd / "exp/distill/final").num_layers == 1
    assert speechssl.load_upstream(cwd / "exp/prune/final").num_layers == 2
    rows = {r["name"]: r for r in json.loads((cwd / "exp/compare.json").read_text())}
    assert rows["pruned"]["params"] < rows["teacher"]["params"]
    for name in ("distilled", "pruned"):
        assert (cwd / f"exp/export/{name}.onnx").is_file() and (
            cwd / f"exp/export/{name}_torchscript.pt"
        ).is_file()


def test_missing_teacher_stops_with_exit_2(tmp_path):
    cwd = tmp_path / "compress1"
    shutil.copytree(RECIPE / "conf", cwd / "conf")
    shutil.copy2(RECIPE / "run.sh", cwd / "run.sh")
    (cwd / "compress.sh").symlink_to(REPO / "recipes" / "compress.sh")
    (cwd / "utils").symlink_to(REPO / "recipes" / "utils")
    result = run_recipe(cwd)
    assert (
        result.returncode == 2
        and "teacher ../ssl1/exp/hubert_iter2/checkpoints/last does not exist" in result.stdout
    )
