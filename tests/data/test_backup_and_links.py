"""`data fix` backups get the umask's mode (not mkdtemp's 0700); a symlinked table is never replaced
by a file (fix refuses to write through or over it); `data trials --out LINK` writes at the target."""

from __future__ import annotations

import os
import stat

import pytest

from speechssl.cli.main import main
from speechssl.data.fix import fix_data_dir
from speechssl.testing.datadirs import plant_defect
from tests.features.test_fingerprint import dead_pid


def test_backup_dir_has_the_umask_mode(data_dir):
    plant_defect(data_dir.path, "text_extra_utt")
    old = os.umask(0o022)
    try:
        report = fix_data_dir(data_dir.path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(report.backup_dir.stat().st_mode) == 0o755


def test_a_killed_fixs_half_copied_backup_is_removed_by_the_next(data_dir):
    d = data_dir.path
    plant_defect(d, "text_extra_utt")
    dead = dead_pid()
    (d / f".backup.{dead}.tmp").mkdir()
    (d / f".backup.{dead}.tmp" / "text").write_text("half")
    report = fix_data_dir(d)
    assert report.backup_dir.name == ".backup" and not (d / f".backup.{dead}.tmp").exists()


def test_fix_refuses_a_symlinked_table_it_would_change(data_dir, tmp_path):
    d = data_dir.path
    shared = tmp_path / "shared_text"
    shared.write_text((d / "text").read_text() + "zzz-utt9 a line of another dir\n")
    (d / "text").unlink()
    (d / "text").symlink_to(shared)
    before = shared.read_text()
    with pytest.raises(
        ValueError, match=r"text is a symlink to .*shared_text; fix writes neither through it"
    ):
        fix_data_dir(d)
    assert (d / "text").is_symlink() and shared.read_text() == before
    assert not (d / ".backup").exists()


def test_trials_overwrite_writes_at_the_symlink_target(data_dir, tmp_path, capsys):
    target = tmp_path / "lists" / "trials.txt"
    target.parent.mkdir()
    target.write_text("mine\n")
    link = tmp_path / "trials"
    link.symlink_to(target)
    assert main(["data", "trials", str(data_dir.path), "--out", str(link), "--overwrite"]) == 0
    assert link.is_symlink() and target.read_text().endswith("target\n")
    assert main(["data", "trials", str(data_dir.path), "--out", str(link)]) == 0  # its own now: re-run


def test_a_full_disk_while_backing_up_names_the_backup_and_changes_nothing(data_dir, monkeypatch):
    import errno
    import shutil

    from speechssl.errors import WriteFailedError

    d = data_dir.path
    plant_defect(d, "text_extra_utt")
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}

    def full(src, dst, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(src))

    monkeypatch.setattr(shutil, "copy2", full)
    with pytest.raises(
        WriteFailedError, match=r"cannot write .*/\.backup\.[^/]*\.tmp\d*/\S+: No space left on device"
    ):
        fix_data_dir(d)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before
    assert not [p for p in os.listdir(d) if p.startswith(".backup")]


def test_a_dir_named_like_this_runs_backup_temp_is_never_removed(data_dir):
    """The backup's temp dir is a new one: a dir already there under the name this process would
    use (a pid reused after a kill, or anyone's) is left as it is."""
    from speechssl.io import temp_tag

    d = data_dir.path
    plant_defect(d, "text_extra_utt")
    there = d / f".backup.{temp_tag()}.tmp"
    there.mkdir()
    (there / "text").write_text("not this run's")
    report = fix_data_dir(d)
    assert (there / "text").read_text() == "not this run's" and report.backup_dir.name == ".backup"
