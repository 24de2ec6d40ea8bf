"""fbank_global_cmvn in the runner: the train split's statistics, computed once into
EXP/task/fbank_cmvn.npz, equal numpy's over the train frames, and are what dev/test scoring,
`evaluate` and --resume use; each FBANK baseline trains a tiny KS head through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from speechssl.downstream import DownstreamConfig, HeadConfig, build_task
from speechssl.downstream.runner import (
    CMVN_FILE,
    evaluate_downstream,
    load_trained,
    prepare_upstream,
    train_downstream,
)
from speechssl.downstream.tasks import DataCheckError
from speechssl.interop.upstream import load_upstream
from speechssl.testing.cli import downstream_train, run_cli

SMALL = HeadConfig(hidden_dim=16, lstm_dim=16, xvector_channels=16, xvector_agg_dim=24, embed_dim=8)


def small_config() -> DownstreamConfig:
    return DownstreamConfig(head=SMALL, max_batch_seconds=12.0, eval_every=2, log_every=2, lr=1e-2)


def numpy_train_stats(data_dir) -> tuple[np.ndarray, np.ndarray]:
    """Every train utterance alone through the no-CMVN features, all frames stacked, numpy's mean/std."""
    task = build_task("ks", data_dir, data_dir / "unused", small_config())
    raw = load_upstream("fbank_no_cmvn")
    frames = []
    dataset = task.dataset("train", train=False)
    for i in range(len(dataset.utterances)):
        wav = dataset[i]["wav"]
        x = raw(wav[None], torch.tensor([wav.shape[-1]])).hidden_states[0][0]
        frames.append(x.double().numpy())
    stacked = np.concatenate(frames)
    return stacked.mean(0), stacked.std(0)


def test_stats_equal_numpy_and_are_used_by_dev_test_evaluate_and_resume(task_data, tmp_path):
    out = tmp_path / "exp"
    best = train_downstream("ks", "fbank_global_cmvn", task_data["ks"], out, small_config(), max_steps=2)
    path = out / "task" / CMVN_FILE
    saved = np.load(path)
    mean, std = numpy_train_stats(task_data["ks"])
    assert np.abs(saved["mean"] - mean).max() < 1e-5 and np.abs(saved["std"] - std).max() < 1e-5
    assert saved["utterances"] == len(
        build_task("ks", task_data["ks"], out, small_config()).dataset("train", train=False).full_durations
    )
    # the model evaluate rebuilds normalises with the train stats, not the dev/test split's
    model = load_trained(out)
    up = model.upstream
    assert torch.allclose(up.global_mean.double(), torch.from_numpy(mean), atol=1e-5)
    first = evaluate_downstream(out, "test")
    again = evaluate_downstream(out, "test")
    assert first["value"] == again["value"]
    dev = evaluate_downstream(out, "dev")
    assert dev["metrics"] == best["dev"]  # the dev score of training = evaluate's, same stats
    # computed once: a resume reuses the file (not rewritten)
    stamp = path.stat().st_mtime_ns
    train_downstream(
        "ks", "fbank_global_cmvn", task_data["ks"], out, small_config(), max_steps=2, resume=True
    )
    assert path.stat().st_mtime_ns == stamp
    # evaluate never computes them: a missing file is one line
    path.unlink()
    with pytest.raises(FileNotFoundError, match=CMVN_FILE):
        evaluate_downstream(out, "test")


def test_stats_that_do_not_match_the_train_data_are_refused(task_data, tmp_path):
    out = tmp_path / "exp"
    config = small_config()
    task = build_task("ks", task_data["ks"], out, config)
    prepare_upstream("fbank_global_cmvn", config, task)
    path = out / "task" / CMVN_FILE
    stats = dict(np.load(path))
    stats["utterances"] = np.int64(stats["utterances"] + 1)
    np.savez(path, **stats)
    with pytest.raises(DataCheckError, match="train data changed"):
        prepare_upstream("fbank_global_cmvn", config, task)
    with pytest.raises(ValueError, match="pass the task"):
        prepare_upstream("fbank_global_cmvn", config)


@pytest.mark.parametrize("upstream", ["fbank", "fbank_no_cmvn", "fbank_global_cmvn"])
def test_each_baseline_trains_ks_through_the_cli(upstream, task_data, tmp_path, capsys):
    conf = tmp_path / "ks.yaml"
    conf.write_text(
        "lr: 0.01\nmax_batch_seconds: 12.0\neval_every: 2\nlog_every: 2\nhead:\n  hidden_dim: 16\n"
    )
    exp = tmp_path / upstream
    assert (
        downstream_train(task_data["ks"], exp, "--config", conf, "--max-steps", "2", upstream=upstream) == 0
    )
    assert run_cli("downstream", "evaluate", "--out", exp) == 0
    assert json.loads((exp / "results.json").read_text())["upstream"] == upstream
    assert (exp / "task" / CMVN_FILE).is_file() == (upstream == "fbank_global_cmvn")
    capsys.readouterr()
    assert run_cli("downstream", "name", upstream) == 0
    assert capsys.readouterr().out.strip() == upstream


def test_stats_of_audio_rewritten_since_are_refused(task_data, tmp_path):
    """Utterances and seconds alone miss a train file rewritten in place with its old mtime (or a
    restarted run whose data changed): the statistics also record the files' stats."""
    import os
    import shutil

    import soundfile as sf

    data = tmp_path / "ks"
    for split in ("train", "dev", "test"):
        shutil.copytree(task_data["ks"] / split, data / split)
    audio = tmp_path / "audio"
    audio.mkdir()
    scp = data / "train" / "wav.scp"
    rows = [line.split(maxsplit=1) for line in scp.read_text().splitlines()]
    scp.write_text("".join(f"{utt} {shutil.copy(path, audio)}\n" for utt, path in rows))
    config = small_config()
    task = build_task("ks", data, tmp_path / "exp", config)
    prepare_upstream("fbank_global_cmvn", config, task)
    first = audio / Path(rows[0][1]).name
    before = first.stat()
    wav, rate = sf.read(first)
    sf.write(first, np.random.default_rng(0).standard_normal(len(wav)) * 0.1, rate, subtype="PCM_16")
    os.utime(first, ns=(before.st_atime_ns, before.st_mtime_ns))  # as cp -p, rsync -t or tar leave it
    with pytest.raises(DataCheckError, match="other audio files"):
        prepare_upstream("fbank_global_cmvn", config, task)
