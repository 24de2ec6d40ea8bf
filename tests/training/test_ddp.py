"""Two gloo ranks x accum 1 == one process x accum 2 on the same micro-batches."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from speechssl.testing.training import subprocess_env

SPEC = {
    "data": {"num_items": 32},
    "batch_size": 4,
    "group": 2,  # both runs cut each epoch to an even number of global batches
    "trainer": {
        "max_steps": 6,
        "lr": 0.01,
        "warmup_steps": 2,
        "save_every": 100,
        "log_every": 3,
        "clip_norm": 0.5,
        "weight_decay": 0.01,
    },
}


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_with_accumulation(tmp_path):
    one = dict(SPEC, trainer=dict(SPEC["trainer"], accum_steps=2))
    two = dict(SPEC, trainer=dict(SPEC["trainer"], accum_steps=1))
    runner = [sys.executable, "-m", "speechssl.testing.training"]
    subprocess.run(
        [*runner, "--out", str(tmp_path / "one"), "--json", json.dumps(one)],
        check=True,
        env=subprocess_env(),
        capture_output=True,
        timeout=120,
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            *runner[1:],
            "--out",
            str(tmp_path / "two"),
            "--json",
            json.dumps(two),
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gloo process group: rank 0 of 2" in proc.stderr
    a = load_file(str(tmp_path / "one" / "final.safetensors"))
    b = load_file(str(tmp_path / "two" / "final.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=0, msg=key)
    # ...and training actually moved the weights (not a vacuous comparison)
    torch.manual_seed(0)
    from speechssl.testing.training import ToyModel

    start = ToyModel().state_dict()
    assert not torch.allclose(a["proj.weight"], start["proj.weight"], atol=1e-3)
