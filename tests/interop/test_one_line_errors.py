"""Issue 20's one-line errors that sit beside interop: a TorchScript file that is not ours as an
upstream, `--device` naming a device the machine lacks, and the corrupt-checkpoint advice (which
must name what the CLI can do: `--resume` continues from checkpoints/last)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch

import speechssl
from speechssl.cli.common import check_device
from speechssl.interop.graph_upstream import GraphExportError
from speechssl.testing.training import run_toy
from speechssl.training import checkpoints as ckpt

pytestmark = pytest.mark.filterwarnings("ignore:`torch\\.jit\\.:FutureWarning")


class _Twice(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_a_foreign_torchscript_pt_is_named_not_unpickled(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(_Twice()), str(path))
    with pytest.raises(GraphExportError) as err:
        speechssl.load_upstream(path)
    message = str(err.value)
    assert message.startswith(f"{path}: a TorchScript file without speechssl's export metadata")
    assert "\n" not in message and "weights_only" not in message


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_device_the_machine_lacks_is_one_line(no_cuda, device):
    with pytest.raises(
        ValueError, match=rf"^--device {device}: no cuda device on this machine.*use --device cpu"
    ):
        check_device(device)


def test_device_torch_does_not_know_is_one_line():
    with pytest.raises(ValueError, match=r"^--device 'gpu0' is not a torch device; e.g. cpu, cuda, cuda:1$"):
        check_device("gpu0")
    assert check_device("cpu") == "cpu" and check_device(None) is None


def test_missing_cuda_index_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert check_device("cuda:0") == "cuda:0"
    with pytest.raises(
        ValueError, match=r"--device cuda:3: this machine has 1 cuda device\(s\), numbered from 0"
    ):
        check_device("cuda:3")


def _toy(out: Path, *, resume: bool) -> None:
    trainer = {"max_steps": 4, "save_every": 2, "keep_last": 5, "log_every": 1, "lr": 1e-2}
    run_toy(out, {"trainer": trainer, "resume": resume, "batch_size": 4})


def test_corrupt_checkpoint_advice_names_cli_steps_that_work(tmp_path):
    out = tmp_path / "exp"
    _toy(out, resume=False)
    root = out / "checkpoints"
    bad = root / "step_4"
    with open(bad / "model.safetensors", "r+b") as f:  # a run killed while the disk filled up
        f.truncate(os.path.getsize(bad / "model.safetensors") // 2)
    with pytest.raises(ckpt.CheckpointError) as err:
        _toy(out, resume=True)
    message = str(err.value)
    assert "resume='" not in message  # no such CLI option
    assert f"the previous good checkpoint is {root / 'step_2'}" in message
    assert message.endswith("then run the same command with --resume")
    # follow the advice to the letter: move the bad dir away, point last back, resume
    assert f"move {bad} out of {root}" in message
    link = re.search(r"\((ln -sfn [^)]+)\)", message).group(1)
    bad.rename(tmp_path / "step_4.corrupt")
    subprocess.run(shlex.split(link), check=True)
    assert ckpt.resolve(root, "last") == root / "step_2"
    _toy(out, resume=True)
    ckpt.verify(root / "step_4")  # trained again from step 2 and saved


def test_no_good_checkpoint_advice_names_the_cli_options(tmp_path):
    out = tmp_path / "exp"
    _toy(out, resume=False)
    root = out / "checkpoints"
    for step in ("step_2", "step_4"):
        (root / step / "manifest.json").unlink()
    with pytest.raises(
        ckpt.CheckpointError, match="no earlier checkpoint verifies; train into another --out"
    ):
        _toy(out, resume=True)


def test_features_and_kmeans_label_refuse_a_missing_cuda_in_one_line(tmp_path, monkeypatch, capsys):
    from speechssl.cli.main import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["features", "--data", str(tmp_path), "--feature", "upstream", "--upstream", "fbank",
            "--layer", "0", "--out", str(tmp_path / "f"), "--device", "cuda"]  # fmt: skip
    assert main(args) == 1
    assert "--device cuda" in capsys.readouterr().err and not (tmp_path / "f").exists()
    args = ["kmeans", "label", "--feats", str(tmp_path), "--model", str(tmp_path),
            "--out", str(tmp_path / "u"), "--device", "cuda"]  # fmt: skip
    assert main(args) == 1
    assert "--device cuda" in capsys.readouterr().err
