"""Kaldi tables: C-locale order, scan_table's problems with line numbers, atomic writes."""

from __future__ import annotations

import pytest

from speechssl.data.kaldi import Problem, ProblemKind, c_sort_key, read_table, scan_table, write_table
from speechssl.io import atomic_file


def test_c_sort_is_byte_order():
    assert sorted(["b", "a_1", "B", "a-1", "é"], key=c_sort_key) == ["B", "a-1", "a_1", "b", "é"]


def test_write_table_sorts_and_round_trips(tmp_path):
    write_table(tmp_path / "t", {"b": ["x", 1], "a": "y z", "c": ""})
    assert (tmp_path / "t").read_text() == "a y z\nb x 1\nc\n"
    assert read_table(tmp_path / "t") == {"a": "y z", "b": "x 1", "c": ""}
    assert not list(tmp_path.glob(".t.tmp*"))


def test_read_table_names_duplicate_lines(tmp_path):
    (tmp_path / "t").write_text("a 1\nb 2\na 3\n")
    with pytest.raises(ValueError, match=r"t:3: duplicate key 'a' \(first on line 1\)"):
        read_table(tmp_path / "t")


def test_a_latin1_table_is_one_line_naming_file_and_line(tmp_path):
    """A Latin-1 transcript (é as one byte) read as a table: the error names the file and the
    line, not only the codec's byte position."""
    (tmp_path / "text").write_bytes(b"u1 hello\nu2 caf\xe9\nu3 ok\n")
    # each line decoded alone, as `scan_table` (validate) decodes it: the same reason in both
    with pytest.raises(ValueError, match=r"^\S+/text:2: is not valid UTF-8 \(unexpected end of data\)$"):
        read_table(tmp_path / "text")


def test_a_utf16_table_is_said_to_be_utf16(tmp_path):
    """A table saved as UTF-16 (a Windows editor, PowerShell's >) is named as such, with the fix."""
    (tmp_path / "text").write_bytes("u1 hello\nu2 ok\n".encode("utf-16"))
    expected = (
        r"text:1: is UTF-16 \(it starts with a UTF-16 byte-order mark\), not UTF-8: convert it with iconv"
    )
    with pytest.raises(ValueError, match=expected):
        read_table(tmp_path / "text")
    _, problems = scan_table(tmp_path / "text")
    assert "is UTF-16" in problems[0].message and problems[0].line == 1


def test_scan_table_reports_every_problem_with_lines(tmp_path):
    (tmp_path / "t").write_bytes(b"b 1\n\na 2\nb 3\n\xff\xfe bad\nc  spaced   value \n")
    rows, problems = scan_table(tmp_path / "t")
    assert [(r.line, r.key, r.value) for r in rows] == [
        (1, "b", "1"),
        (3, "a", "2"),
        (4, "b", "3"),
        (6, "c", "spaced   value"),
    ]
    assert [(p.line, p.key) for p in problems] == [(3, "a"), (4, "b"), (5, None)]
    assert "not sorted in C locale: this id comes after 'b' (line 1)" in problems[0].message
    assert problems[1].message == "duplicate id (first on line 1)"
    assert "not valid UTF-8" in problems[2].message
    assert [p.kind for p in problems] == [ProblemKind.UNSORTED, ProblemKind.DUPLICATE, ProblemKind.NOT_UTF8]


def test_problem_str_names_file_line_and_id():
    assert (
        str(Problem("d/text", 3, "u1", "empty transcript", ProblemKind.EMPTY_TEXT))
        == "d/text:3: 'u1' empty transcript"
    )
    assert (
        str(Problem("d/spk2utt", None, None, "is missing", ProblemKind.MISSING_FILE))
        == "d/spk2utt: is missing"
    )


def test_atomic_file_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "sub" / "model.npy"
    with atomic_file(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".npy"  # writers that infer the format
        tmp.write_bytes(b"first")
    assert path.read_bytes() == b"first"
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert path.read_bytes() == b"first"  # the old file is untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.npy"]  # no temp file left


@pytest.mark.timeout(20)
def test_a_fifo_given_as_a_table_is_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "labels"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match=r"labels is a FIFO \(named pipe\), not a regular file"):
        read_table(fifo)
