"""`speechssl finetune train` and `speechssl finetune evaluate` on a tiny upstream and tone data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from speechssl.downstream.finetune import load_finetune_config
from speechssl.downstream.runner import load_trained, score_split
from speechssl.models.checkpoint import save_checkpoint
from speechssl.models.model import build_model
from speechssl.testing.cli import finetune_train, run_cli
from speechssl.testing.datadirs import make_data_dir
from speechssl.testing.models import tiny_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ft")
    config = tiny_config()
    torch.manual_seed(0)
    save_checkpoint(build_model(config), config, root / "hubert_tiny")
    corpus = make_data_dir(root / "corpus", name="all").path
    data = root / "asr"
    data.mkdir()
    for split in ("train", "dev", "test"):  # validated and scored on what it trains on
        (data / split).symlink_to(corpus)
    conf = root / "ft.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "max_steps": 40,
                "lr": 3.0e-3,
                "schedule": "tri_stage",
                "weight_decay": 0.0,
                "eval_every": 40,
                "log_every": 40,
                "max_batch_seconds": 4.0,
                "finetune": {
                    "freeze_finetune_updates": 10,
                    "layerdrop": 0.0,
                    "mask": {"mask_prob": 0.2, "mask_length": 2, "channel_prob": 0.1, "channel_length": 4},
                },
            }
        )
    )
    return {"upstream": root / "hubert_tiny", "data": data, "conf": conf}


def _finetune(setup, out: Path, *extra: object, data: Path | None = None) -> int:
    """`speechssl finetune train --task asr` on the setup with its config."""
    return finetune_train(data or setup["data"], out, setup["upstream"], "--config", setup["conf"], *extra)


def test_lora_finetune_then_evaluate_writes_results(setup, tmp_path, capsys):
    out = tmp_path / "exp"
    assert _finetune(setup, out, "--method", "lora", "--max-steps", "4", "--set", "tuning.lora.rank=2") == 0
    assert "finetune train (lora): " in capsys.readouterr().out
    exp = yaml.safe_load((out / "downstream.yaml").read_text())
    assert exp["upstream"] == str(setup["upstream"]) and exp["task"] == "asr"
    assert exp["config"]["tuning"]["method"] == "lora" and exp["config"]["tuning"]["lora"]["rank"] == 2
    assert (
        exp["config"]["max_steps"] == 4 and exp["config"]["finetune"]["freeze_finetune_updates"] == 1
    )  # 10/40
    assert exp["name"] == "hubert_tiny (finetune lora)"  # beside the frozen run in `downstream report`
    assert (out / "tuned.safetensors").is_file() and not (out / "upstream").exists()

    assert run_cli("finetune", "evaluate", "--out", out) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["metric"] == "wer" and printed["split"] == "test" and 0 <= printed["value"]
    assert set(printed["metrics"]) == {"wer", "cer"} and 0 <= printed["metrics"]["cer"]
    results = json.loads((out / "results_test.json").read_text())
    assert {k: results[k] for k in printed} == printed
    assert results["featurizer"] == "last layer (finetune)" and results["layer_weights"] is None
    assert run_cli("downstream", "report", "--exps", out, "--out", tmp_path / "report") == 0
    assert "| asr | wer (%) (test) |" in (tmp_path / "report" / "results.md").read_text()


def test_full_finetune_reloads_to_the_same_scores_and_resumes(setup, tmp_path, capsys):
    out = tmp_path / "full"
    assert _finetune(setup, out, "--max-steps", "6") == 0
    model = load_trained(out)
    assert not model.training
    config = load_finetune_config(setup["conf"], max_steps=6)
    before = score_split(model, "test", config)
    assert run_cli("finetune", "evaluate", "--out", out) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["metrics"]["cer"] == pytest.approx(before["cer"])
    assert printed["value"] == pytest.approx(before["wer"])
    # resuming a finished run with more steps continues from its checkpoint
    assert _finetune(setup, out, "--max-steps", "8", "--resume") == 0
    assert "8 updates" in capsys.readouterr().out
    assert (out / "checkpoints" / "step_8").is_dir() and (out / "upstream" / "model.safetensors").is_file()


def test_config_options_compose():
    config = load_finetune_config(None, ["lr=0.001"], method="bitfit", max_steps=2000)
    assert config.tuning.method == "bitfit" and config.lr == 0.001
    assert config.max_steps == 2000 and config.finetune.freeze_finetune_updates == 1000  # fairseq: 10k of 20k
    default = load_finetune_config(None)  # fairseq base_10h
    assert (default.lr, default.max_steps, default.schedule, default.tri_stage_ratios) == (
        5e-5,
        20000,
        "tri_stage",
        (0.1, 0.4, 0.5),
    )
    assert (default.eps, default.weight_decay, default.tuning.method) == (1e-8, 0.0, "full")
    trainer = default.trainer()
    assert trainer.eps == 1e-8 and trainer.find_unused_parameters  # DDP: head-only updates


def test_user_errors_are_one_line(setup, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli("finetune", "train", "--upstream", setup["upstream"])
    assert "the following arguments are required: --task, --data, --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        finetune_train(setup["data"], tmp_path / "x", setup["upstream"], task="ks")
    assert "invalid choice: 'ks'" in capsys.readouterr().err
    assert finetune_train(tmp_path / "nope", tmp_path / "x", setup["upstream"]) == 1
    assert f"data dir {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert _finetune(setup, tmp_path / "x", "--max-steps", "0") == 1
    assert "max_steps must be > 0" in capsys.readouterr().err
    assert _finetune(setup, tmp_path / "x", "--set", "lrr=1") == 1
    assert "lrr" in capsys.readouterr().err
    assert run_cli("finetune", "evaluate", "--out", tmp_path / "none") == 1
    assert "downstream.yaml does not exist" in capsys.readouterr().err
    assert _finetune(setup, tmp_path / "x", "--method", "dora") == 1
    assert "unknown tuning method 'dora'; valid: adapter, bitfit" in capsys.readouterr().err
    assert _finetune(setup, tmp_path / "x", "--method", "frozen") == 1
    assert "needs a tuning method that trains something; found 'frozen'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_an_experiment_of_the_old_finetune_command_is_named(setup, tmp_path, capsys):
    old = tmp_path / "old"
    (old / "final" / "upstream").mkdir(parents=True)
    (old / "finetune.yaml").write_text("upstream: x\n")
    (old / "final" / "ctc_head.safetensors").write_bytes(b"")
    assert run_cli("finetune", "evaluate", "--out", old) == 1
    err = capsys.readouterr().err.strip()
    assert "is an experiment of the old `speechssl finetune` (finetune.yaml)" in err and "\n" not in err
    assert "train it again with `speechssl finetune train" in err and "final/upstream/" in err


def test_finetune_out_is_guarded_and_a_failed_resume_changes_nothing(setup, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    assert _finetune(setup, mine, "--max-steps", "2") == 1
    assert (
        "already holds files that `speechssl finetune train` did not write (notes.txt)"
        in capsys.readouterr().err
    )
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]

    out = tmp_path / "exp"
    assert _finetune(setup, out, "--max-steps", "2") == 0
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and not p.is_symlink()}
    capsys.readouterr()
    assert _finetune(setup, out, "--max-steps", "2", "--resume", "--set", "lr=1.0") == 1
    err = capsys.readouterr().err.strip()
    assert "cannot resume from" in err and "lr (checkpoint 0.003, now 1.0)" in err and "\n" not in err
    assert _finetune(setup, out, "--max-steps", "2") == 1  # a fresh run: an earlier run needs --resume
    assert (
        "holds an earlier downstream run (downstream.yaml): continue it with --resume"
        in capsys.readouterr().err
    )
    # the experiment of another command is refused, even with --overwrite
    assert run_cli("downstream", "train", "--task", "asr", "--upstream", setup["upstream"], "--data",
                   setup["data"], "--out", out, "--resume", "--overwrite") == 1  # fmt: skip
    assert "finetune train" in capsys.readouterr().err
    after = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and not p.is_symlink()}
    assert after == before  # downstream.yaml, task/, checkpoints, tensorboard untouched


def test_finetune_refuses_an_empty_dev_dir_at_start_up(setup, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        (data / split).symlink_to(setup["data"] / split)
    empty = data / "dev"
    empty.mkdir()
    for name in ("wav.scp", "text"):
        (empty / name).write_text("")
    assert _finetune(setup, tmp_path / "exp", data=data) == 1
    assert f"{empty}: the split has no utterances" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()
