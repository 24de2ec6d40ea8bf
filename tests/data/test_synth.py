"""The espeak-ng corpus: alignments, inventory, determinism, speaker sets, validity, speed."""

from __future__ import annotations

import filecmp
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechssl.data import synth_text
from speechssl.data.alignments import SILENCE_PHONE, read_phone_ctm
from speechssl.data.espeak import get_espeak
from speechssl.data.kaldi import read_table
from speechssl.data.synth import BASE, PLAN, SynthConfig, build_corpus, build_speakers
from speechssl.data.synth_audio import pad_segments, rescale_segments, segments_from_events
from speechssl.data.validate import validate_data_dir

TINY_HOURS = 0.005  # the per-subset minimums make this about 2 minutes of audio
DATA_DIRS = [f"{p.subset}/{p.split}" for p in PLAN]
BASE_ONLY = (BASE,)  # the task subsets: test_synth_tasks.py


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> tuple[Path, dict, float]:
    out = tmp_path_factory.mktemp("synth") / "seed0"
    start = time.perf_counter()
    summary = build_corpus(
        SynthConfig(out_dir=str(out), hours=TINY_HOURS, seed=0, subsets=BASE_ONLY, progress=False)
    )
    return out, summary, time.perf_counter() - start


@pytest.fixture(scope="session")
def corpus_same_seed_nj2(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "seed0_nj2"
    build_corpus(
        SynthConfig(out_dir=str(out), hours=TINY_HOURS, seed=0, num_jobs=2, subsets=BASE_ONLY, progress=False)
    )
    return out


def _wav_files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in (root / "wav").rglob("*.wav"))


def test_alignments_end_within_one_frame_of_audio_end(corpus):
    root, _, _ = corpus
    for d in DATA_DIRS:
        ctm = read_phone_ctm(root / d / "phone_ctm")
        wavs = read_table(root / d / "wav.scp")
        assert set(ctm) == set(wavs), d
        for uttid, segments in ctm.items():
            info = sf.info(wavs[uttid])
            assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
            assert abs(segments[-1].end - info.duration) <= 0.010, (uttid, segments[-1].end, info.duration)
            assert segments[0].start == 0.0


def test_aligned_phones_are_in_the_inventory_and_match_phones_file(corpus):
    root, summary, _ = corpus
    inventory = set(summary["phone_inventory"])
    assert SILENCE_PHONE in inventory
    assert [line.split()[0] for line in (root / "phones.txt").read_text().splitlines()] == summary[
        "phone_inventory"
    ]
    used = set()
    for d in DATA_DIRS:
        phones = read_table(root / d / "phones")
        for uttid, segments in read_phone_ctm(root / d / "phone_ctm").items():
            labels = [s.phone for s in segments]
            assert set(labels) <= inventory, (uttid, set(labels) - inventory)
            assert not any(p.startswith("_") for p in labels)  # espeak pauses became 'sil'
            speech = [p for p in labels if p != SILENCE_PHONE] or [SILENCE_PHONE]
            assert phones[uttid].split() == speech
            used.update(labels)
    assert used == inventory


def test_same_seed_is_byte_identical_whatever_nj(corpus, corpus_same_seed_nj2):
    root, _, _ = corpus
    other = corpus_same_seed_nj2
    assert _wav_files(root) == _wav_files(other)
    for rel in _wav_files(root):
        assert filecmp.cmp(root / rel, other / rel, shallow=False), rel
    for d in DATA_DIRS:
        for name in sorted(p.name for p in (root / d).iterdir()):
            a, b = (root / d / name).read_text(), (other / d / name).read_text()
            if name == "wav.scp":  # absolute paths differ only by the output dir
                b = b.replace(str(other.resolve()), str(root.resolve()))
            assert a == b, f"{d}/{name}"
    assert json.loads((root / "summary.json").read_text()) == json.loads((other / "summary.json").read_text())


def test_another_seed_differs(corpus, tmp_path):
    root, _, _ = corpus
    out = tmp_path / "seed1"
    build_corpus(SynthConfig(out_dir=str(out), hours=TINY_HOURS, seed=1, subsets=BASE_ONLY, progress=False))
    assert (root / "read/train/text").read_text() != (out / "read/train/text").read_text()
    rel = _wav_files(root)[0]
    assert (root / rel).read_bytes() != (out / rel).read_bytes()


def test_speaker_sets_are_as_documented(corpus):
    root, summary, _ = corpus
    speakers = {d: set(read_table(root / d / "utt2spk").values()) for d in DATA_DIRS}
    seen = {s.spk_id for s in build_speakers() if s.seen}
    unseen = {s.spk_id for s in build_speakers() if not s.seen}
    assert len(seen) >= 40 and len(unseen) >= 8 and not seen & unseen
    for d in DATA_DIRS:
        assert speakers[d] <= (unseen if d == "asv/test" else seen), d
    # read splits share their speakers: dev and test speakers are all in train
    assert speakers["read/dev"] <= speakers["read/train"] and speakers["read/test"] <= speakers["read/train"]
    assert len(speakers["asv/test"]) >= 2
    for d in DATA_DIRS:
        assert summary["subsets"][d]["speakers"] == len(speakers[d])
    # every utterance id starts with its speaker (Kaldi sorting convention)
    for d in DATA_DIRS:
        assert all(u.startswith(s + "-") for u, s in read_table(root / d / "utt2spk").items())


def test_every_subset_passes_data_validation(corpus):
    root, _, _ = corpus
    for d in DATA_DIRS:
        problems = validate_data_dir(root / d)
        assert problems == [], f"{d}: {problems[:3]}"


def test_task_files(corpus):
    root, summary, _ = corpus
    for split in ("train", "dev", "test"):
        labels = read_table(root / "keywords" / split / "text")
        assert set(labels.values()) == set(synth_text.KEYWORD_CLASSES)  # all 12 classes in each split
        intents = read_table(root / "commands" / split / "intent")
        for uttid, value in intents.items():
            action, obj, location = value.split()
            assert (
                action in synth_text.ACTIONS
                and obj in synth_text.OBJECTS
                and location in synth_text.LOCATIONS
            )
            assert obj in read_table(root / "commands" / split / "text")[uttid]
    assert len(synth_text.all_intents()) >= 24
    trials = [line.split() for line in (root / "asv/test/trials").read_text().splitlines()]
    utt2spk = read_table(root / "asv/test/utt2spk")
    assert {t[2] for t in trials} == {"target", "nontarget"}
    for enroll, test, label in trials:
        assert (utt2spk[enroll] == utt2spk[test]) == (label == "target")
    for uttid, words in read_table(root / "read/train/text").items():
        duration = float(read_table(root / "read/train/utt2dur")[uttid])
        assert 2.0 <= duration <= 12.0 and len(words.split()) >= 2
    assert summary["vocabulary_size"] >= 2000
    assert set(summary["subsets"]) == set(DATA_DIRS)


def test_tiny_corpus_builds_in_seconds(corpus):
    _, summary, seconds = corpus
    assert summary["hours"] < 0.1
    assert seconds < 60, f"tiny corpus took {seconds:.1f} s"  # generous: CI machines vary


def test_noise_is_on_by_default_and_clean_turns_it_off(corpus, tmp_path):
    root, _, _ = corpus
    clean = tmp_path / "clean"
    build_corpus(
        SynthConfig(out_dir=str(clean), hours=TINY_HOURS, clean=True, subsets=BASE_ONLY, progress=False)
    )
    # a _silence_ clip: background noise by default, digital silence with clean=True
    labels = read_table(root / "keywords/train/text")
    uttid = next(u for u, label in labels.items() if label == synth_text.SILENCE)
    noisy, _ = sf.read(read_table(root / "keywords/train/wav.scp")[uttid], dtype="int16")
    quiet, _ = sf.read(read_table(clean / "keywords/train/wav.scp")[uttid], dtype="int16")
    assert np.abs(noisy).max() > 0 and np.abs(quiet).max() == 0


def test_espeak_phoneme_events_cover_the_audio():
    engine = get_espeak()
    engine.set_voice("en-us+m3", rate=175, pitch=50, pitch_range=50)
    result = engine.synthesize("stop the music")
    assert result.sample_rate == 22050 and result.audio.dtype == np.int16
    names = [name for name, _ in result.phoneme_events]
    assert {"s", "m"} <= set(names)
    samples = [sample for _, sample in result.phoneme_events]
    assert samples == sorted(samples) and samples[-1] <= result.audio.shape[0]
    segments = segments_from_events(result.phoneme_events, result.audio.shape[0])
    assert segments[0][1] == 0 and segments[-1][2] == result.audio.shape[0]
    assert all(a[2] == b[1] for a, b in zip(segments, segments[1:]))


def test_unknown_voice_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no voice 'en-xx\\+m3'"):
        get_espeak().set_voice("en-xx+m3", rate=175, pitch=50, pitch_range=50)


def test_segment_time_changes_keep_contiguity():
    segments = [("sil", 0, 100), ("a", 100, 250), ("b", 250, 441)]
    scaled = rescale_segments(segments, 441, 320)
    assert scaled[0][1] == 0 and scaled[-1][2] == 320
    assert all(a[2] == b[1] for a, b in zip(scaled, scaled[1:]))
    padded = pad_segments(scaled, 10, 5)
    assert padded[0] == ("sil", 0, scaled[0][2] + 10) and padded[-1] == ("sil", scaled[-1][2] + 10, 335)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"hours": 0}, "hours must be > 0"), ({"num_jobs": 0}, "num_jobs must be >= 1"),
     ({"snr_db": (20.0, 5.0)}, "snr_db must be \\(low, high\\)")],
)  # fmt: skip
def test_config_errors(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        SynthConfig(out_dir=str(tmp_path), **kwargs)


def test_synth_refuses_an_out_dir_with_foreign_files(tmp_path, capsys):
    from speechssl.cli.main import main

    out = tmp_path / "data"
    out.mkdir()
    (out / "NOTES").write_text("my notes")
    assert main(["synth", "--out", str(out), "--hours", str(TINY_HOURS), "--no-progress"]) == 1
    assert "already holds files that `speechssl synth` did not write (NOTES)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["NOTES"]


def test_synth_reruns_into_its_own_output(corpus):
    out, summary, _ = corpus
    again = build_corpus(
        SynthConfig(out_dir=str(out), hours=TINY_HOURS, seed=0, subsets=BASE_ONLY, progress=False)
    )
    assert again == summary
