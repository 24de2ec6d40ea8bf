"""data.static_shapes with trainer.compile_mode reduce-overhead: the trainer's pretraining steps
run as CUDA graphs, recorded once per batch shape and then only replayed (a host-bound step
loses its per-kernel launch cost only if its graphs replay)."""

from __future__ import annotations

import re

import torch

from speechssl.data.batching import BatchingConfig, build_loader
from speechssl.testing.datadirs import frame_units_dataset
from speechssl.training.config import TrainerConfig
from speechssl.training.pretrain import BatchObjective
from speechssl.training.trainer import train_on_loaders
from tests.gpu._gpu import GPU, tiny_pretrain_model

pytestmark = GPU


def _recorded_graphs() -> int:
    """CUDA graphs recorded so far by torch.compile's CUDA graph trees on this device."""
    from torch._inductor import cudagraph_trees

    manager = cudagraph_trees.get_manager(create_if_none_exists=False)
    match = re.fullmatch(r"count\((\d+)\)", repr(getattr(manager, "graph_counter", None)))
    assert match, "torch's CUDA graph tree manager changed: count its recordings another way"
    return int(match.group(1))


def test_static_shapes_replay_the_cuda_graphs_recorded_for_them(tmp_path):
    from torch._dynamo.utils import counters

    dataset = frame_units_dataset(tmp_path / "data")
    batching = BatchingConfig(max_batch_seconds=4.0, max_seconds=1.0, static_shapes=2)
    loader = build_loader(dataset, batching, train=True, seed=0)
    model = BatchObjective(tiny_pretrain_model("hubert_tiny"), ["units"]).cuda()
    config = TrainerConfig(max_steps=24, save_every=12, log_every=4, lr=1e-4, compile=True,
                           compile_mode="reduce-overhead", num_workers=0)  # fmt: skip
    skips = counters["inductor"]["cudagraph_skips"]
    recorded = {}  # step -> CUDA graphs recorded by then; 12 steps are about 4 epochs: every shape seen

    def count(step, path):
        recorded[step] = _recorded_graphs()
        return False

    result = train_on_loaders(model, loader, config, tmp_path / "exp", on_checkpoint=count)
    assert result.step == 24 and result.skipped_steps == 0
    assert counters["inductor"]["cudagraph_skips"] == skips, "some compiled graphs did not run as CUDA graphs"
    assert recorded[12] > 0 and recorded[24] == recorded[12], recorded  # steps 13-24 only replayed
    assert all(torch.isfinite(p).all() for p in model.parameters())
