"""DataDir load/write, validate (one test per Kaldi defect), fix and durations."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import soundfile as sf

from speechssl.data.datadir import (
    DataDir,
    Utterance,
    compute_durations,
    summarize_data_dir,
    write_data_dir,
)
from speechssl.data.fix import fix_data_dir
from speechssl.data.kaldi import ProblemKind
from speechssl.data.validate import validate_data_dir
from speechssl.testing.datadirs import DEFECTS, make_data_dir, plant_defect, utt_seconds


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
    with pytest.raises(
        ValueError, match=r"wav.scp:1: 'u1' Kaldi pipe entries .* write the audio to files first"
    ):
        DataDir.load(d)


def test_write_data_dir_rejects_ids_with_spaces(tmp_path):
    with pytest.raises(ValueError, match="must be non-empty and contain no whitespace"):
        write_data_dir(tmp_path / "d", {"a b": "/x.wav"})


# ---------------------------------------------------------------- validate


def test_valid_dirs_have_no_problems(data_dir, segmented_data_dir):
    assert validate_data_dir(data_dir.path) == []
    assert validate_data_dir(segmented_data_dir.path) == []


@pytest.mark.parametrize("defect", DEFECTS)
def test_each_defect_is_reported_alone_with_file_line_and_id(tmp_path, defect):
    data = make_data_dir(tmp_path, segments=defect.startswith("segment"))
    planted = plant_defect(data.path, defect)
    problems = validate_data_dir(data.path)
    assert len(problems) == 1, [str(p) for p in problems]
    (problem,) = problems
    assert (problem.file, problem.line, problem.key) == (str(planted.file), planted.line, planted.key)
    assert re.match(planted.expected, str(problem)), str(problem)


def test_several_defects_are_all_reported(tmp_path):
    data = make_data_dir(tmp_path, num_speakers=3, segments=True)
    planted = [plant_defect(data.path, d) for d in ("segment_past_end", "empty_transcript", "duplicate_id")]
    (data.path / "wav.scp").write_text((data.path / "wav.scp").read_text() + "zz-rec ls /tmp |\n")
    problems = [str(p) for p in validate_data_dir(data.path)]
    for p in planted:
        assert any(re.match(p.expected, s) for s in problems), (p.expected, problems)
    assert any(
        re.match(rf"{data.path}/wav.scp:4: 'zz-rec' Kaldi pipe entries .* not supported", s) for s in problems
    )
    assert len(problems) == 4, problems


def test_missing_utt2spk_and_spk2utt_and_unknown_recording(tmp_path):
    data = make_data_dir(tmp_path, segments=True)
    (data.path / "spk2utt").unlink()
    lines = (data.path / "segments").read_text().splitlines()
    lines[0] = lines[0].replace("spk1-rec", "nope-rec")
    (data.path / "segments").write_text("\n".join(lines) + "\n")
    problems = [str(p) for p in validate_data_dir(data.path)]
    assert problems == [
        f"{data.path}/spk2utt: is missing; `speechssl data fix` rebuilds it from utt2spk",
        f"{data.path}/segments:1: 'spk1-utt1' recording 'nope-rec' is not in wav.scp",
    ]
    (data.path / "utt2spk").unlink()
    assert "every data dir needs utt2spk" in str(validate_data_dir(data.path)[0])


def test_spk2utt_naming_wrong_speaker_and_speaker_order(tmp_path):
    data = make_data_dir(tmp_path)
    (data.path / "spk2utt").write_text("spk1 spk1-utt1 spk1-utt2 spk2-utt1\nspk2 spk2-utt2\n")
    problems = [str(p) for p in validate_data_dir(data.path)]
    assert problems == [
        f"{data.path}/spk2utt:1: 'spk1' lists utterance 'spk2-utt1', whose speaker in utt2spk is 'spk2'",
        f"{data.path}/spk2utt:2: 'spk2' does not list utterance 'spk2-utt1' (utt2spk line 3)",
    ]
    (data.path / "utt2spk").write_text("a x\nb w\n")
    (data.path / "spk2utt").write_text("w b\nx a\n")
    problems = [str(p) for p in validate_data_dir(data.path, check_audio=False)]
    assert problems[0].startswith(f"{data.path}/utt2spk:2: 'b' speaker 'w' sorts before speaker 'x'")
    assert validate_data_dir(data.path, check_audio=False)[0].kind == ProblemKind.SPEAKER_ORDER
    assert not any(
        "sorts before" in p.message
        for p in validate_data_dir(data.path, check_audio=False, check_spk_sort=False)
    )


def test_control_characters_in_text(data_dir):
    text = data_dir.path / "text"
    text.write_text(text.read_text().replace("spk1-utt2 bravo", "spk1-utt2 bra\x07vo"))
    (problem,) = validate_data_dir(data_dir.path)
    assert str(problem) == (
        f"{text}:2: 'spk1-utt2' invisible character(s) U+0007 (control character) in the value;"
        " `speechssl data fix` removes it"
    )


def test_segment_end_uses_reco2dur_within_tolerance(segmented_data_dir):
    d = segmented_data_dir.path
    # spk1-rec lasts 1.1 s: an end 5 ms late is accepted (Kaldi's 0.01 s), 20 ms late is not.
    (d / "reco2dur").write_text("spk1-rec 1.095\nspk2-rec 1.16\n")
    assert validate_data_dir(d) == []
    (d / "reco2dur").write_text("spk1-rec 1.08\nspk2-rec 1.16\n")
    (problem,) = validate_data_dir(d)
    assert str(problem).startswith(
        f"{d}/segments:2: 'spk1-utt2' end 1.1 s is past the end of recording 'spk1-rec' "
        "(1.08 s, from reco2dur"
    )


def test_summary_counts_and_hours(data_dir):
    summary = summarize_data_dir(data_dir.path)
    seconds = sum(utt_seconds(i, j) for i in range(2) for j in range(2))
    assert (summary.num_utterances, summary.num_speakers) == (4, 2)
    assert summary.seconds == pytest.approx(seconds)
    assert summary.hours == pytest.approx(seconds / 3600)


# ---------------------------------------------------------------- fix


def test_fix_drops_exactly_the_inconsistent_ids(tmp_path):
    data = make_data_dir(tmp_path, num_speakers=2, utts_per_speaker=3)
    d = data.path
    originals = {p.name: p.read_text() for p in d.iterdir() if p.is_file()}
    text = (d / "text").read_text().splitlines()
    (d / "text").write_text("\n".join(reversed([*text[:1], *text[2:], "zz-extra hi"])) + "\n")  # no spk1-utt2
    (d / "utt2dur").write_text((d / "utt2dur").read_text().replace("spk2-utt3 0.73", "spk2-utt3 abc"))
    report = fix_data_dir(d)
    assert [(x.kind, x.key, x.files) for x in report.dropped] == [
        ("utterance", "spk1-utt2", ("text",)),
        ("utterance", "spk2-utt3", ("utt2dur",)),
        ("utterance", "zz-extra", ("utt2spk", "wav.scp", "utt2dur")),
    ]
    assert [p.key for p in report.removed_lines] == ["spk2-utt3"]
    kept = ["spk1-utt1", "spk1-utt3", "spk2-utt1", "spk2-utt2"]
    assert DataDir.load(d).utt_ids() == kept
    assert (d / "spk2utt").read_text() == "spk1 spk1-utt1 spk1-utt3\nspk2 spk2-utt1 spk2-utt2\n"
    assert list((d / "text").read_text().splitlines()) == sorted(
        line for line in text if line.split()[0] in kept
    )
    assert validate_data_dir(d) == []
    assert report.backup_dir == d / ".backup"
    assert (d / ".backup" / "utt2spk").read_text() == originals["utt2spk"]
    assert "zz-extra hi" in (d / ".backup" / "text").read_text()


def test_fix_with_segments_drops_unused_recordings_and_bad_segments(segmented_data_dir):
    d = segmented_data_dir.path
    shutil.copy(d / "wav.scp", d / "wav.scp.orig")  # a backup copy is not an utterance table
    segments = (d / "segments").read_text().splitlines()
    # spk2's utterances both vanish from segments; spk1-utt2 gets start == end.
    (d / "segments").write_text(f"{segments[0]}\nspk1-utt2 spk1-rec 1.1 1.1\n")
    report = fix_data_dir(d)
    assert [(x.kind, x.key) for x in report.dropped] == [
        ("utterance", "spk1-utt2"),
        ("utterance", "spk2-utt1"),
        ("utterance", "spk2-utt2"),
        ("recording", "spk2-rec"),
        ("speaker", "spk2"),
    ]
    assert (d / "wav.scp").read_text().split()[0] == "spk1-rec" and len(
        (d / "wav.scp").read_text().splitlines()
    ) == 1
    assert (d / "spk2utt").read_text() == "spk1 spk1-utt1\n"
    assert validate_data_dir(d) == []


def test_fix_needs_utt2spk(data_dir):
    (data_dir.path / "utt2spk").unlink()
    with pytest.raises(FileNotFoundError, match="utt2spk does not exist: fix needs wav.scp and utt2spk"):
        fix_data_dir(data_dir.path)


# ---------------------------------------------------------------- durations


def test_durations_equal_real_lengths(data_dir):
    (data_dir.path / "utt2dur").unlink()
    data = compute_durations(data_dir.path, nj=2, progress=False).data
    for utt in data.utt_ids():
        info = sf.info(data.wav_scp[utt])
        assert data.utt2dur[utt] == pytest.approx(info.frames / info.samplerate, abs=1e-6)
    assert DataDir.load(data_dir.path).utt2dur == pytest.approx(data.utt2dur, abs=1e-6)
    assert data.utt2dur["spk2-utt2"] == pytest.approx(utt_seconds(1, 1))
    assert not (data_dir.path / "reco2dur").exists()


def test_durations_with_segments_write_reco2dur(segmented_data_dir):
    d = segmented_data_dir.path
    (d / "utt2dur").unlink()
    data = compute_durations(d, progress=False).data
    assert data.reco2dur == pytest.approx({"spk1-rec": 1.1, "spk2-rec": 1.16})
    assert data.utt2dur == pytest.approx(
        {u: utt_seconds(i, j) for i in range(2) for j in range(2) for u in [f"spk{i + 1}-utt{j + 1}"]}
    )
    assert (d / "reco2dur").read_text() == "spk1-rec 1.1\nspk2-rec 1.16\n"


def test_durations_fail_without_writing_on_unreadable_audio(data_dir):
    plant_defect(data_dir.path, "corrupt_audio")
    before = (data_dir.path / "utt2dur").read_text()
    with pytest.raises(
        ValueError,
        match=r"cannot read 1 audio headers:\n.*wav.scp:2: 'spk1-utt2' .*cannot read audio header",
    ):
        compute_durations(data_dir.path, progress=False)
    assert (data_dir.path / "utt2dur").read_text() == before


@pytest.mark.parametrize(
    "defect",
    [
        "unsorted",
        "duplicate_id",
        "text_extra_utt",
        "spk2utt_mismatch",
        "malformed_line",
        "segment_start_ge_end",
    ],
)
def test_fix_repairs_id_and_order_defects(tmp_path, defect):
    # Audio defects, empty transcripts and segments past the end are left to the user, as in Kaldi.
    data = make_data_dir(tmp_path, segments=defect.startswith("segment"))
    plant_defect(data.path, defect)
    fix_data_dir(data.path)
    assert validate_data_dir(data.path) == []


def test_trials_and_phone_ctm_are_not_utterance_tables(data_dir):
    (data_dir.path / "trials").write_text("spk1-utt1 spk2-utt1 nontarget\nspk1-utt1 spk1-utt2 target\n")
    (data_dir.path / "phone_ctm").write_text("spk1-utt1 1 0.00 0.10 a\nspk1-utt1 1 0.10 0.20 b\n")
    (data_dir.path / "intent").write_text("spk1-utt1 x\n")
    problems = [str(p) for p in validate_data_dir(data_dir.path)]
    assert len(problems) == 3 and all("utterance has no entry in intent" in p for p in problems)
    assert set(DataDir.load(data_dir.path).extra) == {"intent"}


def test_extra_tables_must_be_named_as_tables(tmp_path):
    # a name the table rule ignores would be written and then never read back
    with pytest.raises(ValueError, match="extra table name 'NOTES' is not an utterance table name"):
        write_data_dir(tmp_path / "d", {"u1": "/x.wav"}, extra={"NOTES": {"u1": "x"}})
    assert not (tmp_path / "d").exists()
