"""SD task: activity targets follow the split's turns and rttm, one-line input errors, the head
equals s3prl's diarization model, and the task trains and evaluates end to end through the CLI."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechssl.data.audio import SAMPLE_RATE
from speechssl.data.rttm import Turn, format_rttm, read_rttm
from speechssl.downstream.config import DownstreamConfig, HeadConfig
from speechssl.downstream.diarization import DiarizationDataError, activity_targets, load_recordings
from speechssl.downstream.heads import DiarizationHead
from speechssl.downstream.tasks import DataCheckError, build_task
from speechssl.testing.cli import downstream_train, run_cli
from speechssl.testing.models import perturb_

PITCH = {"ann": 220.0, "bob": 470.0, "cid": 730.0, "dee": 330.0}  # each speaker a tone
# recording -> (seconds, turns (speaker, start, end)); the second train turn of ann overlaps bob's
SPLITS = {
    "train": {
        "rec-a": (3.1, [("ann", 0.2, 1.1), ("bob", 1.0, 1.9), ("ann", 2.1, 2.9)]),
        "rec-b": (2.7, [("cid", 0.1, 0.9), ("ann", 1.2, 2.0), ("cid", 2.0, 2.6)]),
    },
    "dev": {"rec-c": (2.9, [("dee", 0.3, 1.2), ("bob", 1.5, 2.6)])},
    "test": {"rec-d": (2.5, [("cid", 0.2, 1.0), ("dee", 1.3, 2.3)])},
}


def _write_split(split_dir: Path, recordings: dict) -> None:
    """wav.scp, segments (a turn per utterance), utt2spk, spk2utt, reco2dur and rttm of tone mixes."""
    split_dir.mkdir(parents=True)
    wav, segments, utt2spk, reco2dur, rttm = [], [], [], [], {}
    for reco, (seconds, turns) in recordings.items():
        t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        mix = np.zeros_like(t)
        for k, (spk, start, end) in enumerate(turns):
            on = (t >= start) & (t < end)
            mix[on] += 0.1 * np.sin(2 * np.pi * PITCH[spk] * t[on])
            utt = f"{spk}-{reco}-{k:02d}"
            segments.append(f"{utt} {reco} {start:.3f} {end:.3f}")
            utt2spk.append(f"{utt} {spk}")
        path = split_dir / f"{reco}.wav"
        sf.write(path, mix.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        wav.append(f"{reco} {path}")
        reco2dur.append(f"{reco} {seconds}")
        rttm[reco] = [Turn(spk, start, end) for spk, start, end in turns]
    spk2utt: dict[str, list[str]] = {}
    for line in sorted(utt2spk):
        utt, spk = line.split()
        spk2utt.setdefault(spk, []).append(utt)
    for name, lines in (
        ("wav.scp", wav), ("segments", segments), ("utt2spk", utt2spk), ("reco2dur", reco2dur),
        ("spk2utt", [f"{s} {' '.join(u)}" for s, u in spk2utt.items()]),
    ):  # fmt: skip
        (split_dir / name).write_text("".join(f"{x}\n" for x in sorted(lines)))
    (split_dir / "rttm").write_text(format_rttm(rttm))


@pytest.fixture
def diar_data(tmp_path) -> Path:
    root = tmp_path / "sd"
    for split, recordings in SPLITS.items():
        _write_split(root / split, recordings)
    return root


class _Upstream:
    downsample_rate = 320  # 20 ms frames, as HuBERT


def test_targets_of_a_recording_match_its_rttm(diar_data, tmp_path):
    task = build_task("sd", diar_data, tmp_path / "exp", DownstreamConfig())
    task.bind_upstream(_Upstream())
    assert task.slots.symbols == ["spk0", "spk1"]  # the most speakers of a train recording
    dataset = task.dataset("train", train=False)
    reference = read_rttm(diar_data / "train" / "rttm")
    for index, reco in enumerate(dataset.utt_ids()):
        item = dataset[index]
        seconds = SPLITS["train"][reco][0]
        frames = math.floor(seconds / 0.02 + 1e-9)
        speakers = sorted({t.speaker for t in reference[reco]})
        expected = activity_targets(reference[reco], speakers, frames, 0.02)
        assert item["activity"].shape == (frames, 2)
        assert torch.equal(item["activity"], expected)
    # by hand: rec-a frame 52 (centre 1.05 s) has ann and bob (overlap), frame 100 (2.01 s) nobody
    activity = dataset[dataset.utt_ids().index("rec-a")]["activity"]
    assert activity[52].tolist() == [1.0, 1.0] and activity[100].tolist() == [0.0, 0.0]
    assert activity[:, 0].sum() == round((1.1 - 0.2) / 0.02) + round((2.9 - 2.1) / 0.02)
    # training windows: audio and targets cut at the same frame
    task = build_task("sd", diar_data, tmp_path / "exp", DownstreamConfig(max_seconds=1.0))
    task.bind_upstream(_Upstream())
    item = task.dataset("train", train=True)[0]
    assert item["wav"].shape == (SAMPLE_RATE,) and item["activity"].shape == (50, 2)


def test_wrong_inputs_are_one_line_errors(diar_data, tmp_path, capsys):
    rttm = diar_data / "train" / "rttm"
    good = rttm.read_text()
    rttm.write_text(good.replace("bob", "zed", 1))
    with pytest.raises(
        DiarizationDataError, match=r"train/rttm:2: speaker 'zed' does not speak in recording 'rec-a'"
    ):
        load_recordings(diar_data / "train")
    out = tmp_path / "exp"
    assert downstream_train(diar_data, out, task="sd") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "rttm:2: speaker 'zed'" in err
    rttm.write_text(good)
    segments = diar_data / "dev" / "segments"
    segments.write_text(segments.read_text().replace("1.500 2.600", "1.500 3.600"))
    with pytest.raises(
        DiarizationDataError, match=r"dev/segments:1: turn 'bob-rec-c-01' spans 1.5-3.6 s, outside"
    ):
        load_recordings(diar_data / "dev")
    segments.write_text(segments.read_text().replace("1.500 3.600", "1.500 2.600"))
    rttm.write_text("SPEAKER rec-a 1 2.100 1.800 <NA> <NA> ann\n" + good)
    with pytest.raises(
        DiarizationDataError, match=r"train/rttm:1: turn of 'ann' ends at 3.900 s, after recording"
    ):
        load_recordings(diar_data / "train")
    rttm.write_text(good)
    (diar_data / "dev" / "reco2dur").rename(tmp_path / "reco2dur")
    with pytest.raises(FileNotFoundError, match=r"dev/reco2dur does not exist \(a diarization split has"):
        load_recordings(diar_data / "dev")
    (tmp_path / "reco2dur").rename(diar_data / "dev" / "reco2dur")
    # a test recording with more speakers than the slots training gave
    test = diar_data / "test"
    _three = {"rec-d": (2.5, [("cid", 0.2, 0.8), ("dee", 1.0, 1.6), ("ann", 1.8, 2.4)])}
    for path in test.iterdir():
        path.unlink()
    test.rmdir()
    _write_split(test, _three)
    task = build_task("sd", diar_data, tmp_path / "exp2", DownstreamConfig())
    task.check_split("train")
    with pytest.raises(
        DataCheckError, match=r"test/rttm:1: recording 'rec-d' has 3 speakers, more than the 2"
    ):
        task.check_split("test")


@pytest.mark.parametrize("num_layers", [0, 1, 2])
def test_head_equals_s3prl_diarization_model(num_layers):
    from s3prl.downstream.diarization.model import Model

    torch.manual_seed(0)
    ours = perturb_(DiarizationHead(13, 3, hidden_dim=7, num_layers=num_layers), seed=1)
    theirs = Model(input_dim=13, output_class_num=3, rnn_layers=num_layers, hidden_size=7)
    names = {"lstm": "rnn", "out": "linear"}
    theirs.load_state_dict(
        {names[k.split(".")[0]] + k[k.index(".") :]: v for k, v in ours.state_dict().items()}
    )
    x = torch.randn(2, 11, 13)
    y, lengths = ours(x, torch.tensor([11, 6]))
    assert y.shape == (2, 11, 3) and lengths.tolist() == [11, 6]
    assert torch.allclose(y, theirs(x), atol=1e-6)
    # padding after a recording's end never changes its valid frames (unidirectional)
    z, _ = ours(torch.cat([x[1:, :6], torch.randn(1, 5, 13)], dim=1), torch.tensor([6]))
    assert torch.allclose(z[0, :6], y[1, :6], atol=1e-6)


def test_sd_trains_and_evaluates_through_the_cli(diar_data, tmp_path, caplog):
    conf = tmp_path / "sd.yaml"
    conf.write_text(
        "max_steps: 6\neval_every: 3\nmax_seconds: 1.5\nmax_batch_seconds: 3.0\n"
        "head: {sd_hidden_dim: 16, sd_rnn_layers: 1}\nfeature_cache: " + str(tmp_path / "cache") + "\n"
    )
    out = tmp_path / "exp"
    with caplog.at_level(logging.INFO, logger="speechssl.downstream.runner"):
        assert downstream_train(diar_data, out, "--config", conf, task="sd") == 0
    assert "not used: task sd trains on windows of whole recordings" in caplog.text
    assert (out / "task" / "slots.txt").read_text() == "spk0\nspk1\n"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("*/meta.json"))
    dev = json.loads((out / "dev_scores.json").read_text())
    assert set(dev) == {"step_3", "step_6"}
    assert run_cli("downstream", "evaluate", "--out", out) == 0
    results = json.loads((out / "results_test.json").read_text())
    assert (
        results["task"] == "sd" and results["metric"] == "der" and results["predictions"] == "hyp_test.rttm"
    )
    m = results["metrics"]
    assert math.isfinite(m["der"]) and m["der"] >= 0
    assert m["der"] == pytest.approx(m["miss"] + m["false_alarm"] + m["confusion"])
    hypothesis = read_rttm(out / "hyp_test.rttm")
    assert set(hypothesis) <= {"rec-d"}
    assert all(
        t.speaker in ("spk0", "spk1") and t.end <= 2.5 + 1e-6 for turns in hypothesis.values() for t in turns
    )
    assert run_cli("downstream", "report", "--exps", out, "--out", tmp_path / "report") == 0


def test_head_config_sizes_the_sd_head(diar_data, tmp_path):
    task = build_task(
        "sd", diar_data, tmp_path / "exp", DownstreamConfig(head=HeadConfig(sd_hidden_dim=8, sd_rnn_layers=1))
    )
    head = task.build_head(5)
    assert head.lstm.hidden_size == 8 and head.out.out_features == 2


def test_an_edge_on_a_frame_centre_decides_the_same_in_segments_and_rttm():
    # the corpus's diar-train-000019: segments end 35.51; RTTM 32.676 + 2.834 = 35.510000000000005
    from_segments = activity_targets([Turn("a", 32.676, 35.51)], ["a"], 1800, 0.02)
    from_rttm = activity_targets([Turn("a", 32.676, 32.676 + 2.834)], ["a"], 1800, 0.02)
    assert 32.676 + 2.834 != 35.51 and torch.equal(from_segments, from_rttm)
    assert from_rttm[1774, 0] == 1 and from_rttm[1775, 0] == 0  # centre 35.51 is the end: excluded
