"""trainer.strategy fsdp: two gloo ranks of FSDP2 reach DDP's weights, resume exactly, and write
checkpoints the rest of the toolkit reads (model.safetensors gathered on rank 0).

Run as a script (`torchrun ... tests/training/test_fsdp.py --out DIR --json SPEC`) this file is
the training process the tests launch."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from speechssl.models.encoder import EncoderLayer, FeedForward, SelfAttention
from speechssl.testing.training import ToyBatch, ToyBatchSampler, ToyDataset, subprocess_env, toy_collate

CONF = Path(__file__).resolve().parents[2] / "egs" / "mini_synth" / "ssl1" / "conf"

DIM = 4  # ToyDataset's frame size


class LayeredToy(nn.Module):
    """ToyDataset's regression through two speechssl transformer layers (FSDP's shard units), odd
    widths (9 = 5 + 4 rows per rank: uneven shards) and dropout (the RNG must resume exactly)."""

    def __init__(
        self, embed_dim: int = 9, num_heads: int = 3, ffn_dim: int = 13, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.mask_emb = nn.Parameter(torch.zeros(embed_dim).uniform_())  # 1-d: no weight decay
        self.proj = nn.Linear(DIM, embed_dim)
        self.layers = nn.ModuleList(
            EncoderLayer(
                SelfAttention(embed_dim, num_heads, embed_dim // num_heads, dropout),
                FeedForward(embed_dim, ffn_dim, "gelu", dropout, dropout),
                embed_dim=embed_dim,
                norm_first=i == 1,
                dropout=dropout,
            )
            for i in range(2)
        )
        self.out = nn.Linear(embed_dim, 1)

    def forward(self, batch: ToyBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, lengths = batch.x, batch.wav_lens  # (B, T, 4), (B,)
        pad = torch.arange(x.shape[1], device=x.device)[None, :] >= lengths[:, None]  # (B, T) True = pad
        h = self.proj(x) + self.mask_emb  # (B, T, D)
        for layer in self.layers:
            h = layer(h, pad)
        pooled = h.masked_fill(pad[..., None], 0.0).sum(1) / lengths[:, None]  # (B, D)
        err = self.out(pooled).squeeze(-1).float() - batch.y
        return (err**2).mean(), {"mae": err.abs().mean().detach()}


SPEC = {
    "batch_size": 4,
    "trainer": {
        "max_steps": 6, "accum_steps": 2, "lr": 0.01, "warmup_steps": 2, "save_every": 3, "log_every": 3,
        "clip_norm": 0.5, "weight_decay": 0.01,
    },
}  # fmt: skip


def run(out: Path, spec: dict) -> None:
    """Train LayeredToy as `spec` says (under torchrun: every rank)."""
    from speechssl.config import from_dict
    from speechssl.training import TrainerConfig, train
    from speechssl.training.distributed import env_rank, env_world_size

    torch.set_num_threads(1)
    rank, world = env_rank(), env_world_size()
    dataset = ToyDataset(num_items=32, seed=0, **{k: tuple(v) for k, v in spec.get("data", {}).items()})
    torch.manual_seed(spec.get("init_seed", 0))
    model = LayeredToy(**spec.get("model", {}))
    sampler = ToyBatchSampler(len(dataset), spec["batch_size"], num_replicas=world, rank=rank, group=4)
    config = from_dict(TrainerConfig, spec["trainer"])
    train(model, dataset, toy_collate, sampler, config, out, resume=spec.get("resume", False))


def _torchrun(out: Path, spec: dict, nproc: int = 2) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         __file__, "--out", str(out), "--json", json.dumps(spec)],
        env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stderr


def _weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step_{step}" / "model.safetensors"))


def _with_strategy(strategy: str, **trainer) -> dict:
    return dict(SPEC, trainer=dict(SPEC["trainer"], strategy=strategy, **trainer))


@pytest.mark.slow
def test_two_gloo_ranks_of_fsdp_reach_ddps_weights_and_resume_exactly(tmp_path):
    ddp, sharded, resumed = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "resumed"
    _torchrun(ddp, _with_strategy("ddp"))
    log = _torchrun(sharded, _with_strategy("fsdp"))
    assert "fsdp: 2 layer groups + the root, sharded over 2 ranks" in log
    step_6 = sharded / "checkpoints" / "step_6"
    assert {".metadata", "__0_0.distcp", "__1_0.distcp"} <= {p.name for p in step_6.iterdir()}
    listed = json.loads((step_6 / "manifest.json").read_text())["files"]
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "model.safetensors"} <= set(listed)
    state = torch.load(step_6 / "trainer_state.pt", weights_only=True)
    assert state["strategy"] == "fsdp" and state["optimizer"] is None  # the optimizer is in the shards

    # the same updates: FSDP reduce-scatters per micro-batch where DDP sums locally first, so the
    # last bits may differ (<= 6e-8 measured); 1e-6 is far below one update (lr 0.01). The key
    # biases' true gradient is 0 (softmax ignores a shift shared by all keys): Adam scales their
    # rounding noise up to lr-sized steps (1.2e-6 measured after 6 updates), hence 1e-5 there
    torch.manual_seed(0)
    start = LayeredToy().state_dict()
    for step in (3, 6):
        a, b = _weights(ddp, step), _weights(sharded, step)
        assert a.keys() == b.keys() == start.keys()
        for key in a:
            assert b[key].dtype == a[key].dtype and b[key].shape == a[key].shape, key
            atol = 1e-5 if key.endswith("k_proj.bias") else 1e-6
            torch.testing.assert_close(b[key], a[key], atol=atol, rtol=0, msg=key)
    moved = [k for k in start if not torch.allclose(_weights(sharded, 6)[k], start[k], atol=1e-3)]
    assert len(moved) >= len(start) - 2, f"training barely moved the weights: only {moved}"

    # resume the fsdp run from its step-3 checkpoint: the same step-6 weights, bit for bit
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(sharded / "checkpoints" / "step_3", resumed / "checkpoints" / "step_3", symlinks=True)
    os.symlink("step_3", resumed / "checkpoints" / "last")
    log = _torchrun(resumed, dict(_with_strategy("fsdp"), resume=True))
    assert "resumed from" in log
    a, b = _weights(sharded, 6), _weights(resumed, 6)
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture
def one_rank(monkeypatch):
    """A world of one in this process (no torchrun env): fsdp makes its own group of one."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    torch.set_num_threads(1)


def test_fsdp_in_one_process_matches_ddp_and_refuses_the_other_strategys_checkpoint(tmp_path, one_rank):
    spec = dict(SPEC, trainer=dict(SPEC["trainer"], max_steps=3, accum_steps=1))
    run(tmp_path / "ddp", dict(spec, trainer=dict(spec["trainer"], strategy="ddp")))
    run(tmp_path / "fsdp", dict(spec, trainer=dict(spec["trainer"], strategy="fsdp")))
    assert not torch.distributed.is_initialized()  # the group of one is torn down with the run
    assert (tmp_path / "fsdp" / "checkpoints" / "step_3" / ".metadata").is_file()  # really sharded
    assert not (tmp_path / "ddp" / "checkpoints" / "step_3" / ".metadata").exists()
    a, b = _weights(tmp_path / "ddp", 3), _weights(tmp_path / "fsdp", 3)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0, msg=key)
    longer = dict(spec, trainer=dict(spec["trainer"], max_steps=4), resume=True)
    with pytest.raises(ValueError, match=r"step_3 was written with trainer.strategy ddp; resume it with ddp"):
        run(tmp_path / "ddp", dict(longer, trainer=dict(longer["trainer"], strategy="fsdp")))
    with pytest.raises(
        ValueError, match=r"step_3 was written with trainer.strategy fsdp; resume it with fsdp"
    ):
        run(tmp_path / "fsdp", dict(longer, trainer=dict(longer["trainer"], strategy="ddp")))
    assert not torch.distributed.is_initialized()


@pytest.mark.slow
def test_compiled_fsdp_training_matches_eager(tmp_path, one_rank):
    for name, extra in (("eager", {}), ("compiled", {"compile": True})):
        trainer = dict(SPEC["trainer"], strategy="fsdp", max_steps=3, accum_steps=1, **extra)
        run(
            tmp_path / name, dict(SPEC, model={"dropout": 0.0}, trainer=trainer)
        )  # compiled dropout draws differ
    a, b = _weights(tmp_path / "eager", 3), _weights(tmp_path / "compiled", 3)
    for key in a:  # fused kernels round differently: as close as ddp compiled vs eager (1.7e-6 on key biases)
        torch.testing.assert_close(b[key], a[key], atol=1e-5 if key.endswith("k_proj.bias") else 1e-6, rtol=0)


def test_fsdp_skips_nan_steps_as_ddp_does(tmp_path, one_rank):
    spec = dict(SPEC, data={"nan_items": [3, 17, 26]}, trainer=dict(SPEC["trainer"], accum_steps=1))
    for strategy in ("ddp", "fsdp"):
        run(tmp_path / strategy, dict(spec, trainer=dict(spec["trainer"], strategy=strategy)))
    states = [
        torch.load(tmp_path / s / "checkpoints" / "step_6" / "trainer_state.pt") for s in ("ddp", "fsdp")
    ]
    assert states[0]["skipped_steps"] == states[1]["skipped_steps"] >= 1  # the fused kernel's found_inf
    a, b = _weights(tmp_path / "ddp", 6), _weights(tmp_path / "fsdp", 6)
    for key in a:
        assert b[key].isfinite().all(), key
        torch.testing.assert_close(b[key], a[key], atol=1e-5 if key.endswith("k_proj.bias") else 1e-6, rtol=0)


def test_bf16_gathers_bf16_weights_and_keeps_fp32_shards_and_gradients(one_rank):
    from speechssl.training.distributed import distributed
    from speechssl.training.fsdp import is_dtensor, shard

    with distributed(group_of_one=True):
        torch.manual_seed(0)
        model = shard(LayeredToy(), "bf16", torch.device("cpu"))
        seen = {}
        model.layers[0].feed_forward.register_forward_pre_hook(
            lambda m, args: seen.update(dtype=m.intermediate_dense.weight.dtype)
        )
        batch = toy_collate([ToyDataset(num_items=3, seed=2)[i] for i in range(3)])
        loss, _ = model(batch)
        loss.backward()
        weight = model.layers[0].feed_forward.intermediate_dense.weight
        assert seen["dtype"] == torch.bfloat16  # computed in bf16
        assert is_dtensor(weight) and weight.dtype == torch.float32  # the master shards stay fp32
        assert weight.grad.dtype == torch.float32 and weight.grad.to_local().abs().sum() > 0


def test_a_full_disk_while_writing_shards_is_one_line_and_keeps_the_last_checkpoint(
    tmp_path, one_rank, monkeypatch
):
    import errno

    import torch.distributed.checkpoint.filesystem as dcp_files

    from speechssl.errors import WriteFailedError

    spec = dict(SPEC, trainer=dict(SPEC["trainer"], strategy="fsdp", accum_steps=1))
    run(tmp_path, dict(spec, trainer=dict(spec["trainer"], max_steps=3)))

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dcp_files, "_write_item", full_disk)  # DCP's writer of one shard item
    with pytest.raises(
        WriteFailedError, match=r"^cannot write checkpoint .*step_6: .*No space left on device$"
    ):
        run(tmp_path, dict(spec, resume=True))
    assert not torch.distributed.is_initialized()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["last", "step_3"]  # no temp dir left behind
    assert (root / "last").resolve().name == "step_3"


def test_non_finite_shards_are_found_and_named(one_rank):
    from speechssl.training.distributed import distributed
    from speechssl.training.fsdp import all_finite, shard

    with distributed(group_of_one=True):
        torch.manual_seed(0)
        model = shard(LayeredToy(), "fp32", torch.device("cpu"))
        assert all_finite(model) == (True, [])
        with torch.no_grad():
            model.layers[1].feed_forward.output_dense.weight.to_local()[0, 2] = float("inf")
        assert all_finite(model) == (False, ["layers.1.feed_forward.output_dense.weight"])


def test_fsdp_refuses_layerdrop_naming_the_module(tmp_path, one_rank):
    from speechssl.models.encoder import TransformerEncoder
    from speechssl.training.fsdp import refuse_layerdrop

    encoder = TransformerEncoder(nn.Identity(), [], embed_dim=8, layer_norm_first=False, dropout=0.0,
                                 layerdrop=0.05)  # fmt: skip
    with pytest.raises(
        ValueError, match=r"LayerDrop \(encoder.layerdrop = 0.05\).*model.encoder.layerdrop=0"
    ):
        refuse_layerdrop(nn.ModuleDict({"encoder": encoder}))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """train/dev dirs of tones with 4-cluster MFCC units."""
    # here, not at the top: tests/gpu imports this module on a machine with fewer packages
    from speechssl.features.dump import FeatureReader, build_extractor, dump_features
    from speechssl.testing.datadirs import make_data_dir
    from speechssl.units.kmeans import fit_kmeans, label

    root = tmp_path_factory.mktemp("fsdp_corpus")
    for name, speakers in (("train", 3), ("dev", 2)):
        make_data_dir(root, num_speakers=speakers, utts_per_speaker=2, base_seconds=1.0, name=name)
    dump_features(root / "train", build_extractor("mfcc"), root / "feats", progress=False)
    km = fit_kmeans(FeatureReader(root / "feats"), 4, n_init=1, out_dir=root / "km")
    dump_features(root / "dev", build_extractor("mfcc"), root / "feats_dev", progress=False)
    label(FeatureReader(root / "feats"), km, root / "train" / "units", progress=False)
    label(FeatureReader(root / "feats_dev"), km, root / "dev" / "units", progress=False)
    return root


PRETRAIN = {
    # WavLM: its shared position table stays in the root's group; a dev set runs the RankMe monitor
    "wavlm": dict(units=["units"], overrides=["wavlm.mixing.mix_prob=0.7", "wavlm.mixing.noise_prob=0.0"]),
    # data2vec: the EMA teacher's layers are sharded like the student's and follow it shard by shard
    "data2vec": dict(overrides=["data2vec.average_top_k_layers=2", "data2vec.ema_anneal_end_step=5"]),
}


@pytest.mark.parametrize("kind", PRETRAIN)
def test_pretrain_with_fsdp_matches_ddp_and_its_checkpoint_is_an_upstream(corpus, tmp_path, one_rank, kind):
    import speechssl
    from speechssl.training.pretrain import pretrain

    shrink = [
        "model.encoder.embed_dim=32", "model.encoder.num_layers=2", "model.encoder.ffn_dim=64",
        "trainer.num_workers=0", "trainer.log_every=1", "data.max_seconds=1.5", "data.max_batch_seconds=4.5",
    ]  # fmt: skip
    weights = {}
    valid = corpus / "dev" if kind == "wavlm" else None
    for strategy in ("ddp", "fsdp"):
        overrides = [*shrink, *PRETRAIN[kind]["overrides"], f"trainer.strategy={strategy}"]
        kwargs = dict(PRETRAIN[kind], overrides=overrides)
        pretrain(CONF / f"pretrain_{kind}_tiny.yaml", corpus / "train", valid, tmp_path / strategy,
                 max_steps=3, save_every=3, **kwargs)  # fmt: skip
        weights[strategy] = load_file(str(tmp_path / strategy / "checkpoints" / "last" / "model.safetensors"))
    assert (tmp_path / "fsdp" / "checkpoints" / "last" / ".metadata").is_file()
    a, b = weights["ddp"], weights["fsdp"]
    assert a.keys() == b.keys()
    for key in a:
        atol = 1e-5 if key.endswith("k_proj.bias") else 1e-6  # see the two-rank test
        torch.testing.assert_close(b[key], a[key], atol=atol, rtol=0, msg=key)
    if kind == "data2vec":
        assert int(b["ema.num_updates"]) == 3
    up = speechssl.load_upstream(tmp_path / "fsdp" / "checkpoints" / "last")
    reference = speechssl.load_upstream(tmp_path / "ddp" / "checkpoints" / "last")
    wav = torch.randn(1, 7001, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = up(wav, torch.tensor([7001])).hidden_states
        want = reference(wav, torch.tensor([7001])).hidden_states
    assert len(got) == 3
    torch.testing.assert_close(got[-1], want[-1], atol=1e-4, rtol=0)
    from speechssl.cli.main import main

    last = tmp_path / "fsdp" / "checkpoints" / "last"
    assert (
        main(["export", "--upstream", str(last), "--format", "torchscript", "--out", str(tmp_path / "ts.pt")])
        == 0
    )


def test_strategy_and_precision_are_checked():
    from speechssl.config import ConfigError, from_dict
    from speechssl.training import TrainerConfig

    with pytest.raises(ConfigError, match=r"'strategy' must be one of 'ddp', 'fsdp'.*found 'zero3'"):
        from_dict(TrainerConfig, {"strategy": "zero3"})
    with pytest.raises(ValueError, match=r"strategy must be one of ddp, fsdp, found 'zero3'"):
        TrainerConfig(strategy="zero3")
    with pytest.raises(ValueError, match=r"strategy fsdp trains in precision fp32 or bf16, found fp16"):
        TrainerConfig(strategy="fsdp", precision="fp16")
    assert TrainerConfig().strategy == "ddp"
    assert TrainerConfig(strategy="fsdp", precision="bf16").strategy == "fsdp"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(args.out, json.loads(args.json))


if __name__ == "__main__":
    main()
