"""data2vec and WavLM pretraining resume exactly: a run SIGKILLed after a checkpoint and resumed
ends with the weights of an uninterrupted run, bit for bit on CPU: the data2vec EMA teacher (in
the checkpoint, stepped once per update, not again after loading) and WavLM's mixing draws
(utterances and noise, from the checkpointed RNG) included.

The runs go through `speechssl.training.pretrain.pretrain` in a child process; the killed one
sleeps before each micro-batch (no RNG, no arithmetic) so the kill lands mid-run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from speechssl.features.dump import FeatureReader, build_extractor, dump_features
from speechssl.testing.datadirs import make_data_dir
from speechssl.testing.training import kill_when, subprocess_env
from speechssl.units.kmeans import fit_kmeans, label

CONF = Path(__file__).resolve().parents[2] / "egs" / "mini_synth" / "ssl1" / "conf"
SHRINK = [
    "model.encoder.embed_dim=32", "model.encoder.num_layers=2", "model.encoder.ffn_dim=64",
    "trainer.num_workers=0", "trainer.log_every=1",
    # 3 utterances per batch, 2 batches per epoch: step 3 is mid-epoch
    "data.max_seconds=1.5", "data.max_batch_seconds=4.5",
]  # fmt: skip
RUNS = {
    "data2vec": dict(
        config_path=str(CONF / "pretrain_data2vec_tiny.yaml"),
        overrides=[*SHRINK, "data2vec.average_top_k_layers=2", "data2vec.ema_anneal_end_step=5"],
    ),
    "wavlm": dict(
        config_path=str(CONF / "pretrain_wavlm_tiny.yaml"),
        units=["units"],
        overrides=[*SHRINK, "wavlm.mixing.mix_prob=0.7", "wavlm.mixing.noise_prob=0.5"],
    ),
}
SCRIPT = """
import json, logging, sys, time
import torch
torch.set_num_threads(2)
from speechssl.training import pretrain as P
delay, kwargs = float(sys.argv[1]), json.loads(sys.argv[2])
if delay:
    forward = P.BatchObjective.forward
    def slow(self, batch):
        time.sleep(delay)
        return forward(self, batch)
    P.BatchObjective.forward = slow
logging.basicConfig(level=logging.INFO)
P.pretrain(**kwargs)
"""


def _command(kind: str, root: Path, out: Path, *, delay: float = 0.0, resume: bool = False) -> list[str]:
    kwargs = dict(RUNS[kind], train_dir=str(root / "train"), valid_dir=None, out_dir=str(out),
                  max_steps=8, save_every=3, resume=resume)  # fmt: skip
    if kind == "wavlm":
        kwargs["noise_dir"] = str(root / "noise_root" / "noise")
    return [sys.executable, "-c", SCRIPT, str(delay), json.dumps(kwargs)]


def _run(kind: str, root: Path, out: Path, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(_command(kind, root, out, **kw), env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """6 tones (1.0-1.2 s) with 4-cluster MFCC units, and a noise dir of 2 other tones."""
    root = tmp_path_factory.mktemp("resume_new_objectives")
    make_data_dir(root, num_speakers=3, utts_per_speaker=2, base_seconds=1.0, name="train")
    # its own root: the audio files of make_data_dir are named by speaker and utterance
    make_data_dir(root / "noise_root", num_speakers=1, utts_per_speaker=2, base_seconds=0.7, name="noise")
    dump_features(root / "train", build_extractor("mfcc"), root / "feats", progress=False)
    km = fit_kmeans(FeatureReader(root / "feats"), 4, n_init=1, out_dir=root / "km")
    label(FeatureReader(root / "feats"), km, root / "train" / "units", progress=False)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("kind", RUNS)
def test_sigkill_after_a_checkpoint_then_resume_is_bit_exact(corpus, tmp_path, kind):
    _run(kind, corpus, tmp_path / "reference")
    out = tmp_path / "killed"
    proc = subprocess.Popen(_command(kind, corpus, out, delay=0.3), env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    kill_when(proc, out / "checkpoints" / "step_3")
    assert not (out / "checkpoints" / "step_8").exists(), "the run finished before it was killed"
    resumed = _run(kind, corpus, out, resume=True)
    assert "resumed from" in resumed.stderr

    a = load_file(str(tmp_path / "reference" / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(out / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    differ = {k: float((a[k].double() - b[k].double()).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {sorted(differ.items())[:3]}"
    if kind == "data2vec":
        assert int(a["ema.num_updates"]) == 8
        # the teacher followed the student (it is neither the initial nor the student's weights)
        key = "encoder.layers.0.feed_forward.output_dense.weight"
        assert not torch.equal(a[f"ema.{key}"], a[f"data2vec_audio.{key}"])
