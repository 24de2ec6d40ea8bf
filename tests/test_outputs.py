"""The output-path rule, the experiment lock, atomic writes and full disks
(speechssl.io, speechssl.outputs)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from speechssl.errors import ExperimentLockedError, OutputExistsError, WriteFailedError
from speechssl.io import atomic_directory, atomic_file, atomic_write_text, remove_stale_temporaries
from speechssl.outputs import (
    LOCK,
    MARKER,
    ExperimentLock,
    check_output,
    claim_directories,
    output_directory,
    read_marker,
    record_output,
    write_marker,
)


def test_new_and_empty_outputs_are_accepted(tmp_path):
    assert check_output(tmp_path / "new", "export hf") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_output(tmp_path / "empty", "export hf")


def test_foreign_directory_is_refused_and_kept(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep").write_text("x")
    with pytest.raises(OutputExistsError, match=r"--out .*/d already holds files .*\(keep\).*--overwrite"):
        check_output(out, "export hf")
    assert (out / "keep").read_text() == "x"
    check_output(out, "export hf", overwrite=True)  # the user said so


def test_own_earlier_output_is_rewritten_without_overwrite(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    write_marker(out, "features")
    (out / "0_1.npy").write_text("x")
    check_output(out, "features")
    with pytest.raises(OutputExistsError, match="holds the output of `speechssl features`"):
        check_output(out, "kmeans label")


def test_experiment_dirs_and_inputs_are_refused_even_with_overwrite(tmp_path):
    exp = tmp_path / "exp"
    (exp / "checkpoints").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match="is an experiment dir"):
        check_output(exp, "export hf", overwrite=True)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with pytest.raises(OutputExistsError, match="is an input of this command"):
        check_output(ckpt, "export hf", overwrite=True, inputs=(ckpt,))
    with pytest.raises(OutputExistsError, match="contains an input of this command"):
        check_output(tmp_path, "export hf", overwrite=True, inputs=(ckpt,))


def test_a_shared_dir_is_refused_naming_what_it_is_not_a_command(tmp_path):
    """A feature cache's marker names no CLI command: the refusal must not tell the user to run
    `speechssl downstream feature-cache` (there is no such command)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    write_marker(cache, "downstream feature-cache", shared=True)
    with pytest.raises(OutputExistsError) as refused:
        check_output(cache, "export hf", overwrite=True)
    message = str(refused.value)
    assert "is a shared dir (downstream feature-cache); export hf never writes over one" in message
    assert "speechssl downstream feature-cache" not in message


def test_existing_file_needs_overwrite(tmp_path):
    f = tmp_path / "model.onnx"
    f.write_text("mine")
    with pytest.raises(OutputExistsError, match="already exists.*--overwrite"):
        check_output(f, "export onnx", is_file=True)
    check_output(f, "export onnx", is_file=True, overwrite=True)
    with pytest.raises(OutputExistsError, match="is a directory"):
        check_output(tmp_path, "export onnx", is_file=True)


_HOLD = textwrap.dedent(
    """
    import sys, time
    from speechssl.outputs import ExperimentLock
    with ExperimentLock(sys.argv[1], "pretrain"):
        print("locked", flush=True)
        time.sleep(60)
    """
)


def test_lock_refuses_a_second_process_and_names_the_holder(tmp_path):
    exp = tmp_path / "exp"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(exp)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            ExperimentLockedError, match=rf"in use by `speechssl pretrain` \(pid {holder.pid} on host"
        ):
            ExperimentLock(exp, "pretrain").acquire()
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock file stays, holds no flock, and is taken over
    assert (exp / LOCK).exists()
    with ExperimentLock(exp, "pretrain"):
        pass
    assert not (exp / LOCK).exists()


def test_a_full_disk_when_taking_the_lock_is_one_line_and_leaves_no_lock_file(tmp_path, monkeypatch):
    """The lock's record is the first thing a training command writes: a full disk there is the
    one-line error of every write (it was a traceback), and EXP keeps no empty lock file."""
    exp = tmp_path / "exp"
    exp.mkdir()
    monkeypatch.setattr(os, "pwrite", _enospc)
    with pytest.raises(WriteFailedError, match=rf"^cannot write {exp / LOCK}: No space left on device$"):
        ExperimentLock(exp, "pretrain").acquire()
    monkeypatch.undo()
    assert os.listdir(exp) == []
    with ExperimentLock(exp, "pretrain"):  # and the lock is free
        pass


def test_atomic_file_leaves_old_content_when_the_writer_fails(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(f) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer crashed")
    assert f.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_is_one_line_naming_the_path_and_leaves_no_temp(tmp_path, monkeypatch):
    f = tmp_path / "a.txt"
    f.write_text("old")
    monkeypatch.setattr(Path, "write_text", _enospc)
    with pytest.raises(WriteFailedError, match=rf"cannot write {f}: No space left on device"):
        atomic_write_text(f, "new")
    monkeypatch.undo()
    assert f.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]
    # torch.save reports it in words; the checkpoint dir is built in a temp dir that goes away
    monkeypatch.setattr(
        torch,
        "save",
        lambda *a, **k: (_ for _ in ()).throw(
            RuntimeError(
                "[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file data/0"
            )
        ),
    )
    with pytest.raises(WriteFailedError, match=rf"cannot write {tmp_path / 'ckpt'}: .*failed writing"):
        with atomic_directory(tmp_path / "ckpt") as tmp:
            torch.save({}, tmp / "state.pt")
    assert os.listdir(tmp_path) == ["a.txt"]


def test_full_disk_on_a_real_tiny_file_system(tiny_fs):
    mnt = tiny_fs(64)
    (mnt / "keep.txt").write_text("precious")
    with pytest.raises(WriteFailedError, match=rf"cannot write {mnt / 'big.bin'}: No space left on device"):
        with atomic_file(mnt / "big.bin") as tmp:
            tmp.write_bytes(b"\0" * (1 << 20))
    assert sorted(os.listdir(mnt)) == ["keep.txt"]
    assert (mnt / "keep.txt").read_text() == "precious"


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".0_1.{dead_pid}.tmp.npy"
    stale.write_text("x")
    live = tmp_path / f".0_2.{os.getpid()}.tmp.npy"
    live.write_text("x")
    (tmp_path / "0_1.npy").write_text("done")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, "0_1.npy"])


def test_stale_temporaries_of_another_host_are_never_taken_for_dead(tmp_path):
    """On a file system several hosts share (NFS; parallel feature jobs of a cluster), a pid says
    nothing about another host's writer: its temp files stay (it deleted a live job's files)."""
    from speechssl.io import temp_tag

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid, host = int(dead.stdout), temp_tag().split("@")[1]
    with atomic_file(tmp_path / "made.npy") as tmp:
        assert tmp.name == f".made.{temp_tag()}.tmp.npy"  # our writers' names carry the host
        tmp.write_text("x")
    ours, theirs = tmp_path / f".a.{pid}@{host}.tmp.npy", tmp_path / f".b.{pid}@{host}x.tmp.npy"
    ours.write_text("killed here")
    theirs.write_text("another host's writer, perhaps alive")
    assert remove_stale_temporaries(tmp_path) == [ours]
    assert sorted(os.listdir(tmp_path)) == [theirs.name, "made.npy"]


def test_a_file_this_command_wrote_is_replaced_until_someone_edits_it(tmp_path):
    f = tmp_path / "compare.md"
    f.write_text("table")
    record_output(f, "compare")
    check_output(f, "compare", is_file=True)  # re-running the recipe stage
    with pytest.raises(OutputExistsError, match="already exists"):
        check_output(f, "summarize", is_file=True)
    f.write_text("table with my notes")  # the user edited it: no longer ours to replace
    with pytest.raises(OutputExistsError, match="already exists"):
        check_output(f, "compare", is_file=True)


def test_overwrite_never_applies_inside_an_experiment_or_an_input(tmp_path):
    exp = tmp_path / "exp"
    (exp / "checkpoints" / "step_2").mkdir(parents=True)
    weights = exp / "checkpoints" / "step_2" / "model.safetensors"
    weights.write_bytes(b"weights")
    for out, is_file in (
        (exp / "checkpoints", False),
        (weights, True),
        (exp / "checkpoints" / "step_2", False),
    ):
        with pytest.raises(
            OutputExistsError, match=r"already exists inside .*exp \(an experiment dir\).*even with"
        ):
            check_output(out, "summarize", overwrite=True, is_file=is_file)
    check_output(exp / "compare.md", "compare", is_file=True)  # a new file beside the run is fine
    model = tmp_path / "hf_model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(OutputExistsError, match=r"config.json already exists inside .*hf_model \(an input"):
        check_output(model / "config.json", "compare", overwrite=True, is_file=True, inputs=(model,))
    assert (model / "config.json").read_text() == "{}"


def test_a_parent_that_is_a_file_is_named(tmp_path):
    (tmp_path / "feats.npy").write_text("x")
    with pytest.raises(OutputExistsError, match=r"feats.npy is a file, not a directory"):
        check_output(tmp_path / "feats.npy" / "sub" / "out", "features")


def test_output_directory_drops_its_own_stale_files_and_keeps_the_users(tmp_path):
    out = tmp_path / "hf"
    with output_directory(out, "export") as tmp:
        (tmp / "config.json").write_text("1")
        (tmp / "old_only.bin").write_text("stale")
    (out / "README.md").write_text("my model card")
    (out / "notes").mkdir()
    (out / "notes" / "a.txt").write_text("mine")
    with output_directory(out, "export") as tmp:
        (tmp / "config.json").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "README.md", "config.json", "notes"]
    assert (out / "config.json").read_text() == "2"
    assert (out / "README.md").read_text() == "my model card" and (
        out / "notes" / "a.txt"
    ).read_text() == "mine"


def test_output_directory_of_the_current_directory_is_written_and_says_where(tmp_path, monkeypatch, caplog):
    """`--out .` (a re-run from inside the output): "." has no name to build a temp sibling from,
    so it failed with EINVAL after the command's compute; the user's files are carried over."""
    out = tmp_path / "tokens"
    with output_directory(out, "export") as tmp:
        (tmp / "a.txt").write_text("1")
    (out / "notes.txt").write_text("mine")
    monkeypatch.chdir(out)
    with output_directory(".", "export") as tmp:
        (tmp / "a.txt").write_text("2")
    assert (out / "a.txt").read_text() == "2" and (out / "notes.txt").read_text() == "mine"
    assert "holds the current directory" in caplog.text


_HOLD_AND_FORK = textwrap.dedent(
    """
    import os, sys, time
    from speechssl.outputs import ExperimentLock
    lock = ExperimentLock(sys.argv[1], "pretrain")
    lock.acquire()
    if os.fork() == 0:  # a data-loader worker: outlives its parent by a few seconds
        time.sleep(5)
        os._exit(0)
    print("locked", flush=True)
    time.sleep(60)
    """
)


def test_a_forked_worker_does_not_keep_a_killed_runs_lock(tmp_path):
    exp = tmp_path / "exp"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_AND_FORK, str(exp)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()
    with ExperimentLock(exp, "pretrain"):  # at once, while the orphaned worker still lives
        pass


def test_written_files_and_dirs_get_the_umask_mode_not_private_temp_modes(tmp_path):
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "w.safetensors") as tmp:
            save_file({"a": torch.zeros(2)}, str(tmp))  # safetensors creates 0600
        with atomic_directory(tmp_path / "ckpt") as tmp:  # mkdtemp creates 0700
            save_file({"a": torch.zeros(2)}, str(tmp / "model.safetensors"))
    finally:
        os.umask(old)
    assert oct((tmp_path / "w.safetensors").stat().st_mode & 0o777) == "0o644"
    assert oct((tmp_path / "ckpt").stat().st_mode & 0o777) == "0o755"
    assert oct((tmp_path / "ckpt" / "model.safetensors").stat().st_mode & 0o777) == "0o644"


def test_overwrite_never_takes_over_another_commands_output(tmp_path):
    """--overwrite lets a command write into a user's dir, not into another command's output: its
    marker would then name the new command, and the first one refuse its own dir."""
    dump = tmp_path / "dump"
    claim_directories([dump], "features")
    (dump / "0_1.npy").write_bytes(b"features")
    for overwrite in (False, True):  # and the error does not suggest an --overwrite that cannot work
        with pytest.raises(
            OutputExistsError, match=r"output of `speechssl features`; kmeans fit never"
        ) as err:
            check_output(dump, "kmeans fit", overwrite=overwrite)
        assert "pass --overwrite" not in str(err.value)
    assert read_marker(dump) == "features"
    check_output(dump, "features")  # its own command still writes there


def _rerun_with_users_files(tmp_path: Path) -> Path:
    """An export's output dir, with a user's notes file, private file and notes dir added."""
    out = tmp_path / "hf"
    with output_directory(out, "export") as tmp:
        (tmp / "config.json").write_text("1")
    (out / "README.md").write_text("my model card")
    (out / "private.txt").write_text("mine only")
    (out / "private.txt").chmod(0o600)
    (out / "notes").mkdir()
    (out / "notes" / "a.txt").write_text("mine")
    return out


def _as_the_user_left_it(out: Path, config: str = "1") -> None:
    """`out` holds the command's `config.json` of that run and every file of the user's, unchanged."""
    assert sorted(p.name for p in out.iterdir()) == [
        MARKER,
        "README.md",
        "config.json",
        "notes",
        "private.txt",
    ]
    assert (out / "config.json").read_text() == config and (out / "README.md").read_text() == "my model card"
    assert (out / "notes" / "a.txt").read_text() == "mine" and (
        out / "private.txt"
    ).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp dir left beside it


@pytest.mark.parametrize("at", ["carrying the user's files", "between the renames", "after the swap"])
def test_ctrl_c_while_a_rerun_swaps_its_output_in_leaves_it_and_the_users_files_as_they_were(
    tmp_path, monkeypatch, at
):
    """A re-run carries the user's files into its new dir and swaps it in: Ctrl-C before the new
    dir is in puts the old one back whole, and after, the new one stays, the user's files in it
    (it deleted the user's notes, or left no dir at all)."""
    out = _rerun_with_users_files(tmp_path)
    replace, link = Path.replace, os.link

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    if at == "carrying the user's files":
        monkeypatch.setattr(
            os, "link", lambda *a, **k: (link(*a, **k), stop()) if "private" in str(a[0]) else link(*a, **k)
        )
    else:
        renaming = "tmpold" if at == "between the renames" else out.name

        def replacing(self, target):
            replace(self, target)
            if Path(target).name.endswith(renaming) and Path(target).name != self.name:
                stop()

        monkeypatch.setattr(Path, "replace", replacing)
    with pytest.raises(KeyboardInterrupt):
        with output_directory(out, "export") as tmp:
            (tmp / "config.json").write_text("2")
    monkeypatch.undo()
    _as_the_user_left_it(out, config="2" if at == "after the swap" else "1")
    with output_directory(out, "export") as tmp:  # and a later run goes through, keeping them
        (tmp / "config.json").write_text("2")
    assert (out / "config.json").read_text() == "2" and (out / "notes" / "a.txt").read_text() == "mine"
    assert (out / "private.txt").stat().st_mode & 0o777 == 0o600  # never given the umask's mode


def test_a_run_killed_between_the_renames_of_its_swap_gets_its_old_dir_back(tmp_path):
    """Killed after moving its old output aside and before renaming the new one in: the next run
    that writes there finds `.hf.<pid>.tmpold` of a dead pid and no `hf`, and puts it back."""
    out = _rerun_with_users_files(tmp_path)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    out.rename(tmp_path / f".hf.{int(dead.stdout)}.tmpold")
    remove_stale_temporaries(tmp_path, of=("hf",))
    _as_the_user_left_it(out)


def test_a_rerun_refuses_to_write_over_a_file_the_user_added_under_a_name_it_now_writes(
    tmp_path, caplog, monkeypatch
):
    """The earlier run's marker lists what it wrote; a file added since is the user's, even when
    this run would write one of that name (it was replaced silently): refused, nothing changed,
    unless --overwrite. A normal run below the current directory gives no warning about it."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "combined"
    with output_directory(out, "data combine") as tmp:
        (tmp / "text").write_text("a hi\n")
    (out / "utt2lang").write_text("a en-GB\n")  # the user's own table
    with (
        caplog.at_level("WARNING"),
        pytest.raises(OutputExistsError, match=r"holds utt2lang, which .* did not"),
    ):
        with output_directory(out, "data combine") as tmp:
            (tmp / "text").write_text("a hello\n")
            (tmp / "utt2lang").write_text("a en\n")
    assert (out / "utt2lang").read_text() == "a en-GB\n" and (out / "text").read_text() == "a hi\n"
    assert "holds the current directory" not in caplog.text
    with output_directory(out, "data combine", overwrite=True) as tmp:
        (tmp / "text").write_text("a hello\n")
        (tmp / "utt2lang").write_text("a en\n")
    assert (out / "utt2lang").read_text() == "a en\n"


def test_overwrite_never_replaces_a_file_inside_another_commands_output(tmp_path):
    """`units score --plot km/kmeans.json --overwrite` wrote a PNG over a k-means model: a file
    inside another command's output is that command's, as the dir is. A new file may be added."""
    km = tmp_path / "km"
    with output_directory(km, "kmeans fit") as tmp:
        (tmp / "kmeans.json").write_text("{}")
    with pytest.raises(
        OutputExistsError,
        match=r"^--plot .*kmeans.json already exists inside .*km \(the output"
        r" of `speechssl kmeans fit`\); units score never writes over it, even with --overwrite",
    ):
        check_output(km / "kmeans.json", "units score", overwrite=True, is_file=True, option="--plot")
    assert (km / "kmeans.json").read_text() == "{}"
    assert check_output(km / "scores.png", "units score", is_file=True, option="--plot") == km / "scores.png"


def test_without_hard_links_a_rerun_copies_the_users_files_and_never_moves_them(tmp_path, monkeypatch):
    """A file system without hard links (some network and FUSE mounts): the user's files are copied
    into the new dir, so the old one still holds them all if the run is stopped before the swap
    (they were moved, and a kill left them only in a temp dir the next run deleted)."""
    out = _rerun_with_users_files(tmp_path)

    def no_links(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    replace = Path.replace

    def stop_between(self, target):
        replace(self, target)
        if Path(target).name.endswith(".tmpold"):
            assert sorted(p.name for p in Path(target).iterdir()) == [
                MARKER, "README.md", "config.json", "notes", "private.txt"
            ]  # fmt: skip
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Path, "replace", stop_between)
        with pytest.raises(KeyboardInterrupt):
            with output_directory(out, "export") as tmp:
                (tmp / "config.json").write_text("2")
    _as_the_user_left_it(out)
    with output_directory(out, "export") as tmp:
        (tmp / "config.json").write_text("2")
    _as_the_user_left_it(out, config="2")


def test_a_dir_a_killed_run_moved_aside_is_put_back_before_the_rule_judges_it(tmp_path):
    """Killed between the two renames of its swap, a run leaves no `out`, only its old dir moved
    aside: another command given that --out must find it back and be refused (it was let in, and
    the old dir's files then carried into its output)."""
    out = _rerun_with_users_files(tmp_path)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    out.rename(tmp_path / f".hf.{int(dead.stdout)}.tmpold")
    with pytest.raises(OutputExistsError, match="holds the output of `speechssl export`"):
        check_output(out, "data combine")
    _as_the_user_left_it(out)


def test_a_file_system_without_modes_takes_writes(tmp_path, monkeypatch):
    """FAT and some FUSE mounts fail chmod (ENOSYS): the mode fix-up is skipped, the write done (every
    write there was a traceback)."""

    def no_modes(path, mode):
        raise OSError(errno.ENOSYS, "Function not implemented", str(path))

    monkeypatch.setattr(os, "chmod", no_modes)
    atomic_write_text(tmp_path / "a.txt", "written")
    with output_directory(tmp_path / "out", "export") as tmp:
        (tmp / "config.json").write_text("1")
    assert (tmp_path / "a.txt").read_text() == "written" and (tmp_path / "out" / "config.json").is_file()


def test_names_that_only_look_like_temp_names_are_left_alone(tmp_path):
    """A user's dated copy (`.text.202611291200.tmp`: no pid is that large) is not a killed writer's
    temp file (its cleanup crashed with OverflowError), and a symlink named like a moved-aside dir
    is not restored in place of the dir."""
    dated = tmp_path / ".text.202611291200.tmp"
    dated.write_text("my copy")
    (tmp_path / "elsewhere").mkdir()
    os.symlink("elsewhere", tmp_path / ".out.999999.tmpold")
    assert remove_stale_temporaries(tmp_path, of=("text",)) == []
    assert check_output(tmp_path / "out", "export") == tmp_path / "out"
    assert dated.read_text() == "my copy" and not (tmp_path / "out").exists()


def test_a_rerun_keeps_a_users_file_named_like_a_temp_file(tmp_path):
    """Nothing writes temp files inside an output dir while it is replaced, so a name there that
    looks like one (`.table.2.tmp`, a user's copy) is the user's: carried over, not dropped."""
    out = _rerun_with_users_files(tmp_path)
    (out / ".table.2.tmp").write_text("my copy")
    with output_directory(out, "export") as tmp:
        (tmp / "config.json").write_text("2")
    assert (out / ".table.2.tmp").read_text() == "my copy"
