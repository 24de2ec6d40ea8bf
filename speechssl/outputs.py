"""The output-path rule and the experiment lock: no command deletes or overwrites what it did not write.

Rule for every `--out`:
- a path that does not exist, or an empty directory, is written;
- a directory that holds this command's own earlier output (its `.speechssl_output` marker names
  the command), or a file this command wrote and nobody changed since (`record_output` notes its
  size and mtime in the parent's `.speechssl_files.json`), is written again: re-running a stage is safe;
- anything else (a non-empty directory without that marker, an existing file) is refused unless
  the user passes `--overwrite`;
- an input of the command, a directory that contains one, an experiment dir or any non-empty
  output dir of another command (its marker would become ours) is refused even with
  `--overwrite`; so is anything that already exists inside an
  input or an experiment dir (new files may be added there), unless this command wrote it.

Experiment dirs (pretrain, distill, prune, downstream train, finetune train) are locked while a run
writes them: `EXP/.speechssl_lock` holds the pid and host of the holder and a POSIX record lock
(`lockf`), which the kernel releases when the holder dies and which, unlike `flock`, the
holder's forked data-loader workers do not inherit; so a stale lock (a killed run) is told from
a live one at once.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from speechssl.errors import ExperimentLockedError, OutputExistsError
from speechssl.io import (
    atomic_directory,
    atomic_write_json,
    is_temporary,
    remove_stale_temporaries,
    restore_moved_aside,
    write_failure,
)

logger = logging.getLogger(__name__)

MARKER = ".speechssl_output"
FILES_RECORD = ".speechssl_files.json"
LOCK = ".speechssl_lock"
# Files that show a directory is an experiment (older runs have no marker).
_EXPERIMENT_SIGNS = ("checkpoints", "tensorboard", "train_summary.json", LOCK)


def read_marker(directory: str | Path) -> str | None:
    """The command whose output `directory` is, or None when it has no (readable) marker."""
    return _command(_marker(Path(directory)))


def _command(marker: dict) -> str | None:
    command = marker.get("command")
    return command if isinstance(command, str) else None


def write_marker(
    directory: str | Path,
    command: str,
    *,
    experiment: bool = False,
    shared: bool = False,
    files: list[str] | None = None,
) -> None:
    """Mark `directory` as the output of `command` (call before writing anything else into it);
    `experiment`: a training run's dir, whose files no other command ever writes over; `shared`:
    a dir many runs read (a feature cache), kept from other commands the same way; `files`: the
    names the command wrote (`output_directory` drops them, and only them, on a re-run)."""
    content: dict = {"command": command, "speechssl": _version()}
    if experiment:
        content["experiment"] = True
    if shared:
        content["shared"] = True
    if files is not None:
        content["files"] = files
    atomic_write_json(Path(directory) / MARKER, content)


def _version() -> str:
    try:
        return importlib.metadata.version("speechssl")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


@contextmanager
def output_directory(out: str | Path, command: str, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a command's output dir in a temp sibling and swap it in whole (`atomic_directory`):
    what the command's earlier output held and this run does not write again is dropped, so no
    stale file survives; anything else already there (a model card, notes) is carried over, and
    one that this run would write over is refused (unless `overwrite`) with `out` left as it was.
    A symlinked `out` is replaced at its target. Check `out` first (`check_output`)."""
    out = Path(os.path.abspath(out))  # "." has no name to build a sibling from
    if out.is_symlink():
        out = out.resolve()
    cwd = Path.cwd().resolve()
    if out.resolve() in (cwd, *cwd.parents):
        logger.warning("--out %s holds the current directory, replaced whole: `cd %s` to see it", out, out)
    remove_stale_temporaries(out.parent, of=(out.name,))  # a killed run's, of this dir only

    def kept(new: Path) -> list[str]:
        """What `out` holds that is neither this run's output nor the earlier run's."""
        earlier = _marker(out).get("files") if read_marker(out) == command else None
        written = {p.name for p in new.iterdir()}
        if isinstance(earlier, list) and not overwrite:  # (a marker without the list: all ours)
            theirs = sorted(written & ({e.name for e in out.iterdir()} - set(earlier) - {MARKER}))
            if theirs:
                raise OutputExistsError(
                    f"{out} holds {', '.join(theirs)}, which `speechssl {command}` did not write (added since"
                    f" its earlier run), and this run writes {'a file' if len(theirs) == 1 else 'files'} of"
                    " that name; nothing was changed: move yours aside, or pass --overwrite to replace it"
                )
        dropped = written | set(earlier if isinstance(earlier, list) else ()) | {MARKER}
        return [e.name for e in out.iterdir() if e.name not in dropped]  # temp-like names too: no writer's

    with atomic_directory(out, keep=kept) as tmp:
        yield tmp
        write_marker(tmp, command, files=sorted(p.name for p in tmp.iterdir()))


def _marker(directory: Path) -> dict:
    try:
        content = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


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


def forget_outputs(directory: str | Path, names: Iterable[str]) -> None:
    """Drop the notes of `record_output` for `names` in `directory`, which the command is about to
    write again: one that a killed run wrote but never noted is then the next run's to replace,
    not a file changed since (its new size and mtime against the old note)."""
    directory = Path(directory)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        record = _read_record(directory)
        kept = {name: entry for name, entry in record.items() if name not in set(names)}
        if kept != record:
            atomic_write_json(directory / FILES_RECORD, kept)
    finally:
        os.close(fd)


def is_own_file(path: Path, command: str) -> bool:
    """Whether `command` wrote the file `path` (`record_output`) and nobody changed it since."""
    entry = _read_record(path.parent).get(path.name)
    if not isinstance(entry, dict) or entry.get("command") != command:
        return False
    stat = path.stat()
    return entry.get("bytes") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns


def is_experiment_dir(path: str | Path, *, strict: bool = False) -> bool:
    """Whether `path` is a training run's dir: its marker says so, or it holds our lock or step
    checkpoints; unless `strict`, also the signs of a run of a speechssl without markers."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (
        _marker(path).get("experiment")
        or (path / LOCK).exists()
        or any((path / "checkpoints").glob("step_*"))
    ):
        return True
    return not strict and any(
        (path / sign).exists() or (path / sign).is_symlink() for sign in _EXPERIMENT_SIGNS
    )


def _contents(directory: Path) -> list[str]:
    """Names in `directory` other than our marker and live or dead temp files."""
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.name not in (MARKER, FILES_RECORD) and not is_temporary(p.name)
    )


def _is_shared(path: Path) -> bool:
    return path.is_dir() and bool(_marker(path).get("shared"))


def _enclosing_experiment(path: Path) -> Path | None:
    """The nearest experiment (or shared) dir that holds `path` (as written, or with symlinks
    resolved)."""
    for candidate in (path.absolute(), path.resolve()):
        for parent in candidate.parents:
            if is_experiment_dir(parent, strict=True) or _is_shared(parent):
                return parent
    return None


def _refuse_parent_files(out: Path, option: str) -> None:
    """A parent that exists but is not a directory makes every write fail: say so first."""
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(f"{option} {out}: {parent} is a file, not a directory")
            return


def _enclosing_output(path: Path, command: str) -> tuple[Path, str] | None:
    """The nearest dir above `path` marked as an output, and its command, when that is another
    command's (a k-means model's dir, an export)."""
    for parent in path.absolute().parents:
        marker = read_marker(parent)
        if marker is not None:
            return None if marker == command else (parent, marker)
    return None


def refuse_inputs(out: str | Path, inputs: tuple[str | Path, ...], option: str = "--out") -> None:
    """Raise when `out` is one of the command's inputs or a directory that contains one."""
    target = Path(out).resolve()
    for source in inputs:
        source_path = Path(source).resolve()
        if source_path == target or target in source_path.parents:
            what = "is" if source_path == target else "contains"
            raise OutputExistsError(
                f"{option} {out} {what} an input of this command ({source}); choose another {option}"
            )


def check_output(
    out: str | Path,
    command: str,
    *,
    overwrite: bool = False,
    inputs: tuple[str | Path, ...] = (),
    is_file: bool = False,
    earlier_output: Callable[[Path], bool] | None = None,
    option: str = "--out",
) -> Path:
    """Raise `OutputExistsError` unless `command` may write `out` (the rule of this module).

    `inputs` are the paths the command reads; `is_file` says `out` is a file, not a directory;
    `earlier_output(out)` recognises this command's output of a speechssl that wrote no markers
    (dumps, k-means dirs), which is then reused like a marked one; `option` names `out` in the
    errors (`--plot`). Call it before any compute is spent. Returns `out` as a Path.
    """
    out = Path(out)
    refuse_inputs(out, inputs, option)
    _refuse_parent_files(out, option)
    if restore_moved_aside(out):  # judged as it was before a run killed while replacing it
        logger.warning("%s: put back as it was before a run killed while replacing it", out)
    if not out.exists() and not out.is_symlink():
        return out
    # the marker read once: a parallel job may write it between two reads (a cache made at once)
    content = _marker(out) if out.is_dir() else {}
    marker = _command(content)
    own = marker == command if out.is_dir() else is_own_file(out, command)
    if not own:  # inside an input or an experiment, --overwrite never applies
        for root in (*(Path(p) for p in inputs), _enclosing_experiment(out)):
            if root is not None and root.is_dir() and root.resolve() in out.resolve().parents:
                kind = (
                    "an input of this command"
                    if root in map(Path, inputs)
                    else "a shared dir"
                    if _is_shared(root)
                    else "an experiment dir"
                )
                raise OutputExistsError(
                    f"{option} {out} already exists inside {root} ({kind}); {command} never writes over it,"
                    f" even with --overwrite: choose another {option}"
                )
        other = _enclosing_output(out, command)
        if other is not None:
            raise OutputExistsError(
                f"{option} {out} already exists inside {other[0]} (the output of `speechssl {other[1]}`);"
                f" {command} never writes over it, even with --overwrite: choose another {option}"
            )
    if out.is_dir():
        if is_file:
            raise OutputExistsError(
                f"{option} {out} is a directory; {command} writes a file there: name a file"
            )
        if own:
            return out
        if is_experiment_dir(out) or content.get("shared"):
            if content.get("shared"):  # a marker name, not a command (a feature cache)
                what = f"a shared dir ({marker})" if marker else "a shared dir"
            else:
                owner = f"of `speechssl {marker}`" if marker else "with checkpoints or logs"
                what = f"an experiment dir {owner}"
            raise OutputExistsError(
                f"{option} {out} is {what}; {command} never writes over one: choose another {option}"
            )
        contents = _contents(out)
        if contents and marker is not None:  # its marker would become ours
            raise OutputExistsError(
                f"{option} {out} holds the output of `speechssl {marker}`; {command} never writes into "
                f"another command's output, even with --overwrite: choose another {option}"
            )
        if not contents or overwrite or (earlier_output is not None and earlier_output(out)):
            return out
        shown = ", ".join(contents[:5]) + (f" and {len(contents) - 5} more" if len(contents) > 5 else "")
        raise OutputExistsError(
            f"{option} {out} already holds files that `speechssl {command}` did not write ({shown});"
            f" choose another {option}, or pass --overwrite to replace them"
        )
    if not is_file:
        raise OutputExistsError(f"{option} {out} is a file; {command} writes a directory there")
    if overwrite or own:
        return out
    raise OutputExistsError(
        f"{option} {out} already exists; choose another {option}, or pass --overwrite to replace it"
    )


def claim_directories(
    outs: list[str | Path],
    command: str,
    *,
    overwrite: bool = False,
    inputs: tuple[str | Path, ...] = (),
    earlier_output: Callable[[Path], bool] | None = None,
) -> None:
    """`check_output` every output dir of a command first, then create and mark each: a command
    that writes several dirs refuses before it has written any of them, and parallel jobs writing
    one dir (feature shards) each find the marker of the first."""
    for out in outs:
        check_output(out, command, overwrite=overwrite, inputs=inputs, earlier_output=earlier_output)
    for out in outs:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_marker(out, command)


def _holder(lock_path: Path) -> dict:
    try:
        return json.loads(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _holder_of(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}


_HELD: dict[str, str] = {}  # lock files this process holds -> the command holding each


class ExperimentLock:
    """Advisory lock on an experiment dir: `with ExperimentLock(exp, "pretrain"): ...`.

    A second process (any host sharing the file system) gets `ExperimentLockedError` naming the
    holder's pid, host and command. The lock file is removed on exit; one left by a killed run
    holds no lock and is taken over with a log line.
    """

    def __init__(self, directory: str | Path, command: str):
        self.directory = Path(directory)
        self.command = command
        self.path = self.directory / LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        if key in _HELD:  # POSIX locks do not exclude their own process: keep a list of our own
            raise ExperimentLockedError(
                f"{self.directory} is in use by `speechssl {_HELD[key]}` (pid {os.getpid()} on host"
                f" {socket.gethostname()}, this very process); wait for it or choose another --out"
            )
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise (write_failure(self.path, err) or err) from None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # EACCES or EAGAIN: held by a live process
                os.close(fd)
                h = _holder(self.path)
                raise ExperimentLockedError(
                    f"{self.directory} is in use by `speechssl {h.get('command', '?')}` "
                    f"(pid {h.get('pid', '?')}"
                    f" on host {h.get('host', '?')}, since {h.get('started', '?')}); wait for it or choose"
                    " another --out"
                ) from None
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # the holder released (and removed) the file between our open and lock
        stale = _holder_of(fd)  # through our fd: closing another one would drop a POSIX lock
        if stale:
            logger.warning(
                "%s: removing the stale lock of pid %s on host %s (that run is gone)",
                self.directory,
                stale.get("pid", "?"),
                stale.get("host", "?"),
            )
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        except OSError as err:  # a full disk or quota: one line, and no empty lock left in EXP
            self.path.unlink(missing_ok=True)
            os.close(fd)
            raise (write_failure(self.path, err) or err) from None
        self._fd, self._key = fd, key
        _HELD[key] = self.command

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        _HELD.pop(self._key, None)
        self._fd = None

    def __enter__(self) -> ExperimentLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
