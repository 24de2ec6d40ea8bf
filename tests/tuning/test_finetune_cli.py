"""`speechssl finetune` and `speechssl finetune evaluate` on a tiny upstream and tone data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from speechssl.models.checkpoint import save_checkpoint
from speechssl.models.model import build_model
from speechssl.testing.cli import run_cli
from speechssl.testing.datadirs import make_data_dir
from speechssl.testing.models import tiny_config
from speechssl.tuning.ctc_finetune import evaluate_ctc, load_finetune_config, load_finetuned


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ft")
    config = tiny_config()
    torch.manual_seed(0)
    save_checkpoint(build_model(config), config, root / "hubert_tiny")
    train = make_data_dir(root / "corpus", name="train").path
    conf = root / "ft.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "max_steps": 40,
                    "lr": 3.0e-3,
                    "schedule": "tri_stage",
                    "weight_decay": 0.0,
                    "save_every": 40,
                    "log_every": 40,
                },
                "freeze_finetune_updates": 10,
                "layerdrop": 0.0,
                "max_batch_seconds": 4.0,
                "mask": {"mask_prob": 0.2, "mask_length": 2, "channel_prob": 0.1, "channel_length": 4},
            }
        )
    )
    return {"upstream": root / "hubert_tiny", "train": train, "conf": conf}


def _finetune(setup, out: Path, *extra: str, valid: Path | None = None) -> int:
    """`speechssl finetune` on the setup; validated on its training dir unless `valid` is given."""
    valid = setup["train"] if valid is None else valid
    return run_cli(
        "finetune",
        "--upstream",
        setup["upstream"],
        "--train",
        setup["train"],
        "--valid",
        valid,
        "--out",
        out,
        "--config",
        setup["conf"],
        *extra,
    )


def test_lora_finetune_then_evaluate_prints_cer_and_loss(setup, tmp_path, capsys):
    out = tmp_path / "exp"
    assert _finetune(setup, out, "--method", "lora", "--max-steps", "4", "--set", "tuning.lora.rank=2") == 0
    assert "finetune (lora): " in capsys.readouterr().out
    exp = yaml.safe_load((out / "finetune.yaml").read_text())
    assert exp["upstream"] == str(setup["upstream"])
    assert exp["config"]["tuning"]["method"] == "lora" and exp["config"]["tuning"]["lora"]["rank"] == 2
    assert (
        exp["config"]["trainer"]["max_steps"] == 4 and exp["config"]["freeze_finetune_updates"] == 1
    )  # 10/40 kept
    assert (out / "final" / "tuned.safetensors").is_file() and not (out / "final" / "upstream").exists()

    assert run_cli("finetune", "evaluate", "--out", out, "--data", setup["train"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed) == {"data", "cer", "loss"} and printed["loss"] > 0 and 0 <= printed["cer"]
    assert json.loads((out / "eval_train.json").read_text()) == printed


def test_full_finetune_reloads_to_the_same_scores_and_resumes(setup, tmp_path, capsys):
    out = tmp_path / "full"
    assert _finetune(setup, out, "--max-steps", "6") == 0
    model = load_finetuned(out)
    assert not model.training
    before = evaluate_ctc(model, setup["train"])
    assert run_cli("finetune", "evaluate", "--out", out, "--data", setup["train"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["cer"] == pytest.approx(before["cer"]) and printed["loss"] == pytest.approx(
        before["loss"], rel=1e-5
    )
    # resuming a finished run with more steps continues from its checkpoint
    assert _finetune(setup, out, "--max-steps", "8", "--resume") == 0
    assert "8 updates" in capsys.readouterr().out


def test_config_options_compose():
    config = load_finetune_config(None, ["trainer.lr=0.001"], method="bitfit", max_steps=2000)
    assert config.tuning.method == "bitfit" and config.trainer.lr == 0.001
    assert config.trainer.max_steps == 2000 and config.freeze_finetune_updates == 1000  # fairseq: 10k of 20k


def test_user_errors_are_one_line(setup, tmp_path, capsys):
    assert run_cli("finetune", "--upstream", setup["upstream"]) == 1
    assert "needs --train, --out" in capsys.readouterr().err
    assert (
        run_cli(
            "finetune", "--upstream", setup["upstream"], "--train", tmp_path / "nope", "--out", tmp_path / "x"
        )
        == 1
    )
    assert f"train data dir {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert _finetune(setup, tmp_path / "x", "--max-steps", "0") == 1
    assert "max_steps must be > 0" in capsys.readouterr().err
    assert _finetune(setup, tmp_path / "x", "--set", "trainer.lrr=1") == 1
    assert "lrr" in capsys.readouterr().err
    assert run_cli("finetune", "evaluate", "--out", tmp_path / "none", "--data", setup["train"]) == 1
    assert "finetune.yaml does not exist" in capsys.readouterr().err
    assert _finetune(setup, tmp_path / "x", "--method", "dora") == 1
    assert "unknown tuning method 'dora'; valid: adapter, bitfit" in capsys.readouterr().err


def test_finetune_out_is_guarded_and_a_failed_resume_changes_nothing(setup, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    assert _finetune(setup, mine, "--max-steps", "2") == 1
    assert (
        "already holds files that `speechssl finetune` did not write (notes.txt)" in capsys.readouterr().err
    )
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]

    out = tmp_path / "exp"
    assert _finetune(setup, out, "--max-steps", "2") == 0
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and not p.is_symlink()}
    capsys.readouterr()
    assert _finetune(setup, out, "--max-steps", "2", "--resume", "--set", "trainer.lr=1.0") == 1
    err = capsys.readouterr().err.strip()
    assert "cannot resume from" in err and "trainer.lr (checkpoint 0.003, now 1.0)" in err and "\n" not in err
    assert _finetune(setup, out, "--max-steps", "2") == 1  # a fresh run: checkpoints need --resume
    assert "holds checkpoints of an earlier run: resume it (--resume)" in capsys.readouterr().err
    after = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and not p.is_symlink()}
    assert after == before  # finetune.yaml, vocab.txt, tensorboard untouched


def test_finetune_refuses_an_empty_valid_dir_at_start_up(setup, tmp_path, capsys):
    empty = tmp_path / "dev"
    empty.mkdir()
    for name in ("wav.scp", "text"):
        (empty / name).write_text("")
    assert _finetune(setup, tmp_path / "exp", valid=empty) == 1
    assert f"validation data dir {empty} holds no utterances" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()
