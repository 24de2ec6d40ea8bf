"""The output-path rule and the experiment lock: no command deletes or overwrites what it did not write.

Rule for every `--out`:
- a path that does not exist, or an empty directory, is written;
- a directory that holds this command's own earlier output (its `.speechssl_output` marker names
  the command), or a file this command wrote and nobody changed since (`record_output` notes its
  size and mtime in the parent's `.speechssl_files.json`), is written again: re-running a stage is safe;
- anything else (a non-empty directory without that marker, an existing file) is refused unless
  the user passes `--overwrite`;
- an input of the command, a directory that contains one, or an experiment dir of another
  command is refused even with `--overwrite`.

Experiment dirs (pretrain, distill, prune, finetune, downstream train) are locked while a run
writes them: `EXP/.lock` holds the pid and host of the holder and an advisory `flock`, which the
kernel releases when the holder dies, so a stale lock (a killed run) is told from a live one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from speechssl.errors import ExperimentLockedError, OutputExistsError
from speechssl.io import atomic_write_json, is_temporary

logger = logging.getLogger(__name__)

MARKER = ".speechssl_output"
FILES_RECORD = ".speechssl_files.json"
LOCK = ".lock"
# Files that show a directory is an experiment (older runs have no marker).
_EXPERIMENT_SIGNS = ("checkpoints", "tensorboard", "train_summary.json", LOCK)


def read_marker(directory: str | Path) -> str | None:
    """The command whose output `directory` is, or None when it has no (readable) marker."""
    try:
        return json.loads((Path(directory) / MARKER).read_text())["command"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_marker(directory: str | Path, command: str) -> None:
    """Mark `directory` as the output of `command` (call before writing anything else into it)."""
    from speechssl import __version__

    atomic_write_json(Path(directory) / MARKER, {"command": command, "speechssl": __version__})


def _read_record(directory: Path) -> dict:
    try:
        record = json.loads((directory / FILES_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def record_output(path: str | Path, command: str) -> None:
    """Note that `command` wrote the file `path` (call after writing it), so that the same command
    may replace it later, as long as nobody changed it in between (size and mtime must match)."""
    path = Path(path)
    stat = path.stat()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # concurrent writers into one dir (parallel recipe jobs)
        record = _read_record(path.parent)
        record[path.name] = {"command": command, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        atomic_write_json(path.parent / FILES_RECORD, record)
    finally:
        os.close(fd)


def _is_own_file(path: Path, command: str) -> bool:
    entry = _read_record(path.parent).get(path.name)
    if not isinstance(entry, dict) or entry.get("command") != command:
        return False
    stat = path.stat()
    return entry.get("bytes") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns


def is_experiment_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / sign).exists() or (path / sign).is_symlink() for sign in _EXPERIMENT_SIGNS)


def _contents(directory: Path) -> list[str]:
    """Names in `directory` other than our marker and live or dead temp files."""
    return sorted(p.name for p in directory.iterdir() if p.name not in (MARKER, FILES_RECORD) and not is_temporary(p.name))


def refuse_inputs(out: str | Path, inputs: tuple[str | Path, ...]) -> None:
    """Raise when `out` is one of the command's inputs or a directory that contains one."""
    target = Path(out).resolve()
    for source in inputs:
        source_path = Path(source).resolve()
        if source_path == target or target in source_path.parents:
            what = "is" if source_path == target else "contains"
            raise OutputExistsError(f"--out {out} {what} an input of this command ({source}); choose another --out")


def check_output(
    out: str | Path,
    command: str,
    *,
    overwrite: bool = False,
    inputs: tuple[str | Path, ...] = (),
    is_file: bool = False,
    earlier_output: Callable[[Path], bool] | None = None,
) -> Path:
    """Raise `OutputExistsError` unless `command` may write `out` (the rule of this module).

    `inputs` are the paths the command reads; `is_file` says `out` is a file, not a directory;
    `earlier_output(out)` recognises this command's output of a speechssl that wrote no markers
    (dumps, k-means dirs), which is then reused like a marked one. Call it before any compute is
    spent. Returns `out` as a Path.
    """
    out = Path(out)
    refuse_inputs(out, inputs)
    if not out.exists() and not out.is_symlink():
        return out
    if out.is_dir():
        if is_file:
            raise OutputExistsError(f"--out {out} is a directory; {command} writes a file there: name a file")
        marker = read_marker(out)
        if marker == command:
            return out
        if is_experiment_dir(out):
            owner = f"of `speechssl {marker}`" if marker else "with checkpoints or logs"
            raise OutputExistsError(
                f"--out {out} is an experiment dir {owner}; {command} never writes over one: choose another --out"
            )
        contents = _contents(out)
        if not contents or overwrite or (marker is None and earlier_output is not None and earlier_output(out)):
            return out
        shown = ", ".join(contents[:5]) + (f" and {len(contents) - 5} more" if len(contents) > 5 else "")
        raise OutputExistsError(
            f"--out {out} already holds files that `speechssl {command}` did not write ({shown});"
            " choose another --out, or pass --overwrite to replace them"
        )
    if not is_file:
        raise OutputExistsError(f"--out {out} is a file; {command} writes a directory there")
    if overwrite or _is_own_file(out, command):
        return out
    raise OutputExistsError(f"--out {out} already exists; choose another --out, or pass --overwrite to replace it")


def claim_directories(
    outs: list[str | Path], command: str, *, overwrite: bool = False, inputs: tuple[str | Path, ...] = ()
) -> None:
    """`check_output` every output dir of a command first, then create and mark each: a command
    that writes several dirs refuses before it has written any of them."""
    for out in outs:
        check_output(out, command, overwrite=overwrite, inputs=inputs)
    for out in outs:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_marker(out, command)


def _holder(lock_path: Path) -> dict:
    try:
        return json.loads(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


class ExperimentLock:
    """Advisory lock on an experiment dir: `with ExperimentLock(exp, "pretrain"): ...`.

    A second process (any host sharing the file system) gets `ExperimentLockedError` naming the
    holder's pid, host and command. The lock file is removed on exit; one left by a killed run
    holds no flock and is taken over with a log line.
    """

    def __init__(self, directory: str | Path, command: str):
        self.directory = Path(directory)
        self.command = command
        self.path = self.directory / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                h = _holder(self.path)
                raise ExperimentLockedError(
                    f"{self.directory} is in use by `speechssl {h.get('command', '?')}` (pid {h.get('pid', '?')}"
                    f" on host {h.get('host', '?')}, since {h.get('started', '?')}); wait for it or choose"
                    " another --out"
                ) from None
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # the holder released (and removed) the file between our open and flock
        stale = _holder(self.path)
        if stale:
            logger.warning("%s: removing the stale lock of pid %s on host %s (that run is gone)",
                           self.directory, stale.get("pid", "?"), stale.get("host", "?"))
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> ExperimentLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
