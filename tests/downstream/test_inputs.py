"""Bad inputs cost seconds, not a training run, and no downstream command writes over what it
did not write (issue 12 items 8 and 12): start-up checks of splits, labels and trials, the
experiment lock, and the output-path rule of `report` and `tokenizer`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from speechssl.downstream import DownstreamConfig, HeadConfig
from speechssl.downstream.runner import evaluate_downstream, train_downstream
from speechssl.downstream.tasks import DataCheckError
from speechssl.errors import OutputExistsError
from speechssl.testing.cli import downstream_train, run_cli

SMALL = HeadConfig(  # the tiny corpus: ASV clips are under SUPERB's 2 s minimum
    hidden_dim=16, lstm_dim=16, xvector_channels=16, xvector_agg_dim=16, embed_dim=8, asv_min_seconds=0.0
)


def small_config(**kw) -> DownstreamConfig:
    return DownstreamConfig(head=SMALL, max_batch_seconds=12.0, eval_every=1, log_every=1, **kw)


def _task_copy(src: Path, dst: Path, *, copy: tuple[str, ...] = ()) -> Path:
    """dst/{train,dev,test}: links to src's splits, real copies for the ones in `copy` (to edit)."""
    dst.mkdir()
    for split in ("train", "dev", "test"):
        if split in copy:
            shutil.copytree(src / split, dst / split)
        else:
            (dst / split).symlink_to(src / split)
    return dst


def _edit_line(path: Path, line: int, value: str) -> str:
    """Replace the value of line `line` (1-based) of a `utt value` table; returns its utterance id."""
    lines = path.read_text().splitlines()
    utt = lines[line - 1].split()[0]
    lines[line - 1] = f"{utt} {value}"
    path.write_text("\n".join(lines) + "\n")
    return utt


def test_empty_dev_split_is_refused_before_any_step(task_data, tmp_path, capsys):
    data = _task_copy(task_data["ks"], tmp_path / "ks", copy=("dev",))
    for name in os.listdir(data / "dev"):
        (data / "dev" / name).write_text("")  # a dev dir whose preparation went wrong
    out = tmp_path / "exp"
    with pytest.raises(
        DataCheckError, match=rf"{data}/dev: the split has no utterances \(.*/dev/\w+ is empty\)"
    ):
        train_downstream("ks", "fbank", data, out, small_config(), max_steps=2)
    assert not out.exists()  # no checkpoint, no record: nothing was spent
    assert downstream_train(data, out, "--max-steps", "2") == 1
    err = capsys.readouterr().err
    assert "the split has no utterances" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_missing_dev_split_is_refused_before_any_step(task_data, tmp_path):
    data = _task_copy(task_data["ks"], tmp_path / "ks", copy=("dev",))
    for name in os.listdir(data / "dev"):
        (data / "dev" / name).unlink()
    (data / "dev").rmdir()
    out = tmp_path / "exp"
    with pytest.raises(FileNotFoundError, match=rf"task ks: data dir {data}/dev does not exist"):
        train_downstream("ks", "fbank", data, out, small_config(), max_steps=2)
    assert not out.exists()


def test_asv_trials_naming_an_unknown_utterance_are_refused_at_start_up(task_data, tmp_path):
    data = _task_copy(task_data["asv"], tmp_path / "asv", copy=("dev",))
    trials = data / "dev" / "trials"
    lines = trials.read_text().splitlines()
    enroll = lines[0].split()[0]
    lines.insert(2, f"{enroll} spk999-ghost-0001 nontarget")
    trials.write_text("\n".join(lines) + "\n")
    out = tmp_path / "exp"
    with pytest.raises(
        DataCheckError, match=rf"{trials}:3: utterance 'spk999-ghost-0001' is not in {data}/dev"
    ):
        train_downstream("asv", "fbank", data, out, small_config(), max_steps=2)
    assert not out.exists()
    trials.write_text("".join(f"{line}\n" for line in lines if line.endswith(" target")))
    with pytest.raises(DataCheckError, match=rf"{trials}: no nontarget trials"):
        train_downstream("asv", "fbank", data, out, small_config(), max_steps=2)
    assert not out.exists()


def test_unseen_test_label_is_refused_naming_file_line_and_label(task_data, tmp_path):
    data = _task_copy(task_data["ks"], tmp_path / "ks", copy=("test",))
    utt = _edit_line(data / "test" / "text", 2, "zebra")
    out = tmp_path / "exp"
    with pytest.raises(
        DataCheckError,
        match=rf"{data}/test/text:2: keyword 'zebra' of utterance '{utt}' is not in "
        r"the training set \(\d+ known\); declare it in .*labels.txt or set "
        "unknown_label",
    ):
        train_downstream("ks", "fbank", data, out, small_config(), max_steps=2)
    assert not out.exists()
    # a mapping to a class that train does not have is refused too, naming the option
    with pytest.raises(DataCheckError, match=r"unknown_label '_other_' is not a label of .*/train \(text\)"):
        train_downstream("ks", "fbank", data, out, small_config(unknown_label="_other_"), max_steps=2)
    assert not out.exists()


def test_unseen_test_label_is_accepted_when_mapped_to_the_unknown_class(task_data, tmp_path):
    data = _task_copy(task_data["ks"], tmp_path / "ks", copy=("train", "test"))
    _edit_line(data / "train" / "text", 1, "_unknown_")  # train has an explicit unknown class
    _edit_line(data / "test" / "text", 2, "zebra")
    out = tmp_path / "exp"
    train_downstream("ks", "fbank", data, out, small_config(unknown_label="_unknown_"), max_steps=1)
    classes = (out / "task" / "classes.txt").read_text().split()
    assert "_unknown_" in classes and "zebra" not in classes  # mapped, never a new class
    results = evaluate_downstream(out)
    assert 0.0 <= results["value"] <= 1.0


def test_declared_labels_give_classes_that_train_lacks(task_data, tmp_path):
    data = _task_copy(task_data["ks"], tmp_path / "ks", copy=("test",))
    _edit_line(data / "test" / "text", 2, "zebra")
    (data / "labels.txt").write_text("zebra\n")
    out = tmp_path / "exp"
    train_downstream("ks", "fbank", data, out, small_config(), max_steps=1)
    assert "zebra" in (out / "task" / "classes.txt").read_text().split()


def test_evaluate_checks_the_split_before_loading_the_upstream(task_data, tmp_path, monkeypatch):
    data = _task_copy(task_data["ks"], tmp_path / "ks", copy=("test",))
    out = tmp_path / "exp"
    train_downstream("ks", "fbank", data, out, small_config(), max_steps=1)
    utt = _edit_line(data / "test" / "text", 3, "zebra")

    def no_upstream(*args, **kwargs):
        raise AssertionError("the upstream was loaded before the split was checked")

    monkeypatch.setattr("speechssl.downstream.runner.prepare_upstream", no_upstream)
    with pytest.raises(DataCheckError, match=rf"{data}/test/text:3: keyword 'zebra' of utterance '{utt}'"):
        evaluate_downstream(out)
    assert not (out / "results.json").exists()


def test_fresh_train_refuses_foreign_files_and_an_earlier_run(task_data, tmp_path):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(OutputExistsError, match=r"--out .*/exp already holds files .*\(notes.txt\)"):
        train_downstream("ks", "fbank", task_data["ks"], out, small_config(), max_steps=1)
    assert sorted(os.listdir(out)) == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"
    own = tmp_path / "own"
    train_downstream("ks", "fbank", task_data["ks"], own, small_config(), max_steps=1)
    before = {p: p.stat().st_mtime_ns for p in own.rglob("*") if p.is_file()}
    with pytest.raises(
        OutputExistsError,
        match=r"holds an earlier downstream run \(downstream.yaml\): continue it "
        "with --resume",
    ):
        train_downstream("ks", "fbank", task_data["ks"], own, small_config(), max_steps=1)
    assert {p: p.stat().st_mtime_ns for p in own.rglob("*") if p.is_file()} == before


_HOLDER = textwrap.dedent(
    """
    import sys, time
    import speechssl.downstream.runner as runner
    from speechssl.downstream import DownstreamConfig

    def slow_run(*args, **kwargs):  # stands in for a long training
        print("training", flush=True)
        time.sleep(60)

    runner._train_run = slow_run
    runner.train_downstream("ks", "fbank", sys.argv[1], sys.argv[2], DownstreamConfig(), max_steps=1)
    """
)


def test_two_concurrent_trains_on_one_out_second_is_refused_naming_the_holder(task_data, tmp_path, capsys):
    out = tmp_path / "exp"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(task_data["ks"]), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "training", holder.stderr.read()
        record = (out / "downstream.yaml").read_text()
        assert downstream_train(task_data["ks"], out, "--max-steps", "1", "--resume") == 1
        err = capsys.readouterr().err
        assert f"is in use by `speechssl downstream train` (pid {holder.pid} on host" in err
        assert len(err.strip().splitlines()) == 1
        assert (out / "downstream.yaml").read_text() == record  # the holder's record is untouched
    finally:
        holder.kill()
        holder.wait()


def test_report_into_a_foreign_dir_is_refused_with_its_files_intact(task_data, tmp_path, capsys):
    exp = tmp_path / "exp"
    train_downstream("ks", "fbank", task_data["ks"], exp, small_config(), max_steps=1)
    evaluate_downstream(exp)
    mine = tmp_path / "paper"
    mine.mkdir()
    (mine / "results.md").write_text("my hand-edited table")
    assert run_cli("downstream", "report", "--exps", exp, "--out", mine) == 1
    err = capsys.readouterr().err
    assert "already holds files that `speechssl downstream report` did not write (results.md)" in err
    assert (
        sorted(os.listdir(mine)) == ["results.md"]
        and (mine / "results.md").read_text() == "my hand-edited table"
    )
    # its own earlier report is rewritten; a foreign dir only with --overwrite; never an experiment
    report = tmp_path / "report"
    assert run_cli("downstream", "report", "--exps", exp, "--out", report) == 0
    assert run_cli("downstream", "report", "--exps", exp, "--out", report) == 0
    assert run_cli("downstream", "report", "--exps", exp, "--out", mine, "--overwrite") == 0
    assert run_cli("downstream", "report", "--exps", exp, "--out", exp, "--overwrite") == 1
    assert "is an input of this command" in capsys.readouterr().err


def test_tokenizer_into_a_foreign_dir_is_refused_with_its_files_intact(tmp_path, capsys):
    text = tmp_path / "text"
    text.write_text("u1 hello world this is a test\nu2 another sentence of words\n")
    out = tmp_path / "tok"
    out.mkdir()
    (out / "spm.model").write_text("someone else's model")
    assert run_cli("downstream", "tokenizer", "--text", text, "--vocab-size", "20", "--out", out) == 1
    assert "did not write (spm.model)" in capsys.readouterr().err
    assert (out / "spm.model").read_text() == "someone else's model"
    assert (
        run_cli("downstream", "tokenizer", "--text", text, "--vocab-size", "20", "--out", out, "--overwrite")
        == 0
    )
    assert run_cli("downstream", "tokenizer", "--text", text, "--vocab-size", "20", "--out", out) == 0
    assert not [p for p in os.listdir(out) if ".tmp" in p]  # no temp dir of the training is left


def test_asr_uses_the_model_of_downstream_tokenizer(task_data, tmp_path):
    from speechssl.downstream.tasks import train_tokenizer

    model = train_tokenizer(task_data["asr"] / "train" / "text", tmp_path / "tok", 30)
    out = tmp_path / "asr"
    config = small_config(asr_units="sentencepiece", sentencepiece_model=str(model))
    train_downstream("asr", "fbank", task_data["asr"], out, config, max_steps=1)
    assert (out / "task" / "spm.model").read_bytes() == model.read_bytes()  # the experiment keeps its copy
    with pytest.raises(FileNotFoundError, match="sentencepiece_model .*/nothing.model does not exist"):
        train_downstream(
            "asr",
            "fbank",
            task_data["asr"],
            tmp_path / "x",
            small_config(asr_units="sentencepiece", sentencepiece_model=str(tmp_path / "nothing.model")),
            max_steps=1,
        )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("config_class", ["downstream", "finetune"])
def test_a_config_with_the_old_batch_seconds_key_says_its_new_name(tmp_path, config_class):
    from speechssl.config import ConfigError, load_config
    from speechssl.downstream.finetune import load_finetune_config

    def load(conf):  # `downstream train --config` or `finetune train --config`
        return (
            load_config(DownstreamConfig, conf)
            if config_class == "downstream"
            else load_finetune_config(conf)
        )

    conf = tmp_path / "old.yaml"
    conf.write_text("batch_seconds: 32.0\n")
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'batch_seconds' in .*old\.yaml: batch_seconds is now "
        r"max_batch_seconds",
    ):
        load(conf)
    conf.write_text("max_batch_seconds: 32.0\n")
    assert load(conf).batching().max_batch_seconds == 32.0


def test_ks_on_transcripts_is_refused_in_one_line(tmp_path):
    """KS reads one keyword per utterance from `text`: a dir of read sentences (every utterance its
    own 'class') is the wrong data, said before any compute."""
    from speechssl.downstream import build_task
    from speechssl.testing.datadirs import write_tone

    d = tmp_path / "read" / "train"
    d.mkdir(parents=True)
    ids = [f"spk1-u{k:03d}" for k in range(80)]
    (d / "wav.scp").write_text("".join(f"{u} {write_tone(tmp_path / 'w' / f'{u}.wav', 0.2)}\n" for u in ids))
    (d / "utt2spk").write_text("".join(f"{u} spk1\n" for u in ids))
    (d / "spk2utt").write_text("spk1 " + " ".join(ids) + "\n")
    (d / "text").write_text("".join(f"{u} sentence number {k}\n" for k, u in enumerate(ids)))
    task = build_task("ks", tmp_path / "read", tmp_path / "exp", DownstreamConfig())
    with pytest.raises(DataCheckError, match=r"text: 80 distinct keywords for 80 utterances"):
        task.check_split("train")
