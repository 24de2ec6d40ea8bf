"""Atomic writes: every file and directory speechssl writes goes to a temp sibling and is renamed
into place, so a crash, a kill or a full disk leaves the old file or the new one, never half of one.

A write that fails for a reason of the machine (disk full, quota, read-only file system) becomes a
one-line `WriteFailedError` naming the path, and its temp file is removed. Temp names carry the
writer's pid and host (`.<name>.<pid>@<host>.tmp...`), so `remove_stale_temporaries` can tell a
killed job's leftovers from a live writer's.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from speechssl.errors import SpeechSSLError, WriteFailedError

# errnos that say "the machine cannot take this write" (or read), not "the program is wrong"
MACHINE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO, errno.EACCES, errno.EPERM}
# errnos of a file system that has no hard links (`_carry` then copies)
_NO_HARD_LINKS = {errno.EPERM, errno.EMLINK, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP}
# Writers that are not Python file objects (torch.save, safetensors, onnx) report ENOSPC in words;
# torch.save(path) on a full disk says only "unexpected pos" or "basic_ios::clear: iostream error".
_WRITE_FAILURE_WORDS = (
    "no space left",
    "disk quota",
    "file write failed",
    "failed writing",
    "read-only file system",
    "unexpected pos",
    "iostream error",
)
# `.<name>.<pid>@<host>.tmp...` (`temp_tag`; names without the host: older speechssl versions)
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(?:@(?P<host>[A-Za-z0-9._-]+))?\.tmp")
_HOST = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()) or "localhost"
_PID_MAX = 1 << 22  # Linux's largest pid_max: a larger number in a temp-like name is not a pid of ours


def temp_tag() -> str:
    """What every temp name carries, `<pid>@<host>`: a killed writer's leftovers can be told from a
    live one's, and on a file system shared by several hosts (NFS, parallel feature jobs) a job
    never takes another host's live writer, whose pid it cannot check, for a dead one."""
    return f"{os.getpid()}@{_HOST}"


def write_failure(path: str | Path, err: BaseException) -> WriteFailedError | None:
    """The one-line error for a failed write of `path`, or None when `err` is not about the machine.
    An OSError with a write errno anywhere in the chain (`raise ... from`) counts: torch.save given a
    file object keeps the ENOSPC there."""
    if isinstance(err, SpeechSSLError):
        return None
    cause: BaseException | None = err
    for _ in range(10):
        if cause is None:
            break
        if isinstance(cause, OSError) and cause.errno in MACHINE_ERRNOS:
            return WriteFailedError(f"cannot write {path}: {cause.strerror or cause}")
        cause = cause.__cause__ or cause.__context__
    text = str(err).lower()
    if any(word in text for word in _WRITE_FAILURE_WORDS):
        reason = str(err).splitlines()[0]
        if "unexpected pos" in text:  # torch's zip writer after a short write (torch.distributed.checkpoint)
            reason = f"a short write: the disk is probably full ({reason})"
        return WriteFailedError(f"cannot write {path}: {reason}")
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _share(path: Path) -> None:
    """Give a written file or dir the mode the user's umask gives a new one (mkdtemp and
    safetensors make them private, 0700 / 0600): colleagues on a shared cluster can load them."""
    mask = _umask()
    if path.is_dir():
        _chmod(path, 0o777 & ~mask)
        for root, dirs, files in os.walk(path):
            for name in dirs:
                _chmod(os.path.join(root, name), 0o777 & ~mask)
            for name in files:
                _chmod(os.path.join(root, name), 0o666 & ~mask)
    else:
        _chmod(path, 0o666 & ~mask)


def _chmod(path: str | Path, mode: int) -> None:
    """os.chmod, skipped on a file system without modes (FAT, some FUSE mounts), where it fails."""
    try:
        os.chmod(path, mode)
    except OSError as err:
        if err.errno not in (errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{temp_tag()}.tmp{path.suffix}")


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise (write_failure(path.parent, err) or err) from None


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path` for any writer that takes a path (torch.save, np.save,
    safetensors, savefig, exporters). When the block ends the file is synced and renamed over
    `path`; when it raises, the temp file is removed. The temp name keeps the suffix, for
    writers that infer the format from it."""
    path = Path(path)
    _make_parent(path)
    tmp = _temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _share(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        failure = write_failure(path, err)
        if failure is not None:
            raise failure from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text through a temp file and rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON (one trailing newline) through a temp file and rename."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


@contextmanager
def atomic_directory(
    path: str | Path, keep: Callable[[Path], Collection[str]] | None = None
) -> Iterator[Path]:
    """Yield a temp dir beside `path` to write into; when the block ends it replaces `path`
    (the old dir is removed), and when the block raises it is deleted. A crash leaves either
    the old directory or the new one, never a mix. Callers that replace a directory they did not
    write check it first (`speechssl.outputs.check_output`).

    `keep(new_dir)`: the names of entries of the old `path` that live on in the new one (a user's
    notes beside a command's outputs). They are carried over at the swap (`_carry`: hard links, or
    copies), so until the swap the old dir still holds them all, and a failure or Ctrl-C before it
    leaves the old dir as it was."""
    path = Path(path)
    _make_parent(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{temp_tag()}.tmp", dir=path.parent))
    except OSError as err:
        raise (write_failure(path, err) or err) from None
    try:
        yield tmp
        _share(tmp)  # before the carrying: a user's files keep their modes
        if path.exists():
            _swap(path, tmp, keep(tmp) if keep is not None else ())
        else:
            tmp.replace(path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = write_failure(path, err)
        if failure is not None:
            raise failure from None
        raise


def _swap(path: Path, new: Path, keep: Collection[str]) -> None:
    """Replace the dir `path` by `new`, carrying `keep` over; on any error (or Ctrl-C) before `new`
    is in place, `path` is put back as it was. Only a kill between the two renames is not covered:
    it leaves the old dir as `.<name>.<pid>@<host>.tmpold`, which `remove_stale_temporaries` renames
    back. The old dir holds everything it held until the swap: what is carried is never moved."""
    old = path.with_name(f".{path.name}.{temp_tag()}.tmpold")
    try:
        for name in keep:
            _carry(path / name, new / name)
        path.replace(old)
        new.replace(path)
    except BaseException:
        if os.path.lexists(new):  # stopped before the new dir went in
            if not os.path.lexists(path):
                old.replace(path)
        else:
            shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _carry(entry: Path, target: Path) -> None:
    """Give the file, symlink or whole tree `entry` a second name `target`: hard links (the data is
    not copied), or a copy where the file system has none."""

    def link(src: str, dst: str) -> None:
        os.link(src, dst, follow_symlinks=False)

    tree = entry.is_dir() and not entry.is_symlink()
    try:
        if tree:
            shutil.copytree(entry, target, symlinks=True, copy_function=link)
        else:
            link(str(entry), str(target))
        return
    except OSError as err:  # copytree gathers its files' errors into one shutil.Error
        if not isinstance(err, shutil.Error) and err.errno not in _NO_HARD_LINKS:
            raise
    if tree:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(entry, target, symlinks=True)
    else:
        Path(target).unlink(missing_ok=True)
        shutil.copy2(entry, target, follow_symlinks=False)


def is_temporary(name: str) -> bool:
    """Whether a file name is one of our temp names (a write in progress, or a killed job's)."""
    return _TEMP_NAME.match(name) is not None


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _dead_writer(m: re.Match) -> bool:
    """Whether the writer of a temp name (`_TEMP_NAME` match) is gone: a pid of this host that no
    longer runs (another host's pid cannot be checked)."""
    pid = int(m.group("pid"))  # (a date in a user's file name is no pid: never taken for a dead one)
    return m.group("host") in (None, _HOST) and pid <= _PID_MAX and not pid_alive(pid)


def restore_moved_aside(path: str | Path) -> bool:
    """Rename back the dir that a killed job had moved aside to replace `path` (`_swap`) and never
    replaced, so that `path` is as it was before that job; True if one was. Call before judging
    what `path` holds (the output-path rule)."""
    path = Path(path)
    if os.path.lexists(path) or not path.parent.is_dir():
        return False
    for entry in path.parent.glob(f".{glob.escape(path.name)}.*.tmpold"):
        m = _TEMP_NAME.match(entry.name)
        if m is None or m.group("name") != path.name or entry.is_symlink() or not entry.is_dir():
            continue
        if _dead_writer(m):
            entry.rename(path)
            return True
    return False


def remove_stale_temporaries(directory: str | Path, of: Collection[str] | None = None) -> list[Path]:
    """Remove the temp files and dirs of `atomic_file` / `atomic_directory` in `directory` whose
    writer no longer runs (a killed job of this host: another host's pids cannot be checked);
    with `of`, only those of the files or dirs so named (in a dir that may also hold a user's files).
    Returns what was removed. A dir the killed job had moved aside to replace it, and not yet
    replaced, is renamed back instead."""
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    # a file's temp name carries its stem (`_temp_name`), a dir's its name
    targets = None if of is None else {*of, *(Path(name).stem for name in of)}
    for entry in directory.iterdir():
        m = _TEMP_NAME.match(entry.name)
        if m is None or not _dead_writer(m) or (targets is not None and m.group("name") not in targets):
            continue
        if entry.name.endswith(".tmpold") and restore_moved_aside(directory / m.group("name")):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
