"""Kaldi data-dir files: `key value...` tables, sorted in C locale.

The files of a data dir (wav.scp, text, utt2spk, spk2utt, segments, utt2dur,
reco2dur, and our extras such as phones, phone_ctm, intent) are all
"first token is the key, the rest is the value". Fields are separated by
ASCII spaces and tabs only, as in Kaldi (a no-break space is part of an id, not
a separator). Keys are compared as bytes (C locale), as Kaldi's `sort` with
LC_ALL=C does.

Invisible characters (a UTF-8 byte-order mark, Windows CR line endings,
zero-width and other format characters, control characters, non-ASCII spaces)
are reported by `scan_table` with file and line, and `clean_line` removes them:
the rows it returns are already clean, so one invisible character does not
turn into a missing utterance in every other file.
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import BinaryIO

from speechssl.data.layout import file_kind
from speechssl.io import atomic_write_text


def c_sort_key(key: str) -> bytes:
    """Sort key matching `LC_ALL=C sort`: byte order of the UTF-8 encoding."""
    return key.encode("utf-8")


def format_seconds(value: float) -> str:
    """Seconds with microsecond precision, no trailing zeros (1.5, 0.01, 3)."""
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"


BOM = "\ufeff"
_SEPARATOR = re.compile(r"[ \t]+")


def split_line(line: str) -> tuple[str, str] | None:
    """(key, value) of a table line split on ASCII spaces and tabs, or None for a blank line."""
    line = line.strip(" \t")
    if not line:
        return None
    parts = _SEPARATOR.split(line, maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else ""


def _is_invisible(c: str) -> bool:
    if c.isascii() and (c.isprintable() or c == "\t"):
        return False
    category = unicodedata.category(c)
    return category in ("Cf", "Cc", "Zl", "Zp") or (category == "Zs" and c != " ")


def invisible_characters(text: str) -> list[str]:
    """Characters a reader cannot see that change an id or a value: format characters (zero-width
    space, joiners, byte-order mark), control characters other than tab, and spaces other than
    the ASCII one (no-break space, line separators)."""
    return [c for c in text if _is_invisible(c)]


def describe_characters(chars: Iterable[str]) -> str:
    """'U+200B (ZERO WIDTH SPACE), U+00A0 (NO-BREAK SPACE)', each once, in order of appearance."""
    return ", ".join(
        f"U+{ord(c):04X} ({unicodedata.name(c, 'control character')})" for c in dict.fromkeys(chars)
    )


def clean_line(text: str) -> str:
    """`text` without invisible characters: spaces (and CRs) become ASCII spaces, the others are
    removed."""
    out = []
    for c in text:
        if not _is_invisible(c):
            out.append(c)
        elif c == "\r" or unicodedata.category(c) in ("Zs", "Zl", "Zp"):  # spaces, a pasted CR
            out.append(" ")
    return "".join(out)


def check_regular_file(path: str | Path) -> None:
    """Refuse a FIFO, device or directory before opening it: reading one would block or fail."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path} is {file_kind(mode)}, not a regular file")


def read_table_lines(path: str | Path) -> list[tuple[int, str, str]]:
    """(line number, key, value) for each non-empty line; value may be ''. A byte-order mark and
    CR line endings are dropped (`scan_table` reports them); lines are split as `scan_table` splits
    them (`_split_lines`), so both number them alike."""
    check_regular_file(path)
    rows = []
    for lineno, line in enumerate(read_lines(path), start=1):
        parts = split_line(line.removeprefix(BOM) if lineno == 1 else line)
        if parts is not None:
            rows.append((lineno, *parts))
    return rows


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file that is not a table (trials, rttm, a corpus's lists), split as
    `scan_table` splits them; bytes that are not UTF-8 are a ValueError naming the file and line, not
    the codec's bare message."""
    lines = []
    with open(path, "rb") as f:
        for lineno, (raw, _) in enumerate(_split_lines(f), start=1):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                raise _not_utf8_at(path, lineno, raw, err.reason) from None
    return lines


def _not_utf8_at(path: str | Path, lineno: int, raw: bytes, reason: str) -> ValueError:
    return ValueError(f"{path}:{lineno}: {_not_utf8(raw if lineno == 1 else b'', reason)}")


def _not_utf8(head: bytes, reason: str) -> str:
    """The message for a table that does not decode: a UTF-16 file (Windows editors, PowerShell's
    `>`) is said to be one, with the command that converts it."""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return (
            "is UTF-16 (it starts with a UTF-16 byte-order mark), not UTF-8: convert it with "
            "iconv -f UTF-16 -t UTF-8"
        )
    return f"is not valid UTF-8 ({reason})"


def _split_lines(f: BinaryIO) -> Iterator[tuple[bytes, bytes]]:
    """(line, its end) of a binary file: LF, CR LF, or, in an old Mac file, a CR alone; b"" ends a
    last line without one. A file is an old Mac file when its CRs alone outnumber its LFs (LF lines
    may have been appended to it); in a file of LF lines a CR inside a line is no line end (Kaldi's
    tools never take it for one) but an invisible character that `scan_table` names and
    `clean_line` turns into a space."""
    cr_ends = _cr_ends_lines(f)
    for raw in f:
        body, end = (raw[:-1], b"\n") if raw.endswith(b"\n") else (raw, b"")
        if end and body.endswith(b"\r"):
            body, end = body[:-1], b"\r\n"
        if not cr_ends:
            yield body, end
            continue
        *ended_by_cr, last = body.split(b"\r")
        for line in ended_by_cr:
            yield line, b"\r"
        if last or end:
            yield last, end


def _cr_ends_lines(f: BinaryIO) -> bool:
    """Whether CRs alone (not in CR LF) outnumber LFs in the rest of `f`, which is read and rewound."""
    start, cr, lf = f.tell(), 0, 0
    while chunk := f.read(1 << 20):
        cr += chunk.count(b"\r") - chunk.count(b"\r\n")  # a CR LF split by the chunking: off by one
        lf += chunk.count(b"\n")
    f.seek(start)
    return cr > lf


def read_table(path: str | Path) -> dict[str, str]:
    """Read `key value` lines into a dict; a duplicate key is an error naming the lines."""
    table: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, key, value in read_table_lines(path):
        if key in table:
            raise ValueError(f"{path}:{lineno}: duplicate key '{key}' (first on line {first_line[key]})")
        table[key] = value
        first_line[key] = lineno
    return table


def format_table(table: Mapping[str, object] | Iterable[tuple[str, object]]) -> str:
    """`key value` lines sorted by key in C locale; list/tuple values are joined with spaces."""
    items = table.items() if isinstance(table, Mapping) else table
    lines = []
    for key, value in sorted(items, key=lambda kv: c_sort_key(kv[0])):
        if isinstance(value, (list, tuple)):
            value = " ".join(map(str, value))
        value = str(value)
        lines.append(f"{key} {value}\n" if value != "" else f"{key}\n")
    return "".join(lines)


def write_table(path: str | Path, table: Mapping[str, object] | Iterable[tuple[str, object]]) -> None:
    """Write `key value` lines sorted by key in C locale (atomically).

    Values that are lists/tuples are joined with spaces; callers format floats.
    """
    atomic_write_text(path, format_table(table))


class ProblemKind(str, Enum):
    """What is wrong, for code that must tell problems apart (never by their message text)."""

    # one line of a table (scan_table, parse_rows)
    NOT_UTF8 = "not UTF-8"
    DUPLICATE = "duplicate id"
    MALFORMED = "malformed line"  # wrong number of fields, a number that is not one, no audio path
    PIPE = "pipe entry"  # a Kaldi `cmd |` entry in wav.scp (PIPE_POLICY)
    # a table as a whole, whose rows are still right (HARMLESS)
    UNSORTED = "unsorted"
    LINE_ENDINGS = "line endings"
    BYTE_ORDER_MARK = "byte-order mark"
    INVISIBLE = "invisible"  # invisible characters inside a line (removed from the rows)
    # the files of a data dir
    NOT_REGULAR = "not a regular file"
    MISSING_FILE = "missing file"
    # consistency between tables (validate)
    SPEAKER_ORDER = "speaker order"  # utterance ids do not sort like their speakers
    SPEAKERS = "speakers"  # utt2spk, spk2utt and speaker tables disagree
    MISSING_ID = "missing id"  # an id of one table is not in another
    EMPTY_TEXT = "empty transcript"
    # audio and segments (validate)
    AUDIO = "audio"  # unreadable, empty or not mono
    SEGMENT = "segment"  # bad times, unknown recording, past the end of its recording
    # notes (validate): not problems, shown for information
    IGNORED_FILES = "ignored files"
    RESAMPLED = "resampled"

    def __str__(self) -> str:
        return self.value


# problems a reader may accept: the rows scan_table returns are right despite them
HARMLESS = frozenset({ProblemKind.UNSORTED, ProblemKind.LINE_ENDINGS, ProblemKind.BYTE_ORDER_MARK})


@dataclass(frozen=True)
class Problem:
    """One defect found in a data dir: where it is (file, 1-based line, id), what is wrong (`kind`,
    for code) and how to say it (`message`, for people).

    `line` is None when the defect concerns a whole file (missing, unsorted...);
    `key` is None when no id applies. Code tells problems apart by `kind` only.
    """

    file: str
    line: int | None
    key: str | None
    message: str
    kind: ProblemKind = field(compare=False)

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        who = f" '{self.key}'" if self.key is not None else ""
        return f"{where}:{who} {self.message}"


def fatal_problems(problems: list[Problem]) -> list[Problem]:
    """The problems a reader cannot accept: unsorted lines, CR line endings and a byte-order mark
    do not change what `scan_table` returns, so readers accept them (`validate` still names them)."""
    return [p for p in problems if p.kind not in HARMLESS]


@dataclass(frozen=True)
class Row:
    """A parsed `key value` line; `fields` is the value split on whitespace."""

    line: int
    key: str
    value: str

    @property
    def fields(self) -> list[str]:
        return self.value.split()


def scan_table(path: str | Path) -> tuple[list[Row], list[Problem]]:
    """Read every non-empty line of a table, collecting (not raising) problems.

    Reports lines that are not UTF-8, duplicate keys (the later line; the first
    one wins), the first line out of C-locale order (once per file, since
    one misplaced line makes every later comparison meaningless), a byte-order
    mark, CR LF and CR-alone line endings (once per file each, with their count; a CR alone ends a
    line, as in Python's universal newlines) and every line
    with other invisible characters. Returns all rows in file order, duplicates
    included, with the invisible characters removed (`clean_line`).
    """
    path = Path(path)
    rows: list[Row] = []
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    unsorted_reported = False
    prev: Row | None = None
    ends: dict[bytes, list[int]] = {b"\r\n": [], b"\r": []}  # lines ended otherwise than by LF
    fix = "`speechssl data fix` removes it"
    with open(path, "rb") as f:
        for lineno, (raw, end) in enumerate(_split_lines(f), start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                message = _not_utf8(raw if lineno == 1 else b"", err.reason)
                problems.append(Problem(str(path), lineno, None, message, ProblemKind.NOT_UTF8))
                continue
            if end in ends:
                ends[end].append(lineno)
            found: list[Problem] = []
            if lineno == 1 and line.startswith(BOM):
                line = line[1:]
                found.append(
                    Problem(
                        str(path),
                        1,
                        None,
                        f"file starts with a UTF-8 byte-order mark (U+FEFF), an"
                        f" invisible character that becomes part of the first id; {fix}",
                        ProblemKind.BYTE_ORDER_MARK,
                    )
                )
            invisible = invisible_characters(line)
            if invisible:
                raw_parts = split_line(line)
                where = "id" if raw_parts and invisible_characters(raw_parts[0]) else "value"
                found.append(
                    Problem(
                        str(path),
                        lineno,
                        None,
                        f"invisible character(s) {describe_characters(invisible)} in the {where}; {fix}",
                        ProblemKind.INVISIBLE,
                    )
                )
                line = clean_line(line)
            parts = split_line(line)
            if parts is None:
                problems += found
                continue
            row = Row(lineno, *parts)
            problems += [Problem(p.file, p.line, row.key, p.message, p.kind) for p in found]
            if row.key in first_line:
                problems.append(
                    Problem(
                        str(path),
                        lineno,
                        row.key,
                        f"duplicate id (first on line {first_line[row.key]})",
                        ProblemKind.DUPLICATE,
                    )
                )
            else:
                first_line[row.key] = lineno
            if prev is not None and not unsorted_reported and c_sort_key(row.key) < c_sort_key(prev.key):
                problems.append(
                    Problem(
                        str(path),
                        lineno,
                        row.key,
                        f"file is not sorted in C locale: this id comes after '{prev.key}' "
                        f"(line {prev.line});"
                        " sort with `LC_ALL=C sort` or run `speechssl data fix`",
                        ProblemKind.UNSORTED,
                    )
                )
                unsorted_reported = True
            prev = row
            rows.append(row)
    for end, what in ((b"\r\n", "Windows line endings (CR LF)"), (b"\r", "old Mac line endings (CR alone)")):
        if ends[end]:
            problems.append(
                Problem(
                    str(path),
                    ends[end][0],
                    None,
                    f"has {what} on {len(ends[end])} line(s), first on this one;"
                    " `speechssl data fix` rewrites them with LF",
                    ProblemKind.LINE_ENDINGS,
                )
            )
    return rows, problems
