"""Kaldi data-dir files: `key value...` tables, sorted in C locale.

The files of a data dir (wav.scp, text, utt2spk, spk2utt, segments, utt2dur,
reco2dur, and our extras such as phones, phone_ctm, intent) are all
"first token is the key, the rest is the value". Keys are compared as bytes
(C locale), as Kaldi's `sort` with LC_ALL=C does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


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


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path` for any writer that takes a path (torch.save, np.save,
    safetensors, savefig, exporters). When the block ends the file is synced and renamed over
    `path`; when it raises, the temp file is removed. A crash never leaves half a file at
    `path`. The temp name keeps the suffix, for writers that infer the format from it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write through a temp file and rename, so a crash never leaves half a file."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temp dir beside `path` to write into; when the block ends it replaces `path`
    (the old dir is removed), and when the block raises it is deleted. A crash leaves either
    the old directory or the new one, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            path.replace(old)
            tmp.replace(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.replace(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
