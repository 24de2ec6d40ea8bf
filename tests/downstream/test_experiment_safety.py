"""An experiment keeps what it was trained with (hostile-test findings of `downstream train`/`evaluate`):
every checkpoint survives a resume, a replaced upstream is refused, the feature cache stays apart
from EXP, a run that failed before its first checkpoint restarts, sweep rates name distinct
run dirs, and evaluate chooses its feature cache."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from speechssl.data.audio import AudioError
from speechssl.downstream import DownstreamConfig
from speechssl.downstream.feature_cache import CACHE_COMMAND
from speechssl.downstream.runner import (
    BEST_FILE,
    EXP_FILE,
    UpstreamChangedError,
    evaluate_downstream,
    train_downstream,
)
from speechssl.downstream.tasks import DataCheckError
from speechssl.errors import OutputExistsError
from speechssl.outputs import read_marker
from speechssl.testing.cli import downstream_train, run_cli
from tests.downstream.test_feature_cache import _save_upstream as save_tiny_upstream
from tests.downstream.test_feature_cache import config
from tests.features.test_fingerprint import dead_pid


def _save_upstream(path: Path, seed: int) -> Path:
    """test_feature_cache's tiny checkpoint, replacing what is at `path` (an upstream swapped in place)."""
    shutil.rmtree(path, ignore_errors=True)
    return save_tiny_upstream(path, seed)


def _steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*"))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# 1. a resume never deletes a checkpoint ------------------------------------------------------
def test_a_resume_with_a_larger_eval_every_keeps_every_checkpoint(task_data, tmp_path):
    out = tmp_path / "exp"
    train_downstream("ks", "fbank", task_data["ks"], out, config(eval_every=1), max_steps=4)
    before = json.loads((out / BEST_FILE).read_text())
    assert _steps(out) == [1, 2, 3, 4]
    # the trainer kept ceil(max_steps / eval_every) + 1 = 3 checkpoints of the NEW eval_every: step_1..3 went
    train_downstream("ks", "fbank", task_data["ks"], out, config(eval_every=10), max_steps=20, resume=True)
    assert _steps(out) == [1, 2, 3, 4, 10, 20]
    after = json.loads((out / BEST_FILE).read_text())
    assert after["dev_curve"][:4] == before["dev_curve"]
    assert [step for step, _ in after["dev_curve"]] == [1, 2, 3, 4, 10, 20]


def test_a_resume_removes_the_temp_files_killed_runs_left_in_exp(task_data, tmp_path, caplog):
    out = tmp_path / "exp"
    train_downstream("ks", "fbank", task_data["ks"], out, config(), max_steps=2)
    pid = dead_pid()
    stale = [out / f".best.{pid}.tmp.json", out / f".upstream.{pid}.tmpk3"]
    stale[0].write_text("{")
    stale[1].mkdir()
    (stale[1] / "model.safetensors").write_bytes(b"half a model")
    live = out / f".notes.{os.getpid()}.tmp.txt"  # a live writer's (this process)
    live.write_text("being written")
    with caplog.at_level(logging.INFO, logger="speechssl.training.experiment"):
        train_downstream("ks", "fbank", task_data["ks"], out, config(), max_steps=3, resume=True)
    assert [p for p in stale if p.exists()] == []
    for p in stale:
        assert f"removed {p} (a temp file of a killed run)" in caplog.text
    assert live.read_text() == "being written"


def test_a_downstream_run_keeps_every_checkpoint_whatever_its_length():
    for max_steps, eval_every in ((4, 1), (20000, 500), (7, 3)):
        trainer = config(max_steps=max_steps, eval_every=eval_every).trainer()
        assert trainer.keep_last >= 2**31  # far more than any run writes (prune deletes none)


# 2. a replaced upstream -----------------------------------------------------------------------
def test_a_replaced_upstream_is_refused_by_evaluate_and_resume(task_data, tmp_path, capsys):
    up = _save_upstream(tmp_path / "up", seed=1)
    out = tmp_path / "exp"
    train_downstream("ks", up, task_data["ks"], out, config(), max_steps=2)
    first = evaluate_downstream(out)
    saved = _files(out)
    _save_upstream(up, seed=2)  # other weights at the same path
    message = (
        rf"upstream {re.escape(str(up))} changed since {re.escape(str(out))} was trained "
        r"\(weights fingerprint [0-9a-f]+ != [0-9a-f]+\): "
        "restore it or train into a new --out"
    )
    with pytest.raises(UpstreamChangedError, match=message):
        evaluate_downstream(out)
    with pytest.raises(UpstreamChangedError, match=message):
        train_downstream("ks", up, task_data["ks"], out, config(), max_steps=4, resume=True)
    assert _files(out) == saved  # neither wrote anything (results.json, downstream.yaml, checkpoints)
    recorded = yaml.safe_load((out / EXP_FILE).read_text())["upstream_fingerprint"]
    with pytest.raises(UpstreamChangedError, match=f"fingerprint {recorded} != "):
        evaluate_downstream(out)
    assert run_cli("downstream", "evaluate", "--out", out) == 1
    err = capsys.readouterr().err.strip()
    assert "changed since" in err and len(err.splitlines()) == 1
    _save_upstream(up, seed=1)  # restored: both work again
    assert evaluate_downstream(out)["value"] == first["value"]
    train_downstream("ks", up, task_data["ks"], out, config(), max_steps=4, resume=True)
    assert _steps(out) == [2, 4]


def test_an_experiment_without_a_recorded_fingerprint_still_works(task_data, tmp_path, caplog):
    up = _save_upstream(tmp_path / "up", seed=1)
    out = tmp_path / "exp"
    train_downstream("ks", up, task_data["ks"], out, config(), max_steps=2)
    exp = yaml.safe_load((out / EXP_FILE).read_text())
    exp.pop("upstream_fingerprint", None)  # as a speechssl before the fingerprint wrote it
    (out / EXP_FILE).write_text(yaml.safe_dump(exp, sort_keys=False))
    _save_upstream(up, seed=2)
    with caplog.at_level(logging.INFO, logger="speechssl.downstream.runner"):
        evaluate_downstream(out)
        train_downstream("ks", up, task_data["ks"], out, config(), max_steps=4, resume=True)
    assert "records no upstream fingerprint: cannot check" in caplog.text
    assert "upstream_fingerprint" not in yaml.safe_load((out / EXP_FILE).read_text())


# 3. the feature cache is no part of EXP -------------------------------------------------------
@pytest.mark.parametrize("where", ["same", "cache_inside_exp", "exp_inside_cache"])
def test_a_feature_cache_inside_the_experiment_is_refused_before_anything_is_written(
    where, task_data, tmp_path
):
    out = tmp_path / "exp"
    cache = {"same": out, "cache_inside_exp": out / "cache", "exp_inside_cache": tmp_path / "cache"}[where]
    if where == "exp_inside_cache":  # an earlier run's cache, and --out inside it
        conf = config(feature_cache=str(cache))
        train_downstream("ks", "fbank", task_data["ks"], tmp_path / "a", conf, max_steps=2)
        assert read_marker(cache) == CACHE_COMMAND
        out = cache / "exp"
    saved = _files(tmp_path)
    with pytest.raises(ValueError, match=r"--feature-cache must not be the experiment dir \(or inside it"):
        train_downstream("ks", "fbank", task_data["ks"], out, config(feature_cache=str(cache)), max_steps=2)
    assert not out.exists() and _files(tmp_path) == saved


def test_train_never_makes_a_feature_cache_its_experiment(task_data, tmp_path, capsys):
    cache = tmp_path / "cache"
    train_downstream(
        "ks", "fbank", task_data["ks"], tmp_path / "a", config(feature_cache=str(cache)), max_steps=2
    )
    saved = _files(cache)
    assert downstream_train(task_data["ks"], cache, "--max-steps", "2", "--overwrite") == 1
    assert f"--out {cache} is a feature cache" in capsys.readouterr().err
    assert _files(cache) == saved and read_marker(cache) == CACHE_COMMAND


def test_no_command_writes_over_or_into_a_feature_cache_even_with_overwrite(task_data, tmp_path, capsys):
    """A report or tokenizer --out a cache (or one of its entries) --overwrite replaced the cache's
    marker, so no run read the cache again, or wrote among an entry's shards."""
    cache = tmp_path / "cache"
    exp = tmp_path / "a"
    train_downstream("ks", "fbank", task_data["ks"], exp, config(feature_cache=str(cache)), max_steps=2)
    evaluate_downstream(exp)
    entry = next(p for p in cache.iterdir() if p.is_dir())
    saved = _files(cache)
    for out in (cache, entry):
        assert run_cli("downstream", "report", "--exps", exp, "--out", out, "--overwrite") == 1
        assert "never writes over" in capsys.readouterr().err
    assert _files(cache) == saved and read_marker(cache) == CACHE_COMMAND


def test_a_new_cache_dir_inside_another_experiment_is_refused_by_train_and_evaluate(task_data, tmp_path):
    """A cache inside an experiment dir (another run's, or the one evaluate scores) would put a
    shared dump among one run's files: refused while the cache dir does not exist yet, too."""
    trained = tmp_path / "a"
    train_downstream("ks", "fbank", task_data["ks"], trained, config(), max_steps=2)
    saved = _files(tmp_path)
    with pytest.raises(OutputExistsError, match=r"is inside the experiment dir"):
        conf = config(feature_cache=str(trained / "cache"))
        train_downstream("ks", "fbank", task_data["ks"], tmp_path / "b", conf, max_steps=2)
    with pytest.raises(OutputExistsError, match=r"is inside the experiment dir"):
        evaluate_downstream(trained, feature_cache=trained / "c2")
    assert _files(tmp_path) == saved
    with pytest.raises(SystemExit) as usage:  # an empty DIR would be the current directory
        run_cli("downstream", "evaluate", "--out", trained, "--feature-cache", "")
    assert usage.value.code == 2


# 4. a run that failed before its first checkpoint restarts ----------------------------------
def _data_with_own_audio(src: Path, dst: Path) -> tuple[Path, Path]:
    """dst/{train,dev,test}: copies of src's splits, train's audio files copied into dst/audio/.
    Returns (data dir, dst/audio)."""
    for split in ("train", "dev", "test"):
        shutil.copytree(src / split, dst / split)
    audio = dst / "audio"
    audio.mkdir()
    scp = dst / "train" / "wav.scp"
    lines = []
    for line in scp.read_text().splitlines():
        utt, path = line.split(maxsplit=1)
        lines.append(f"{utt} {shutil.copy(path, audio)}")
    scp.write_text("\n".join(lines) + "\n")
    return dst, audio


def test_an_identical_rerun_restarts_a_run_that_failed_before_its_first_checkpoint(
    task_data, tmp_path, caplog
):
    data, audio = _data_with_own_audio(task_data["ks"], tmp_path / "ks")
    audio.rename(tmp_path / "away")  # the training audio is missing (a disk not mounted)
    out = tmp_path / "exp"
    with pytest.raises(AudioError, match="file not found"):  # while dumping or training: EXP was written
        train_downstream("ks", "fbank", data, out, config(), max_steps=2)
    assert (out / EXP_FILE).is_file() and _steps(out) == []
    (tmp_path / "away").rename(audio)
    (out / "notes.txt").write_text("mine")  # a user's file in EXP stays
    # another config (or task, upstream, data) is still refused without --resume
    with pytest.raises(OutputExistsError, match="holds an earlier downstream run"):
        train_downstream("ks", "fbank", data, out, config(lr=1e-3), max_steps=2)
    train_downstream("ks", "fbank", data, out, config(), max_steps=2)
    assert _steps(out) == [2] and (out / BEST_FILE).is_file()
    assert (out / "notes.txt").read_text() == "mine"
    # with a checkpoint it is an earlier run again: --resume
    with pytest.raises(OutputExistsError, match="holds an earlier downstream run"):
        train_downstream("ks", "fbank", data, out, config(), max_steps=2)


def test_a_run_killed_before_its_first_checkpoint_restarts(task_data, tmp_path, monkeypatch, caplog):
    import speechssl.downstream.runner as runner

    out = tmp_path / "exp"
    real = runner.train_on_loaders

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "train_on_loaders", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_downstream("ks", "fbank", task_data["ks"], out, config(), max_steps=2)
    assert (out / EXP_FILE).is_file() and (out / "task").is_dir()
    (out / "notes.txt").write_text("mine")  # a user's file in EXP stays
    with pytest.raises(OutputExistsError, match="holds an earlier downstream run"):
        train_downstream("ks", "fbank", task_data["ks"], out, config(lr=1e-3), max_steps=2)  # another config
    monkeypatch.setattr(runner, "train_on_loaders", real)
    with caplog.at_level(logging.INFO, logger="speechssl.downstream.runner"):
        train_downstream("ks", "fbank", task_data["ks"], out, config(), max_steps=2)
    assert "restarting it" in caplog.text
    assert _steps(out) == [2] and (out / "notes.txt").read_text() == "mine"


def test_a_restart_refuses_the_vocabulary_of_data_that_changed_since(task_data, tmp_path, monkeypatch):
    """A restart reads EXP/task/ again: built from the data as it was when the run stopped, it would
    give the head's outputs other meanings (or, for ASR, turn new characters into <unk>)."""
    import speechssl.downstream.runner as runner

    data, _ = _data_with_own_audio(task_data["ks"], tmp_path / "ks")
    out = tmp_path / "exp"
    monkeypatch.setattr(runner, "train_on_loaders", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        train_downstream("ks", "fbank", data, out, config(), max_steps=2)
    assert (out / "task").is_dir()
    text = data / "train" / "text"
    word = text.read_text().split()[1]
    for split in ("train", "dev", "test"):  # the keyword renamed everywhere
        path = data / split / "text"
        path.write_text(path.read_text().replace(f" {word}\n", " renamed\n"))
    with pytest.raises(DataCheckError, match="the data changed since the run stopped"):
        train_downstream("ks", "fbank", data, out, config(), max_steps=2)


# 5. sweep rates name distinct run dirs --------------------------------------------------------
def test_sweep_rates_of_one_run_dir_are_refused():
    with pytest.raises(ValueError, match=r"lr_sweep: 0\.01 and 0\.010000001 both name run dir lr_0\.01"):
        DownstreamConfig(lr_sweep=[1e-2, 1e-3, 1.0000001e-2])
    assert len(DownstreamConfig(lr_sweep=[1e-2, 1.00001e-2]).lr_sweep) == 2  # 6 significant digits: apart


# 6. evaluate chooses its feature cache --------------------------------------------------------
def test_evaluate_overrides_the_recorded_feature_cache(task_data, tmp_path, capsys):
    cache = tmp_path / "cache"
    out = tmp_path / "exp"
    train_downstream("ks", "fbank", task_data["ks"], out, config(feature_cache=str(cache)), max_steps=2)
    cached = evaluate_downstream(out)
    shutil.rmtree(cache)
    cache.write_text("now a file")  # the recorded cache is gone
    assert run_cli("downstream", "evaluate", "--out", out) == 1
    err = capsys.readouterr().err
    assert "--feature-cache none" in err and "--overwrite" not in err
    assert run_cli("downstream", "evaluate", "--out", out, "--feature-cache", "none") == 0
    uncached = json.loads((out / "results.json").read_text())
    assert uncached["value"] == pytest.approx(cached["value"], abs=1e-6)
    assert run_cli("downstream", "evaluate", "--out", out, "--feature-cache", tmp_path / "other") == 0
    assert read_marker(tmp_path / "other") == CACHE_COMMAND and cache.read_text() == "now a file"
    assert evaluate_downstream(out, feature_cache=None)["value"] == uncached["value"]
