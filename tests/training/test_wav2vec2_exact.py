"""wav2vec 2.0 pretraining is exact on 2 CPU threads: a rerun, a SIGKILLed-and-resumed run and a
run under torch's deterministic algorithms all end with bit-identical weights.

The distractor gather used to sum its gradient with parallel atomic adds whose order follows
thread scheduling (issue 12 item 11). The comparison with `torch.use_deterministic_algorithms`
(which sums in index order) catches that reliably; two plain runs only differ when the threads
happen to be scheduled differently.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from speechssl.testing.datadirs import make_data_dir
from speechssl.testing.training import kill_when, subprocess_env

CONF = Path(__file__).resolve().parents[2] / "egs/mini_synth/ssl1/conf/pretrain_wav2vec2_tiny.yaml"
ARGS = [
    "--max-steps", "8", "--save-every", "3",  # 2 batches per epoch: step 3 is mid-epoch
    "--set", "model.encoder.embed_dim=32", "--set", "model.encoder.num_layers=2",
    "--set", "model.encoder.ffn_dim=64", "--set", "model.encoder.pos_conv_kernel=8",
    "--set", "trainer.num_workers=0", "--set", "trainer.log_every=1",
    # 3 utterances per batch: the 2 threads' halves of the distractor gather share an utterance
    "--set", "data.max_seconds=1.5", "--set", "data.max_batch_seconds=4.5",
]  # fmt: skip


def _command(data: Path, out: Path, *extra: str, deterministic: bool = False) -> list[str]:
    script = (
        "import sys, torch; torch.set_num_threads(2); "
        f"torch.use_deterministic_algorithms({deterministic}); "
        "from speechssl.cli.main import main; sys.exit(main(sys.argv[1:]))"
    )
    return [sys.executable, "-c", script, "pretrain", "--config", str(CONF), "--train", str(data),
            "--out", str(out), *ARGS, *extra]  # fmt: skip


def _run(data: Path, out: Path, *extra: str, deterministic: bool = False) -> subprocess.CompletedProcess:
    done = subprocess.run(_command(data, out, *extra, deterministic=deterministic), env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _assert_same_weights(a: Path, b: Path) -> None:
    wa = load_file(str(a / "checkpoints" / "last" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "last" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    differ = {k: float((wa[k] - wb[k]).abs().max()) for k in wa if not torch.equal(wa[k], wb[k])}
    assert not differ, f"{len(differ)} of {len(wa)} tensors differ, e.g. {sorted(differ.items())[:3]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A data dir of 6 tones (1.0-1.2 s) and one uninterrupted 8-step run on it."""
    root = tmp_path_factory.mktemp("w2v_exact")
    make_data_dir(root, num_speakers=3, utts_per_speaker=2, base_seconds=1.0, name="train")
    _run(root / "train", root / "reference")
    return root


@pytest.mark.slow
def test_identical_runs_end_bit_identical_and_match_deterministic_algorithms(runs):
    _run(runs / "train", runs / "again")
    _assert_same_weights(runs / "reference", runs / "again")
    _run(runs / "train", runs / "deterministic", deterministic=True)
    _assert_same_weights(runs / "reference", runs / "deterministic")


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_is_bit_exact(runs):
    out = runs / "killed"
    proc = subprocess.Popen(_command(runs / "train", out), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    kill_when(proc, out / "checkpoints" / "step_3")
    assert not (out / "checkpoints" / "step_8").exists(), "the run finished before it was killed"

    resumed = _run(runs / "train", out, "--resume")
    assert "resumed from" in resumed.stderr and "epoch 1" in resumed.stderr
    _assert_same_weights(runs / "reference", out)
