"""SIGKILL a run mid-epoch after a checkpoint, resume, and match an uninterrupted run bit for bit."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from speechssl.testing.training import kill_when, subprocess_env

SPEC = {
    "data": {"num_items": 24},  # 6 batches of 4 per epoch: step 8 is batch 2 of epoch 1
    "batch_size": 4,
    "group": 1,
    "model": {"dropout": 0.3},  # RNG must be restored for dropout masks to match
    "valid": True,
    "trainer": {
        "max_steps": 16,
        "lr": 0.01,
        "warmup_steps": 3,
        "save_every": 4,
        "log_every": 2,
        "keep_last": 2,
        "accum_steps": 1,
        "clip_norm": 1.0,
    },
}
RUNNER = [sys.executable, "-m", "speechssl.testing.training"]


def _run(out, spec, **popen):
    return subprocess.run(
        [*RUNNER, "--out", str(out), "--json", json.dumps(spec)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
        **popen,
    )


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_exact(tmp_path):
    reference = _run(tmp_path / "ref", SPEC)
    assert reference.returncode == 0, reference.stderr[-2000:]

    slow = dict(SPEC, data=dict(SPEC["data"], delay_s=0.05))  # ~0.2 s per update: killable
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*RUNNER, "--out", str(out), "--json", json.dumps(slow)],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kill_when(proc, out / "checkpoints" / "step_8", timeout=90, poll=0.01)
    assert not (out / "final.safetensors").exists()

    resumed = _run(out, dict(SPEC, resume=True))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr and "epoch 1" in resumed.stderr

    a = load_file(str(tmp_path / "ref" / "final.safetensors"))
    b = load_file(str(out / "final.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key}: max diff {(a[key] - b[key]).abs().max()}"
