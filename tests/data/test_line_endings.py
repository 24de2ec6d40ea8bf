"""Old Mac (CR alone) line endings: named as such, and each CR ends a line (never glued lines); a CR
inside a line of an LF file is no line end but an invisible character."""

from __future__ import annotations

from speechssl.cli.main import main
from speechssl.data.datadir import DataDir
from speechssl.data.kaldi import scan_table
from speechssl.data.validate import validate_data_dir


def test_cr_alone_ends_a_line_and_is_named(tmp_path):
    table = tmp_path / "text"
    table.write_bytes(b"a one\rb two\rc three\r")
    rows, problems = scan_table(table)
    assert [(r.line, r.key, r.value) for r in rows] == [(1, "a", "one"), (2, "b", "two"), (3, "c", "three")]
    assert [str(p) for p in problems] == [
        f"{table}:1: has old Mac line endings (CR alone) on 3 line(s), first on this one;"
        " `speechssl data fix` rewrites them with LF"
    ]


def test_fix_turns_cr_alone_into_lf_and_keeps_every_utterance(data_dir, capsys):
    d = data_dir.path
    text = (d / "text").read_text()
    (d / "text").write_bytes(text.replace("\n", "\r").encode())
    problems = validate_data_dir(d, check_audio=False)
    assert [p.message.split(" on ")[0] for p in problems] == ["has old Mac line endings (CR alone)"]
    assert main(["data", "fix", str(d)]) == 0
    assert (d / "text").read_text() == text
    assert len(DataDir.load(d).utt_ids()) == 4
    assert "dropped 0" in capsys.readouterr().out


def test_crlf_is_still_called_windows_line_endings(tmp_path):
    table = tmp_path / "utt2spk"
    table.write_bytes(b"a s\r\nb s\r\n")
    rows, problems = scan_table(table)
    assert [r.key for r in rows] == ["a", "b"]
    assert [p.message for p in problems] == [
        "has Windows line endings (CR LF) on 2 line(s), first on this one;"
        " `speechssl data fix` rewrites them with LF"
    ]


def test_a_cr_inside_a_line_of_an_lf_file_is_no_line_end(data_dir, capsys):
    """A CR pasted into a transcript (spreadsheets, web forms): the line is one utterance, the CR an
    invisible character fix turns into a space (it cut the transcript there and reported the word
    after the CR as a dropped utterance)."""
    d = data_dir.path
    lines = (d / "text").read_text().splitlines()
    key = lines[1].split()[0]
    lines[1] = f"{key} hello\rworld 1"
    (d / "text").write_text("\n".join(lines) + "\n")
    problems = validate_data_dir(d, check_audio=False)
    assert [p.message.split(" U+")[0] for p in problems] == ["invisible character(s)"]
    assert main(["data", "fix", str(d)]) == 0
    assert f"{key} hello world 1\n" in (d / "text").read_text()
    assert len(DataDir.load(d).utt_ids()) == 4 and "dropped 0" in capsys.readouterr().out


def test_an_old_mac_file_with_an_lf_line_appended_is_still_split_at_its_crs(tmp_path):
    """`echo "c three" >> text` on an old Mac file: its CRs still end lines (one LF made it read as
    one line, and fix kept one utterance with every transcript)."""
    table = tmp_path / "text"
    table.write_bytes(b"a one\rb two\rc three\n")
    rows, _ = scan_table(table)
    assert [(r.line, r.key, r.value) for r in rows] == [(1, "a", "one"), (2, "b", "two"), (3, "c", "three")]
