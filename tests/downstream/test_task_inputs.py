"""Start-up checks of a task's inputs (hostile test S6): a missing label, training utterances the
batch sampler would drop, and utterances too short for one frame of the upstream are each one
line naming the file or utterance, before any step (and, where the task can tell, before anything
is written)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from speechssl.downstream import DownstreamConfig, HeadConfig, build_task
from speechssl.downstream.runner import train_downstream
from speechssl.downstream.tasks import DataCheckError
from speechssl.testing.cli import downstream_train
from speechssl.testing.datadirs import write_tone

SMALL = HeadConfig(hidden_dim=8)
KEYWORDS = ("yes", "no", "up")
LANGS = ("en", "fr", "de")
INTENTS = ("activate lights kitchen", "deactivate music none", "increase heat bedroom")


def _config(**kw) -> DownstreamConfig:
    return DownstreamConfig(head=SMALL, eval_every=1, log_every=1, **{"max_batch_seconds": 4.0, **kw})


def _write_split(root: Path, split: str, seconds: list[float]) -> list[str]:
    """A tone data dir with one label per utterance in every label file the tasks read."""
    d = root / split
    d.mkdir(parents=True)
    ids = [f"spk1-{split}-{k:02d}" for k in range(len(seconds))]
    tables = {
        "wav.scp": [],
        "utt2spk": [],
        "utt2dur": [],
        "text": [],
        "utt2lang": [],
        "intent": [],
        "phones": [],
    }
    for k, (utt, s) in enumerate(zip(ids, seconds)):
        tables["wav.scp"].append(f"{utt} {write_tone(root / 'wav' / f'{utt}.wav', s, freq=200.0 + 50 * k)}")
        tables["utt2spk"].append(f"{utt} spk1")
        tables["utt2dur"].append(f"{utt} {s}")
        tables["text"].append(f"{utt} {KEYWORDS[k % 3]}")
        tables["utt2lang"].append(f"{utt} {LANGS[k % 3]}")
        tables["intent"].append(f"{utt} {INTENTS[k % 3]}")
        tables["phones"].append(f"{utt} a b")
    for name, lines in tables.items():
        (d / name).write_text("".join(f"{line}\n" for line in lines))
    (d / "spk2utt").write_text("spk1 " + " ".join(ids) + "\n")
    return ids


def _data(root: Path, train: list[float] | None = None, dev: list[float] | None = None) -> Path:
    _write_split(root, "train", train or [0.5] * 6)
    _write_split(root, "dev", dev or [0.5] * 3)
    _write_split(root, "test", [0.5] * 3)
    return root


def _blank(path: Path, line: int) -> str:
    """Leave the value of line `line` (1-based) of a `utt value` table empty; its utterance id."""
    lines = path.read_text().splitlines()
    utt = lines[line - 1].split()[0]
    lines[line - 1] = utt
    path.write_text("\n".join(lines) + "\n")
    return utt


# ---------------------------------------------------------------- 1. empty labels


def test_an_empty_keyword_fails_in_one_line_and_writes_nothing(tmp_path, capsys):
    data = _data(tmp_path / "ks")
    utt = _blank(data / "train" / "text", 2)
    out = tmp_path / "exp"
    assert downstream_train(data, out, "--max-steps", "1") == 1
    err = capsys.readouterr().err.strip()
    assert f"train/text:2: utterance '{utt}' has no keyword" in err and len(err.splitlines()) == 1
    assert not out.exists()  # classes.txt never began with an empty class


@pytest.mark.parametrize(
    ("task", "filename", "what"),
    [
        ("ks", "text", "keyword"),
        ("lid", "utt2lang", "language"),
        ("ic", "intent", "intent"),
        ("mlpr", "utt2lang", "language"),
    ],
)
@pytest.mark.parametrize(("split", "line"), [("train", 1), ("train", 4), ("test", 2)])
def test_an_empty_label_is_refused_naming_file_line_and_utterance(
    tmp_path, task, filename, what, split, line
):
    data = _data(tmp_path / task)
    utt = _blank(data / split / filename, line)
    built = build_task(task, data, tmp_path / "exp", _config())
    with pytest.raises(
        DataCheckError, match=rf"{data}/{split}/{filename}:{line}: utterance '{utt}' has no {what}$"
    ):
        for name in ("train", "dev", "test"):
            built.check_split(name)


# ---------------------------------------------------------------- 2. utterances over the batch cap


@pytest.mark.parametrize("task", ["ks", "lid"])  # ks: its class-balanced sampler; lid: the plain one
def test_training_utterances_over_the_cap_are_dropped_with_a_warning(tmp_path, caplog, task):
    data = _data(tmp_path / task, train=[0.5, 0.5, 1.5, 0.5, 2.5, 0.5])
    config = _config(max_batch_seconds=1.0)
    built = build_task(task, data, tmp_path / "exp", config)
    built.check_split("train")  # some are kept: no error
    with caplog.at_level(logging.WARNING, logger="speechssl.downstream.tasks"):
        loader = built.train_loader(config.batching(), seed=0)
    assert loader.batch_sampler.num_dropped == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 of 6 training utterances" in warnings[0] and "max_batch_seconds 1.0 " in warnings[0]
    assert "(first: 'spk1-train-02')" in warnings[0]
    caplog.clear()  # nothing dropped: nothing said
    with caplog.at_level(logging.WARNING, logger="speechssl.downstream.tasks"):
        build_task(task, data, tmp_path / "exp", _config()).train_loader(_config().batching(), seed=0)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_every_training_utterance_over_the_cap_fails_at_start_up(tmp_path, capsys):
    data = _data(tmp_path / "ks", train=[8.0, 9.0, 8.5, 8.0, 8.0, 8.0])
    out = tmp_path / "exp"
    with pytest.raises(
        DataCheckError,
        match=rf"^every utterance of {data}/train is longer than max_batch_seconds 4.0 \(shortest 8.0 s\): "
        "raise max_batch_seconds or set max_seconds$",
    ):
        train_downstream("ks", "fbank", data, out, _config(), max_steps=1)
    assert not out.exists()
    assert downstream_train(data, out, "--max-steps", "1", "--set", "max_batch_seconds=4.0") == 1
    err = capsys.readouterr().err.strip()
    assert "longer than max_batch_seconds 4.0" in err and len(err.splitlines()) == 1
    assert not out.exists()
    # cropped to max_seconds, they fit
    build_task("ks", data, out, _config(max_seconds=2.0)).check_split("train")


# ---------------------------------------------------------------- 3. shorter than one frame


@pytest.mark.parametrize("upstream", ["fbank", "hubert"])
@pytest.mark.parametrize(("split", "seconds"), [("train", 0.02), ("dev", 0.01)])
def test_an_utterance_shorter_than_one_frame_is_named_before_training(
    tmp_path, tiny_upstream, upstream, split, seconds
):
    """fbank: 320 samples gave 0 frames, cached and trained on silently; hubert: an error by batch
    index, mid-dump or mid-training. Now one check, the same for both, naming the utterance."""
    lengths = [0.5] * (6 if split == "train" else 3)
    lengths[1] = seconds
    data = _data(tmp_path / "ks", **{split: lengths})
    utt = f"spk1-{split}-01"
    wav = data / "wav" / f"{utt}.wav"
    out = tmp_path / "exp"
    spec = "fbank" if upstream == "fbank" else str(tiny_upstream)
    with pytest.raises(
        DataCheckError,
        match=rf"^utterance '{utt}' \({wav}\) has {round(seconds * 16000)} samples, shorter than one "
        r"frame of \S+ \(400 samples\)$",
    ):
        train_downstream("ks", spec, data, out, _config(), max_steps=1)
    assert not list(out.rglob("step_*"))  # no step was trained


@pytest.mark.parametrize("upstream", ["fbank", "fbank_global_cmvn", "hubert"])
@pytest.mark.parametrize("cached", [False, True])
def test_a_stale_utt2dur_hiding_a_too_short_utterance_is_named_when_read(
    tmp_path, tiny_upstream, upstream, cached
):
    """utt2dur says 0.5 s, the audio holds 0.02 s: the start-up check trusts utt2dur, so the batch
    that reads the audio names the utterance and the stale file (was hubert's error by batch
    index, or for fbank a 0-frame example trained on silently), before any step."""
    data = _data(tmp_path / "ks")
    utt = "spk1-train-01"
    write_tone(data / "wav" / f"{utt}.wav", 0.02, freq=250.0)  # utt2dur still says 0.5
    out = tmp_path / "exp"
    spec = str(tiny_upstream) if upstream == "hubert" else upstream
    config = _config(feature_cache=str(tmp_path / "cache")) if cached else _config()
    with pytest.raises(
        DataCheckError,
        match=rf"^utterance '{utt}' has 320 samples, shorter than one frame of \S+ \(400 samples\), "
        r"though the data dir's durations \(utt2dur, segments or reco2dur\) said longer: they are stale",
    ):
        train_downstream("ks", spec, data, out, config, max_steps=1)
    assert not list(out.rglob("step_*"))  # no step was trained
    assert not list(out.rglob("*.npz"))  # nor global CMVN statistics computed without it


def test_a_crop_shorter_than_one_frame_is_refused(tmp_path):
    from speechssl.interop.upstream import load_upstream

    data = _data(tmp_path / "ks")
    task = build_task("ks", data, tmp_path / "exp", _config(max_seconds=0.02))
    task.check_split("train")
    with pytest.raises(
        DataCheckError, match=r"^max_seconds 0.02 is 320 samples, shorter than one frame of fbank"
    ):
        task.check_frames(load_upstream("fbank"))


def test_min_input_samples_is_the_first_length_with_a_frame():
    """Odd conv stacks: the answer is the receptive field (and one sample less gives no frame)."""
    from speechssl.downstream.tasks import min_input_samples
    from speechssl.interop.upstream import Upstream, load_upstream
    from speechssl.models.config import ConvFrontendConfig
    from speechssl.models.model import build_model
    from speechssl.models.presets import hubert_tiny

    assert min_input_samples(load_upstream("fbank")) == 400
    base = hubert_tiny()
    for kernels, strides in (((10, 3, 3), (5, 2, 2)), ((7, 4), (3, 3)), ((5,), (1,))):
        frontend = ConvFrontendConfig(
            conv_dim=[8] * len(kernels), conv_kernel=list(kernels), conv_stride=list(strides)
        )
        config = replace(base, frontend=frontend)
        model = build_model(config)
        need = min_input_samples(Upstream(model, config))
        assert need == model.feature_extractor.receptive_field
        assert model.num_frames(need) == 1 and model.num_frames(need - 1) == 0

    class Graph:  # an exported graph says its minimum
        min_samples = 321

    assert min_input_samples(Graph()) == 321
    assert min_input_samples(object()) is None  # a duck-typed upstream that says nothing: not checked
