import os
from pathlib import Path

import pytest
import torch

from speechssl.errors import WriteFailedError
from speechssl.testing.training import ToyModel
from speechssl.training import checkpoints as ckpt
from tests.features.test_fingerprint import dead_pid


def _save(root: Path, step: int, model: torch.nn.Module) -> Path:
    state = {"step": step, "rng": [ckpt.capture_rng()], "note": "x", "nested": {"a": [1, 2.5, None]}}
    return ckpt.save_checkpoint(
        root, step, model.state_dict(), state, lambda p: p.write_text(f"step: {step}\n")
    )


def test_roundtrip_layout_and_weights_only(tmp_path):
    model = ToyModel()
    path = _save(tmp_path, 3, model)
    assert sorted(os.listdir(path)) == [
        "config.yaml",
        "manifest.json",
        "model.safetensors",
        "trainer_state.pt",
    ]
    assert (tmp_path / "last").is_symlink() and os.readlink(tmp_path / "last") == "step_3"
    weights, state = ckpt.load_checkpoint(tmp_path / "last")
    assert state["nested"] == {"a": [1, 2.5, None]}
    for k, v in model.state_dict().items():
        assert torch.equal(weights[k], v)
    # weights_only load of the raw file works too (no pickled code inside)
    torch.load(path / "trainer_state.pt", weights_only=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_rng_capture_restore_is_exact():
    import random

    import numpy as np

    state = ckpt.capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.restore_rng(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


@pytest.mark.parametrize("victim", ["model.safetensors", "trainer_state.pt"])
def test_truncated_checkpoint_names_previous_good(tmp_path, victim):
    model = ToyModel()
    good = _save(tmp_path, 2, model)
    bad = _save(tmp_path, 4, model)
    with open(bad / victim, "r+b") as f:
        f.truncate(os.path.getsize(bad / victim) // 2)
    with pytest.raises(
        ckpt.CheckpointError,
        match=rf"checkpoint .*step_4 is corrupt: {victim} has \d+ bytes, expected \d+ "
        rf"\(truncated\?\); the previous good checkpoint is {good}",
    ):
        ckpt.load_checkpoint(tmp_path / "last")


def test_flipped_byte_and_missing_manifest(tmp_path):
    model = ToyModel()
    _save(tmp_path, 1, model)
    bad = _save(tmp_path, 2, model)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(
        ckpt.CheckpointError, match="does not match its sha256.*previous good checkpoint is .*step_1"
    ):
        ckpt.load_checkpoint(bad)
    (tmp_path / "step_1" / "manifest.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match="step_1 is incomplete.*no earlier checkpoint verifies"):
        ckpt.load_checkpoint(tmp_path / "step_1")


def test_prune_keeps_last_k_and_best(tmp_path):
    model = ToyModel()
    for step in (1, 2, 3, 4, 5):
        path = _save(tmp_path, step, model)
        if step == 2:
            ckpt.point(tmp_path, "best", path)
        ckpt.prune(tmp_path, keep_last=2)
    assert [p.name for p in ckpt.step_dirs(tmp_path)] == ["step_2", "step_4", "step_5"]
    assert ckpt.resolve(tmp_path, "best").name == "step_2"
    assert ckpt.resolve(tmp_path, "last").name == "step_5"


def test_resave_same_step_and_clean_temporary(tmp_path):
    model = ToyModel()
    _save(tmp_path, 1, model)
    (tmp_path / ".tmp_step_9.123").mkdir()  # left behind by a killed run
    ckpt.clean_temporary(tmp_path)
    assert not (tmp_path / ".tmp_step_9.123").exists()
    with torch.no_grad():
        model.out.bias.fill_(7.0)
    _save(tmp_path, 1, model)
    weights, _ = ckpt.load_checkpoint(tmp_path / "step_1")
    assert weights["out.bias"].item() == 7.0


# --- a full disk (issue 12, item 9): one line naming the checkpoint, the temp dir gone,
# the previous checkpoint and `last` untouched.
def _assert_previous_intact(root: Path, model: torch.nn.Module) -> None:
    assert ckpt.resolve(root, "last").name == "step_1"
    assert [p.name for p in ckpt.step_dirs(root)] == ["step_1"]
    weights, _ = ckpt.load_checkpoint(root / "last")  # still verifies (sha256)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # no temp left


@pytest.mark.parametrize("writer", ["torch.save", "safetensors", "manifest"])
def test_enospc_from_any_writer_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, writer):
    import errno

    model = ToyModel()
    _save(tmp_path, 1, model)

    def full(*args, **kwargs):
        if writer == "torch.save":
            raise RuntimeError(
                "[enforce fail at inline_container.cc:664] . unexpected pos 128 vs 0\n"
                "PytorchStreamWriter failed writing file data/0: file write failed"
            )
        if writer == "safetensors":
            raise Exception(
                "Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                'message: "No space left on device" })'
            )
        raise OSError(errno.ENOSPC, "No space left on device")

    target = {
        "torch.save": "torch.save",
        "safetensors": "speechssl.training.checkpoints.save_file",
        "manifest": "speechssl.training.checkpoints.write_manifest",
    }[writer]
    monkeypatch.setattr(target, full)
    with pytest.raises(WriteFailedError) as info:
        _save(tmp_path, 2, model)
    message = str(info.value)
    assert message.startswith(f"cannot write checkpoint {tmp_path / 'step_2'}: ") and "\n" not in message
    if writer == "torch.save":  # torch's own words say nothing of a disk
        assert "a short write: the disk is probably full" in message
    monkeypatch.undo()
    _assert_previous_intact(tmp_path, model)


def test_a_real_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, tiny_fs):
    model = ToyModel()
    probe = _save(tmp_path / "probe", 1, model)
    size_kb = sum(p.stat().st_size for p in probe.iterdir()) // 1024
    root = tiny_fs(size_kb + 16 + size_kb // 2)  # room for one checkpoint, not for two
    _save(root, 1, model)
    with pytest.raises(
        WriteFailedError,
        match=rf"^cannot write checkpoint {root / 'step_2'}: .*"
        r"(No space left on device|file write failed)",
    ):
        _save(root, 2, model)
    _assert_previous_intact(root, model)


def test_an_empty_or_partial_manifest_does_not_verify(tmp_path):
    model = ToyModel()
    path = _save(tmp_path, 1, model)
    (path / "manifest.json").write_text('{"step": 1, "files": {}}')
    with pytest.raises(ckpt.CheckpointError, match="step_1 is corrupt: manifest.json lists no files"):
        ckpt.load_checkpoint(path)
    (path / "manifest.json").write_text(
        '{"files": {"config.yaml": {"bytes": 8, "sha256": "%s"}}}' % ("0" * 64)
    )
    with pytest.raises(ckpt.CheckpointError, match="manifest.json does not list model.safetensors"):
        ckpt.load_checkpoint(path)


def test_a_dangling_last_is_not_told_to_move_what_does_not_exist(tmp_path):
    good = _save(tmp_path, 2, ToyModel())
    (tmp_path / "last").unlink()
    (tmp_path / "last").symlink_to("step_99")  # step_99 deleted by hand
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.load_checkpoint(tmp_path / "last")
    assert str(err.value).endswith(
        f"step_99 does not exist; the previous good checkpoint is {good}; to continue from it, point last"
        f" at it (ln -sfn step_2 {tmp_path / 'last'}), then run the same command with --resume"
    )


def test_a_link_left_half_made_by_a_killed_run_is_cleaned(tmp_path, monkeypatch):
    """`point` builds the link under a temp name (then renames it): a run killed in between leaves
    that link, which the next run's `clean_temporary` removes once its writer is gone."""
    made = []
    symlink = os.symlink
    monkeypatch.setattr(os, "symlink", lambda src, dst: (made.append(Path(dst)), symlink(src, dst))[1])
    ckpt.point(tmp_path, "last", _save(tmp_path, 1, ToyModel()))
    left = tmp_path / made[-1].name.replace(str(os.getpid()), str(dead_pid()))
    os.symlink("step_1", left)
    ckpt.clean_temporary(tmp_path)
    assert not left.is_symlink() and ckpt.resolve(tmp_path, "last").name == "step_1"


def test_a_file_where_a_checkpoint_dir_should_be_is_named_as_one(tmp_path):
    (tmp_path / "x").write_text("not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoint .*x is a file, not a checkpoint dir$"):
        ckpt.verify(tmp_path / "x")
