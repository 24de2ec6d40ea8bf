"""Kaldi data-dir files: `key value...` tables, sorted in C locale.

The files of a data dir (wav.scp, text, utt2spk, spk2utt, segments, utt2dur,
reco2dur, and our extras such as phones, phone_ctm, intent) are all
"first token is the key, the rest is the value". Keys are compared as bytes
(C locale), as Kaldi's `sort` with LC_ALL=C does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from speechssl.io import atomic_write_text


def c_sort_key(key: str) -> bytes:
    """Sort key matching `LC_ALL=C sort`: byte order of the UTF-8 encoding."""
    return key.encode("utf-8")


def read_table_lines(path: str | Path) -> list[tuple[int, str, str]]:
    """(line number, key, value) for each non-empty line; value may be ''."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            rows.append((lineno, parts[0], parts[1].strip() if len(parts) > 1 else ""))
    return rows


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


def write_table(path: str | Path, table: Mapping[str, object] | Iterable[tuple[str, object]]) -> None:
    """Write `key value` lines sorted by key in C locale (atomically).

    Values that are lists/tuples are joined with spaces; callers format floats.
    """
    items = table.items() if isinstance(table, Mapping) else table
    lines = []
    for key, value in sorted(items, key=lambda kv: c_sort_key(kv[0])):
        if isinstance(value, (list, tuple)):
            value = " ".join(map(str, value))
        value = str(value)
        lines.append(f"{key} {value}\n" if value != "" else f"{key}\n")
    atomic_write_text(path, "".join(lines))


@dataclass(frozen=True)
class Problem:
    """One defect found in a data dir: where it is (file, 1-based line, id) and what is wrong.

    `line` is None when the defect concerns a whole file (missing, unsorted...);
    `key` is None when no id applies.
    """

    file: str
    line: int | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        who = f" '{self.key}'" if self.key is not None else ""
        return f"{where}:{who} {self.message}"


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
    one wins), and the first line out of C-locale order (once per file, since
    one misplaced line makes every later comparison meaningless).
    Returns all rows in file order, duplicates included.
    """
    path = Path(path)
    rows: list[Row] = []
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    unsorted_reported = False
    prev: Row | None = None
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                problems.append(Problem(str(path), lineno, None, f"is not valid UTF-8 ({err.reason})"))
                continue
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            parts = line.split(maxsplit=1)
            row = Row(lineno, parts[0], parts[1].strip() if len(parts) > 1 else "")
            if row.key in first_line:
                problems.append(
                    Problem(str(path), lineno, row.key, f"duplicate id (first on line {first_line[row.key]})")
                )
            else:
                first_line[row.key] = lineno
            if prev is not None and not unsorted_reported and c_sort_key(row.key) < c_sort_key(prev.key):
                problems.append(
                    Problem(
                        str(path),
                        lineno,
                        row.key,
                        f"file is not sorted in C locale: this id comes after '{prev.key}' (line {prev.line});"
                        " sort with `LC_ALL=C sort` or run `speechssl data fix`",
                    )
                )
                unsorted_reported = True
            prev = row
            rows.append(row)
    return rows, problems
