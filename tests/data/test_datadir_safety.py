"""Issue 12: data-dir commands never lose a user's data (the table rule, backups, invisible
characters, non-regular files, audio training cannot read, combine's --out)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechssl.cli.main import main
from speechssl.data.datadir import DataDir, combine_data_dirs
from speechssl.data.fix import fix_data_dir
from speechssl.data.validate import check_data_dir, validate_data_dir
from speechssl.errors import WriteFailedError
from speechssl.testing.datadirs import make_data_dir, plant_defect, write_tone
from tests.features.test_fingerprint import dead_pid

UTTS = ["spk1-utt1", "spk1-utt2", "spk2-utt1", "spk2-utt2"]


def snapshot(d: Path) -> dict[str, bytes]:
    """Every regular file under `d` (hidden ones and subdirs included) -> its bytes."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def with_foreign_files(d: Path) -> dict[str, bytes]:
    """Files a user keeps in a data dir that are not utterance tables; returns their bytes."""
    (d / "NOTES").write_text("spk1-utt1 recorded twice\nkept on purpose\n")
    (d / "LICENSE").write_text("CC-BY 4.0\n")
    (d / "spk2age").write_text(
        "spk1 34\nspk2 51\n"
    )  # a speaker table: filtered by speaker, never by utterance
    for utt, audio in DataDir.load(d).wav_scp.items():
        shutil.copy(audio, d / f"{utt}.wav")  # the audio kept beside the tables
    (d / "km50").mkdir()
    (d / "km50" / "labels").write_text("spk1-utt1 1 2 3\n")
    return {name: (d / name).read_bytes() for name in ("NOTES", "LICENSE", "spk2age", "spk1-utt1.wav")}


# ---------------------------------------------------------------- item 2: unknown files are not tables


def test_unknown_files_beside_the_tables_are_ignored_by_validate_and_fix(data_dir, capsys):
    d = data_dir.path
    foreign = with_foreign_files(d)
    assert main(["data", "validate", str(d)]) == 0
    out = capsys.readouterr().out.splitlines()
    ignored = [line for line in out if "ignored" in line]
    assert ignored == [
        f"note: {d}: ignored 6 file(s) that are not data-dir tables (left as they are): LICENSE, NOTES,"
        " spk1-utt1.wav, spk1-utt2.wav, spk2-utt1.wav, spk2-utt2.wav"
    ]
    assert out[-1].startswith(f"{d}: OK: 4 utterances, 2 speakers")

    plant_defect(d, "unsorted")  # something for fix to do
    assert main(["data", "fix", str(d)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"{d}: kept 4 utterances, dropped 0; changed text; originals in {d / '.backup'}"
    assert "ignored (not data-dir tables, left as they are): LICENSE, NOTES, spk1-utt1.wav" in "\n".join(out)
    assert DataDir.load(d).utt_ids() == UTTS
    assert {name: (d / name).read_bytes() for name in foreign} == foreign
    assert (d / "km50" / "labels").read_text() == "spk1-utt1 1 2 3\n"
    assert sorted(p.name for p in (d / ".backup").iterdir()) == [
        "spk2age",
        "spk2utt",
        "text",
        "utt2dur",
        "utt2spk",
        "wav.scp",
    ]  # tables only, not the audio
    assert validate_data_dir(d) == []


def test_speaker_tables_are_filtered_by_speaker_and_never_drop_utterances(data_dir):
    d = data_dir.path
    (d / "spk2age").write_text("spk1 34\nspk9 20\n")  # spk2 unknown to it, spk9 not in the dir
    (problem,) = validate_data_dir(d)
    assert str(problem) == f"{d}/spk2age:2: 'spk9' speaker is not in utt2spk"
    report = fix_data_dir(d)
    assert report.num_utterances == 4 and report.changed == ("spk2age",)
    assert (d / "spk2age").read_text() == "spk1 34\n"


def test_table_rule_names(tmp_path):
    from speechssl.data.layout import list_data_dir

    for name in (
        "utt2spk",
        "utt2lang",
        "utt2category",
        "feats.scp",
        "lid.scp",
        "phones",
        "intent",
        "reco2channels",
        "spk2age",
        "text",
        "wav.scp",
    ):
        (tmp_path / name).write_text("a b\n")
    for name in ("utt2spk.orig", "text~", "wav.scp.bak", "NOTES", "trials", "phone_ctm", "a.wav", ".hidden"):
        (tmp_path / name).write_text("x\n")
    listing = list_data_dir(tmp_path)
    assert listing.tables == {
        "wav.scp": "wav",
        "utt2spk": "utterance",
        "text": "utterance",
        "phones": "utterance",
        "intent": "utterance",
        "feats.scp": "utterance",
        "lid.scp": "utterance",
        "utt2category": "utterance",
        "utt2lang": "utterance",
        "reco2channels": "recording",
        "spk2age": "speaker",
    }
    assert listing.ignored == (
        "NOTES",
        "a.wav",
        "text~",
        "utt2spk.orig",
        "wav.scp.bak",
    )  # trials, phone_ctm: known


# ---------------------------------------------------------------- item 3: the first backup is kept


def test_second_fix_keeps_the_first_originals_in_backup_and_writes_backup_1(data_dir, capsys):
    d = data_dir.path
    plant_defect(d, "text_extra_utt")
    original_text = (d / "text").read_text()
    fix_data_dir(d)
    once_fixed = (d / "text").read_text()
    assert (d / ".backup" / "text").read_text() == original_text

    assert fix_data_dir(d).backup_dir is None  # nothing to change: nothing written, no new backup
    assert not (d / ".backup.1").exists()

    plant_defect(d, "unsorted")
    assert main(["data", "fix", str(d)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(f"originals in {d / '.backup.1'}")
    assert (d / ".backup" / "text").read_text() == original_text  # the first originals survive
    assert (d / ".backup.1" / "text").read_text() != once_fixed  # the unsorted one
    assert sorted((d / ".backup.1" / "text").read_text().splitlines()) == sorted(once_fixed.splitlines())


def test_fix_that_would_empty_the_dir_is_refused_and_changes_nothing(data_dir, capsys):
    d = data_dir.path
    (d / "text").write_text("other-utt1 hello\nother-utt2 world\n")  # a text of another dir copied in
    before = snapshot(d)
    assert main(["data", "fix", str(d)]) == 1
    err = capsys.readouterr().err
    assert f"{d}: fix would keep no utterance (all 6 utterances lack an entry in some table;" in err
    assert "nothing changed" in err and "--allow-empty" in err and len(err.strip().splitlines()) == 1
    assert snapshot(d) == before and not (d / ".backup").exists()
    assert main(["data", "fix", "--allow-empty", str(d)]) == 0
    assert (d / "utt2spk").read_text() == "" and (d / ".backup" / "utt2spk").read_bytes() == before["utt2spk"]


def test_fix_that_fails_while_writing_leaves_every_table_whole(data_dir, monkeypatch):
    """A full disk on the second table: no table is replaced (all temps are written before any rename)."""
    import speechssl.data.fix as fix_module

    d = data_dir.path
    plant_defect(d, "text_extra_utt")
    plant_defect(d, "spk2utt_mismatch")
    before = snapshot(d)
    real = fix_module.atomic_file
    calls = []

    def failing(path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path)

    monkeypatch.setattr(fix_module, "atomic_file", failing)
    with pytest.raises(WriteFailedError, match="No space left"):
        fix_data_dir(d)
    after = snapshot(d)
    assert {k: v for k, v in after.items() if not k.startswith(".")} == {
        k: v for k, v in before.items() if not k.startswith(".")
    }
    assert not [p for p in os.listdir(d) if ".tmp" in p]


def test_fix_stopped_among_its_renames_puts_the_replaced_tables_back(data_dir, monkeypatch):
    """Ctrl-C (or a table that cannot be replaced) after the first table went in: that one gets its
    original back from the backup, so the dir is as it was, not half fixed (spk2utt stayed new)."""
    d = data_dir.path
    plant_defect(d, "text_extra_utt")
    plant_defect(d, "spk2utt_mismatch")
    before = snapshot(d)
    replace, renamed = os.replace, []

    def stopping(src, dst):  # the second rename is stopped, no other
        renamed.append(Path(dst).name)
        if len(renamed) == 2:
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(os, "replace", stopping)
    with pytest.raises(KeyboardInterrupt):
        fix_data_dir(d)
    monkeypatch.undo()
    assert renamed and {k: v for k, v in snapshot(d).items() if not k.startswith(".")} == before
    assert not [p for p in os.listdir(d) if ".tmp" in p]


def test_fix_removes_the_temp_tables_of_a_killed_fix(data_dir):
    d = data_dir.path
    plant_defect(d, "text_extra_utt")
    dead = dead_pid()
    (d / f".text.{dead}.tmp").write_text("half a table")
    (d / f".NOTES.{dead}.tmp").write_text("not a table's: left alone")
    fix_data_dir(d)
    assert sorted(p for p in os.listdir(d) if ".tmp" in p) == [f".NOTES.{dead}.tmp"]


def test_fix_write_failure_is_one_line_naming_the_file(data_dir, monkeypatch):
    d = data_dir.path
    plant_defect(d, "text_extra_utt")
    before = (d / "text").read_bytes()

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", no_space)
    with pytest.raises(WriteFailedError, match=rf"cannot write {d}/text: No space left on device"):
        fix_data_dir(d)
    monkeypatch.undo()
    assert (d / "text").read_bytes() == before


# ---------------------------------------------------------------- item 4: BOM, CRLF, invisible characters


def test_byte_order_mark_is_named_and_fix_keeps_the_first_utterance(data_dir, capsys):
    d = data_dir.path
    for name in ("text", "utt2spk"):
        (d / name).write_bytes(b"\xef\xbb\xbf" + (d / name).read_bytes())  # saved by a Windows editor
    assert main(["data", "validate", str(d)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{d}/utt2spk:1: 'spk1-utt1' file starts with a UTF-8 byte-order mark (U+FEFF), "
        "an invisible character"
        " that becomes part of the first id; `speechssl data fix` removes it",
        f"{d}/text:1: 'spk1-utt1' file starts with a UTF-8 byte-order mark (U+FEFF), an invisible character"
        " that becomes part of the first id; `speechssl data fix` removes it",
    ]
    report = fix_data_dir(d)
    assert report.num_utterances == 4 and report.dropped == () and report.changed == ("text", "utt2spk")
    assert not (d / "text").read_bytes().startswith(b"\xef\xbb\xbf")
    assert validate_data_dir(d) == []


def test_windows_line_endings_are_named_once_per_file_and_fixed(data_dir):
    d = data_dir.path
    (d / "utt2spk").write_bytes((d / "utt2spk").read_bytes().replace(b"\n", b"\r\n"))
    (problem,) = validate_data_dir(d)
    assert str(problem) == (
        f"{d}/utt2spk:1: has Windows line endings (CR LF) on 4 line(s), first on this one;"
        " `speechssl data fix` rewrites them with LF"
    )
    assert DataDir.load(d).utt_ids() == UTTS  # readers take the ids as meant
    fix_data_dir(d)
    assert b"\r" not in (d / "utt2spk").read_bytes() and validate_data_dir(d) == []


@pytest.mark.parametrize(("char", "name"), [("\u200b", "ZERO WIDTH SPACE"), ("\u00a0", "NO-BREAK SPACE")])
def test_invisible_characters_in_ids_are_named_with_file_and_line_and_stripped(data_dir, char, name):
    d = data_dir.path
    text = (d / "text").read_text().splitlines(keepends=True)
    text[2] = text[2].replace("spk2-utt1", f"spk2-utt1{char}")  # pasted from a web page
    (d / "text").write_text("".join(text))
    problems = [str(p) for p in validate_data_dir(d)]
    assert problems == [
        f"{d}/text:3: 'spk2-utt1' invisible character(s) U+{ord(char):04X} ({name}) in the id;"
        " `speechssl data fix` removes it"
    ]
    with pytest.raises(ValueError, match=r"text:3: 'spk2-utt1' invisible character"):
        DataDir.load(d)  # an id that is not what it looks like is not read silently
    report = fix_data_dir(d)
    assert report.num_utterances == 4 and [str(p) for p in report.cleaned] == problems
    assert DataDir.load(d).text["spk2-utt1"] == "bravo charlie delta"


# ---------------------------------------------------------------- item 12: FIFOs, stereo, rates, truncation


@pytest.mark.timeout(20)
def test_fifo_in_wav_scp_is_a_problem_not_a_hang(data_dir, capsys):
    d = data_dir.path
    fifo = Path(data_dir.wav_scp["spk1-utt2"])
    fifo.unlink()
    os.mkfifo(fifo)  # nobody writes it
    assert main(["data", "validate", str(d)]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert line == (
        f"{d}/wav.scp:2: 'spk1-utt2' {fifo}: is a FIFO (named pipe), not an audio file;"
        " wav.scp must list regular audio files"
    )
    assert main(["data", "durations", str(d)]) == 1
    assert "is a FIFO" in capsys.readouterr().err


@pytest.mark.timeout(20)
def test_fifo_named_like_a_table_is_never_opened(data_dir, capsys):
    d = data_dir.path
    (d / "text").unlink()
    os.mkfifo(d / "text")
    (problem,) = validate_data_dir(d)
    assert str(problem) == f"{d}/text: is a FIFO (named pipe), not a regular file: not read"
    with pytest.raises(ValueError, match="text: is a FIFO"):
        DataDir.load(d)
    assert main(["data", "fix", str(d)]) == 1
    assert "fix reads only regular files: nothing changed" in capsys.readouterr().err


def test_stereo_audio_is_a_problem_that_names_the_recording(data_dir, capsys):
    d = data_dir.path
    audio = data_dir.wav_scp["spk2-utt1"]
    sf.write(audio, np.zeros((8000, 2), dtype=np.float32), 16000, subtype="PCM_16")
    assert main(["data", "validate", str(d)]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"{d}/wav.scp:3: 'spk2-utt1' audio file {audio} has 2 channels;")
    assert "read mono audio" in line


def test_other_sample_rates_are_a_note_not_a_problem(data_dir, capsys):
    d = data_dir.path
    write_tone(data_dir.wav_scp["spk1-utt2"], 0.6, sample_rate=8000)
    write_tone(data_dir.wav_scp["spk2-utt2"], 0.63, sample_rate=8000)
    check = check_data_dir(d)
    assert check.problems == []
    assert [str(n) for n in check.notes] == [
        f"{d}/wav.scp:2: 'spk1-utt2' 2 recording(s) at 8000 Hz, this one first: "
        "resampled to 16000 Hz when read"
    ]
    assert main(["data", "validate", str(d)]) == 0
    assert "note: " in capsys.readouterr().out


def test_truncated_wav_is_a_problem_naming_the_utterance_and_path(data_dir):
    d = data_dir.path
    audio = Path(data_dir.wav_scp["spk2-utt2"])
    audio.write_bytes(audio.read_bytes()[:-4000])  # an interrupted copy
    (problem,) = validate_data_dir(d)
    assert str(problem).startswith(
        f"{d}/wav.scp:4: 'spk2-utt2' {audio}: truncated WAV file: "
        "its header declares 10080 samples (0.630 s),"
        " the file holds 8080 (0.505 s)"
    )


# ---------------------------------------------------------------- combine --out


def _two_sources(tmp_path):
    a = make_data_dir(tmp_path, name="a").path
    b = make_data_dir(tmp_path / "other", name="b").path
    for name in ("wav.scp", "utt2spk", "text", "utt2dur", "spk2utt"):  # distinct ids in b
        (b / name).write_text((b / name).read_text().replace("spk", "tspk"))
    return a, b


def test_combine_into_one_of_its_sources_is_refused_and_changes_nothing(tmp_path, capsys):
    a, b = _two_sources(tmp_path)
    before = snapshot(tmp_path)
    assert main(["data", "combine", "--out", str(a), str(a), str(b)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"speechssl data: error: --out {a} is an input of this command ({a}); choose another --out"
    )
    assert main(["data", "combine", "--overwrite", "--out", str(tmp_path), str(a), str(b)]) == 1
    assert "contains an input of this command" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_combine_refuses_a_foreign_dir_and_leaves_no_stale_file_on_rerun(tmp_path, capsys):
    a, b = _two_sources(tmp_path)
    out = tmp_path / "all"
    out.mkdir()
    (out / "keep").write_text("mine")
    assert main(["data", "combine", "--out", str(out), str(a), str(b)]) == 1
    assert "did not write (keep)" in capsys.readouterr().err and (out / "keep").read_text() == "mine"
    out = tmp_path / "all2"
    assert main(["data", "combine", "--out", str(out), str(a), str(b)]) == 0
    assert DataDir.load(out).utt_ids() == UTTS + [f"t{u}" for u in UTTS] and (out / "text").exists()
    (b / "text").unlink()  # recombine without transcripts: the old text must not survive
    combine_data_dirs(out, [a, b])
    assert not (out / "text").exists()
    assert validate_data_dir(out, check_audio=False) == []
