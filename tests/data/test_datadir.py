"""DataDir load/write round trip, utterance resolution and parse errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from speechssl.data.datadir import DataDir, Utterance, write_data_dir


def _wav(path, seconds=1.0, sr=16000):
    sf.write(path, np.zeros(int(seconds * sr), dtype=np.float32), sr)
    return str(path)


def test_round_trip_with_segments_and_extras(tmp_path):
    audio = _wav(tmp_path / "r1.wav")
    d = write_data_dir(
        tmp_path / "d",
        {"r1": audio},
        segments={"u2": ("r1", 0.5, 1.0), "u1": ("r1", 0.0, 0.5)},
        text={"u1": "hello there", "u2": "yo"},
        extra={"intent": {"u2": "b", "u1": "a"}},
    )
    assert (tmp_path / "d" / "spk2utt").read_text() == "u1 u1\nu2 u2\n"
    assert (tmp_path / "d" / "segments").read_text() == "u1 r1 0 0.5\nu2 r1 0.5 1\n"
    loaded = DataDir.load(tmp_path / "d")
    assert loaded.utt_ids() == ["u1", "u2"]
    assert loaded.utterances() == [
        Utterance("u1", audio, 0.0, 0.5, "u1"),
        Utterance("u2", audio, 0.5, 1.0, "u2"),
    ]
    assert loaded.text == {"u1": "hello there", "u2": "yo"}
    assert loaded.table("intent") == {"u1": "a", "u2": "b"}
    assert loaded.segments == d.segments and loaded.spk2utt == d.spk2utt


def test_utt_ids_are_c_locale_sorted(tmp_path):
    wav_scp = {k: _wav(tmp_path / f"{k}.wav", 0.1) for k in ["b", "B", "a_1", "a-1"]}
    d = write_data_dir(tmp_path / "d", wav_scp, utt2spk={k: "s" for k in wav_scp})
    assert d.utt_ids() == ["B", "a-1", "a_1", "b"]
    assert DataDir.load(tmp_path / "d").spk2utt == {"s": ["B", "a-1", "a_1", "b"]}


def test_load_names_file_line_and_id_on_malformed_line(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "wav.scp").write_text("u1 /x.wav\nu2 /y.wav\n")
    (d / "utt2dur").write_text("u1 1.0\nu2 abc\n")
    with pytest.raises(ValueError, match=r"utt2dur:2: 'u2' expected '<id> <duration in seconds>'"):
        DataDir.load(d)


def test_load_rejects_pipes_with_policy(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "wav.scp").write_text("u1 sox /x.flac -t wav - |\n")
    with pytest.raises(ValueError, match=r"wav.scp:1: 'u1' Kaldi pipe entries .* write the audio to files first"):
        DataDir.load(d)


def test_write_data_dir_rejects_ids_with_spaces(tmp_path):
    with pytest.raises(ValueError, match="must be non-empty and contain no whitespace"):
        write_data_dir(tmp_path / "d", {"a b": "/x.wav"})
