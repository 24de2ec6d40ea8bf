"""The originals of the tables a data tool rewrites in place (`data fix`, `data durations
--overwrite`): copied into a new `.backup/` dir first, then `.backup.1/`, `.backup.2/`..., so the
first originals are never replaced and nothing the user wrote is lost."""

from __future__ import annotations

import errno
import itertools
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from speechssl.io import remove_stale_temporaries, temp_tag, write_failure

BACKUP = ".backup"


def write_backup(path: Path, names: Iterable[str]) -> Path:
    """Copy the files `names` of dir `path` into the first free backup dir (.backup, .backup.1, ...),
    whole or not at all, and return it."""
    remove_stale_temporaries(path, of=(BACKUP[1:],))  # a killed run's half-copied backup
    tmp = _new_dir(path / f"{BACKUP}.{temp_tag()}.tmp")
    try:
        for name in names:
            try:
                shutil.copy2(path / name, tmp / name)
            except OSError as err:  # a full disk: name the backup, not the table copied from
                raise (write_failure(tmp / name, err) or err) from None
        for n in itertools.count():
            target = path / (BACKUP if n == 0 else f"{BACKUP}.{n}")
            if target.exists() or target.is_symlink():
                continue
            try:
                os.rename(tmp, target)
            except OSError as err:  # another fix took this name between the check and the rename
                if err.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue
                raise
            return target
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    raise AssertionError("unreachable")


def _new_dir(prefix: Path) -> Path:
    """A dir named `prefix` plus the first free number, made here (os.mkdir, not mkdtemp: it gets
    the mode the user's umask gives, not 0700); an existing one, whoever made it, is never reused."""
    for n in itertools.count():
        try:
            os.mkdir(candidate := prefix.with_name(f"{prefix.name}{n}"))
            return candidate
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def refuse_symlinked(path: Path, names: Iterable[str], command: str) -> None:
    """Raise when a table `command` is about to rewrite in `path` is a symlink: writing through it
    would change a file other dirs may share, and replacing it would delete the user's link."""
    for name in names:
        link = path / name
        if link.is_symlink():
            raise ValueError(
                f"{link} is a symlink to {os.readlink(link)}; {command} writes neither through it (other"
                f" dirs may share that file) nor over it: nothing changed. Replace the link by a copy"
                f" (cp --remove-destination {link.resolve()} {link}) and run {command} again"
            )
