"""Experiment dirs as a user hits them (issue 12): locked runs, failed resumes that change nothing,
inputs and config values refused at start-up, never a checkpoint of NaN weights."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from speechssl.cli.main import main
from speechssl.errors import ExperimentLockedError, OutputExistsError
from speechssl.outputs import LOCK, MARKER, ExperimentLock, read_marker, write_marker
from speechssl.testing.datadirs import make_data_dir
from speechssl.testing.training import (
    TINY_PRETRAIN_ARGS,
    ToyBatchSampler,
    ToyDataset,
    ToyModel,
    subprocess_env,
    toy_collate,
)
from speechssl.training import TrainerConfig, train
from speechssl.training import checkpoints as ckpt
from speechssl.training.experiment import experiment
from speechssl.training.trainer import NonFiniteWeightsError
from tests.features.test_fingerprint import dead_pid

CONF = Path(__file__).resolve().parents[2] / "egs/mini_synth/ssl1/conf/pretrain_wav2vec2_tiny.yaml"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    make_data_dir(root, num_speakers=2, utts_per_speaker=2, base_seconds=1.0, name="train")
    make_data_dir(root, num_speakers=1, utts_per_speaker=2, base_seconds=1.0, name="dev")
    return root


def pretrain_args(corpus, out, *extra, valid=True):
    valid_args = (
        ["--valid", str(corpus / "dev")] if valid is True else (["--valid", str(valid)] if valid else [])
    )
    return ["pretrain", "--config", str(CONF), "--train", str(corpus / "train"), *valid_args,
            "--out", str(out), "--max-steps", "2", *TINY_PRETRAIN_ARGS, *extra]  # fmt: skip


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` with its bytes (symlinks by target)."""
    out = {}
    for path in sorted(directory.rglob("*")):
        key = str(path.relative_to(directory))
        if path.is_symlink():
            out[key] = os.readlink(path).encode()
        elif path.is_file():
            out[key] = path.read_bytes()
    return out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("speechssl pretrain: error: "), err[-3:]
    assert "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.fixture(scope="module")
def finished(corpus, tmp_path_factory):
    """A finished 2-step run, copied by each test that damages it."""
    exp = tmp_path_factory.mktemp("finished") / "exp"
    assert main(pretrain_args(corpus, exp)) == 0
    return exp


def copy_exp(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


# ---------------------------------------------------------------- item 5: the lock


@pytest.mark.slow
def test_a_second_run_on_the_same_out_is_refused_naming_the_holder(corpus, tmp_path, capsys):
    exp = tmp_path / "exp"
    long_run = pretrain_args(
        corpus, exp, "--max-steps", "400", "--save-every", "1"
    )  # the last --max-steps wins
    first = subprocess.Popen(
        [sys.executable, "-m", "speechssl", *long_run],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while not (exp / "checkpoints" / "step_2").is_dir():
            assert first.poll() is None, "the first run ended before the second could start"
            assert time.monotonic() < deadline, "the first run wrote no checkpoint"
            time.sleep(0.05)
        config_before = (exp / "config.yaml").read_bytes()
        assert main(pretrain_args(corpus, exp, "--resume")) == 1
        line = one_line_error(capsys)
        assert f"in use by `speechssl pretrain` (pid {first.pid} on host" in line
        assert main(pretrain_args(corpus, exp)) == 1  # a fresh run too: the holder is named first
        assert f"(pid {first.pid} on host" in one_line_error(capsys)
        assert first.poll() is None  # the first run goes on
        assert (exp / "config.yaml").read_bytes() == config_before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    # the first run's checkpoints are its own and intact; its lock died with it
    last = ckpt.resolve(exp / "checkpoints", "last")
    ckpt.verify(last)
    assert read_marker(exp) == "pretrain"
    assert (
        main(pretrain_args(corpus, exp, "--resume", "--max-steps", str(int(last.name.split("_")[1]) + 1)))
        == 0
    )


def test_the_lock_refuses_a_run_while_another_process_holds_it(corpus, tmp_path, capsys):
    """The same as above without a second training process: the holder is any live process."""
    exp = tmp_path / "exp"
    hold = textwrap.dedent("""
        import sys, time
        from speechssl.outputs import ExperimentLock
        with ExperimentLock(sys.argv[1], "pretrain"):
            print("locked", flush=True)
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", hold, str(exp)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(pretrain_args(corpus, exp)) == 1
        assert f"(pid {holder.pid} on host" in one_line_error(capsys)
        assert sorted(os.listdir(exp)) == [LOCK]  # nothing written beside the holder's lock
    finally:
        holder.kill()
        holder.wait()
    assert main(pretrain_args(corpus, exp)) == 0  # the killed holder's lock is stale: taken over
    assert not (exp / LOCK).exists()
    assert read_marker(exp) == "pretrain"


# ---------------------------------------------------------------- item 5: failed resumes change nothing


def test_a_failed_resume_leaves_the_experiment_byte_identical(finished, tmp_path, corpus, capsys):
    exp = copy_exp(finished, tmp_path / "exp")
    before = snapshot(exp)
    # another ffn_dim (item 12): one line naming the key and the checkpoint, no traceback
    assert main(pretrain_args(corpus, exp, "--resume", "--set", "model.encoder.ffn_dim=96")) == 1
    line = one_line_error(capsys)
    assert "cannot resume from" in line and "step_2" in line
    assert "model.encoder.ffn_dim (checkpoint 64, now 96)" in line
    assert snapshot(exp) == before
    # another learning rate: also a different run
    assert main(pretrain_args(corpus, exp, "--resume", "--set", "trainer.lr=0.1")) == 1
    assert "trainer.lr (checkpoint 0.0015, now 0.1)" in one_line_error(capsys)
    assert snapshot(exp) == before


def test_a_corrupt_resume_checkpoint_is_refused_before_any_write(finished, tmp_path, corpus, capsys):
    exp = copy_exp(finished, tmp_path / "exp")
    weights = ckpt.resolve(exp / "checkpoints", "last") / ckpt.MODEL_FILE
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    before = snapshot(exp)
    assert main(pretrain_args(corpus, exp, "--resume")) == 1
    assert "does not match its sha256 checksum" in one_line_error(capsys)
    assert snapshot(exp) == before  # config.yaml, tensorboard/, train_summary.json untouched


def test_resume_may_lengthen_the_run(finished, tmp_path, corpus):
    exp = copy_exp(finished, tmp_path / "exp")
    assert (
        main(pretrain_args(corpus, exp, "--resume", "--max-steps", "3", "--set", "trainer.log_every=3")) == 0
    )
    first = json.loads((finished / "train_summary.json").read_text())
    summary = json.loads((exp / "train_summary.json").read_text())
    assert summary["steps"] == 3  # and the time and audio of both sessions
    assert summary["audio_hours"] > first["audio_hours"]
    assert summary["wall_seconds"] > first["wall_seconds"] / 2


def test_a_resume_refuses_to_write_over_an_edited_config_yaml(finished, tmp_path, corpus, capsys):
    """A user who edits EXP/config.yaml and resumes learns that the run never reads it; before, the
    edit was silently written over."""
    exp = copy_exp(finished, tmp_path / "exp")
    written = (exp / "config.yaml").read_text()
    assert "lr: 0.0015\n" in written
    (exp / "config.yaml").write_text(written.replace("lr: 0.0015\n", "lr: 0.01\n"))
    before = snapshot(exp)
    assert main(pretrain_args(corpus, exp, "--resume", "--max-steps", "3")) == 1
    line = one_line_error(capsys)
    assert f"{exp / 'config.yaml'} is not a config that pretrain wrote (your own file, or edited" in line
    assert "from the command line and, resumed, from the checkpoint, never from this file" in line
    assert "restore it or move it aside, and pass changes with --set" in line
    assert snapshot(exp) == before
    # as the run wrote it: resumed (and lengthened) as before, the file now says the new length
    (exp / "config.yaml").write_text(written)
    assert main(pretrain_args(corpus, exp, "--resume", "--max-steps", "3")) == 0
    assert "max_steps: 3\n" in (exp / "config.yaml").read_text()


def test_a_run_stopped_before_its_first_checkpoint_starts_again_with_other_settings(
    finished, tmp_path, corpus
):
    """EXP/config.yaml as the stopped run wrote it is the run's, not the user's: a new start with
    another --max-steps replaces it (it was refused as 'edited since')."""
    exp = copy_exp(finished, tmp_path / "exp")
    shutil.rmtree(exp / "checkpoints")  # stopped before its first checkpoint
    assert main(pretrain_args(corpus, exp, "--max-steps", "3", "--set", "trainer.save_every=3")) == 0
    assert "max_steps: 3\n" in (exp / "config.yaml").read_text()


def test_a_run_removes_the_temp_files_killed_runs_left_in_its_experiment(finished, tmp_path, corpus, caplog):
    exp = copy_exp(finished, tmp_path / "exp")
    pid = dead_pid()
    names = (f"..speechssl_output.{pid}.tmp", f".config.{pid}.tmp.yaml", f".final.{pid}.tmpk3")
    stale = [exp / name for name in names]
    stale[0].write_text("{")
    stale[1].write_text("trainer:")
    stale[2].mkdir()
    (stale[2] / "model.safetensors").write_bytes(b"half a model")
    live = exp / f".notes.{os.getpid()}.tmp.txt"  # a live writer's (this process)
    live.write_text("being written")
    (exp / "notes.txt").write_text("mine")
    with caplog.at_level(logging.INFO, logger="speechssl.training.experiment"):
        assert main(pretrain_args(corpus, exp, "--resume", "--max-steps", "3")) == 0
    assert [p for p in stale if p.exists() or p.is_symlink()] == []
    for p in stale:
        assert f"removed {p} (a temp file of a killed run)" in caplog.text
    assert live.read_text() == "being written" and (exp / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- the output rule for experiments


def test_a_fresh_run_refuses_foreign_files_and_other_commands_experiments(corpus, tmp_path, capsys):
    notes = tmp_path / "mine"
    notes.mkdir()
    (notes / "notes.txt").write_text("precious")
    assert main(pretrain_args(corpus, notes)) == 1
    assert "already holds files that `speechssl pretrain` did not write (notes.txt)" in one_line_error(capsys)
    assert sorted(os.listdir(notes)) == ["notes.txt"]

    other = tmp_path / "distilled"
    other.mkdir()
    write_marker(other, "distill")
    (other / "checkpoints").mkdir()
    assert main(pretrain_args(corpus, other, "--overwrite")) == 1
    assert "is an experiment dir of `speechssl distill`" in one_line_error(capsys)
    assert sorted(os.listdir(other)) == [MARKER, "checkpoints"]

    # --overwrite: the user's file stays, the run writes beside it, never over one of its name
    (notes / "config.yaml").write_text("my own config")
    assert main(pretrain_args(corpus, notes, "--overwrite")) == 1
    assert f"{notes / 'config.yaml'} is not a config that pretrain wrote" in one_line_error(capsys)
    assert sorted(os.listdir(notes)) == ["config.yaml", "notes.txt"]
    (notes / "config.yaml").unlink()
    assert main(pretrain_args(corpus, notes, "--overwrite")) == 0
    assert (notes / "notes.txt").read_text() == "precious"
    assert read_marker(notes) == "pretrain"


def test_the_out_may_not_be_a_data_dir(corpus, capsys):
    before = snapshot(corpus / "train")
    assert main(pretrain_args(corpus, corpus / "train")) == 1
    assert "is an input of this command" in one_line_error(capsys)
    assert snapshot(corpus / "train") == before


# ---------------------------------------------------------------- item 8: inputs checked at start-up


def test_an_empty_valid_dir_is_refused_at_start_up(corpus, tmp_path, capsys):
    empty = tmp_path / "dev_empty"
    empty.mkdir()
    for name in ("wav.scp", "utt2spk", "spk2utt", "text"):
        (empty / name).write_text("")
    start = time.monotonic()
    assert main(pretrain_args(corpus, tmp_path / "exp", valid=empty)) == 1
    line = one_line_error(capsys)
    assert f"validation data dir {empty} holds no utterances" in line
    assert time.monotonic() - start < 30  # seconds, not a training run
    assert not (tmp_path / "exp").exists()  # a refused start leaves nothing behind


def test_a_missing_valid_audio_file_is_refused_at_start_up(corpus, tmp_path, capsys):
    dev = tmp_path / "data"
    make_data_dir(tmp_path, num_speakers=1, utts_per_speaker=2, base_seconds=1.0, name="data")
    wav = (dev / "wav.scp").read_text().split("\n")[0].split()[1]
    Path(wav).unlink()
    assert main(pretrain_args(corpus, tmp_path / "exp", valid=dev)) == 1
    line = one_line_error(capsys)
    assert "spk1-utt1" in line and wav in line
    assert not (tmp_path / "exp").exists()


def test_an_empty_train_dir_is_refused_at_start_up(corpus, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "wav.scp").write_text("")
    args = pretrain_args(corpus, tmp_path / "exp", valid=False)
    args[args.index("--train") + 1] = str(empty)
    assert main(args) == 1
    assert f"training data dir {empty} holds no utterances" in one_line_error(capsys)


# ---------------------------------------------------------------- item 12: lr=inf, NaN weights


@pytest.mark.parametrize("value", ["inf", ".nan", "-.inf"])
def test_non_finite_lr_is_refused_naming_the_key(corpus, tmp_path, capsys, value):
    assert main(pretrain_args(corpus, tmp_path / "exp", "--set", f"trainer.lr={value}")) == 1
    line = one_line_error(capsys)
    assert "lr must be a finite number" in line and "section trainer" in line
    assert not (tmp_path / "exp").exists()


def test_trainer_config_refuses_non_finite_values():
    for key, value in (
        ("lr", float("inf")),
        ("lr", float("nan")),
        ("clip_norm", float("nan")),
        ("weight_decay", float("inf")),
        ("eps", float("nan")),
    ):
        with pytest.raises(ValueError, match=rf"^{key} must be a finite number, found (nan|inf)"):
            TrainerConfig(**{key: value})
    with pytest.raises(ValueError, match="betas must be a finite number"):
        TrainerConfig(betas=(0.9, float("nan")))


class _Diverging(ToyModel):
    """A model whose weights turn NaN after update 2 (as an exploding run's would)."""

    def set_num_updates(self, num_updates: int) -> None:
        if num_updates == 2:
            with torch.no_grad():
                self.proj.weight.fill_(float("nan"))


def test_a_checkpoint_of_nan_weights_is_never_written(tmp_path):
    torch.manual_seed(0)
    dataset = ToyDataset(16)
    config = TrainerConfig(max_steps=4, lr=0.01, save_every=1, log_every=1)
    with pytest.raises(
        NonFiniteWeightsError,
        match=r"step 2: the model's weights hold NaN/inf \(proj.weight\);"
        r" no checkpoint is written \(the last good one is .*step_1\)",
    ):
        train(_Diverging(), dataset, toy_collate, ToyBatchSampler(16, 4), config, tmp_path / "exp")
    assert [p.name for p in ckpt.step_dirs(tmp_path / "exp" / "checkpoints")] == ["step_1"]
    weights, _ = ckpt.load_checkpoint(ckpt.resolve(tmp_path / "exp" / "checkpoints", "last"))
    assert all(torch.isfinite(w).all() for w in weights.values())


# ---------------------------------------------------------------- torchrun: rank 0 locks for all


_RANKS = textwrap.dedent("""
    import sys
    from speechssl.training.distributed import distributed, env_rank
    from speechssl.training.experiment import experiment
    from speechssl.errors import ExperimentLockedError
    try:
        with distributed(), experiment(sys.argv[1], "pretrain") as run:
            run.begin()
            print(f"rank {env_rank()} ran", flush=True)
    except ExperimentLockedError as err:
        print(f"rank {env_rank()} refused: {err}", flush=True)
""")


@pytest.mark.slow
def test_under_torchrun_every_rank_is_refused_when_the_dir_is_locked(tmp_path):
    exp = tmp_path / "exp"
    script = tmp_path / "ranks.py"
    script.write_text(_RANKS)
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
    ]
    with ExperimentLock(exp, "pretrain"):
        proc = subprocess.run(
            [*torchrun, str(exp)], env=subprocess_env(), capture_output=True, text=True, timeout=120
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        assert (
            f"rank {rank} refused: {exp} is in use by `speechssl pretrain` (pid {os.getpid()}" in proc.stdout
        )
    assert sorted(os.listdir(exp)) == []  # the lock went with its holder; the ranks wrote nothing
    proc = subprocess.run(
        [*torchrun, str(exp)], env=subprocess_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 ran" in proc.stdout and "rank 1 ran" in proc.stdout
    assert read_marker(exp) == "pretrain" and not (exp / LOCK).exists()


def test_experiment_refusals_in_one_process(tmp_path):
    """The library API: a live lock names its holder; checkpoints need resume."""
    exp = tmp_path / "exp"
    with experiment(exp, "pretrain") as run:
        run.begin()
        with pytest.raises(ExperimentLockedError, match=rf"pid {os.getpid()}"):
            with experiment(exp, "pretrain"):
                pass
    (exp / "checkpoints" / "step_5").mkdir(parents=True)
    with pytest.raises(
        OutputExistsError, match=r"holds checkpoints of an earlier run: resume it \(--resume\)"
    ):
        with experiment(exp, "pretrain"):
            pass
