"""benchmarks.host: the counts a GPU-less session tracks the host cost of a step by."""

from __future__ import annotations

import pytest

from benchmarks.host import compiled_graphs, device_ops
from benchmarks.pretrain import pretrain_step

SECONDS = [0.5, 0.45, 0.3]


def test_our_hubert_step_computes_fewer_ops_than_torchaudios():
    """Each op that computes is a kernel launch on a GPU, where the step is host-bound; both draw
    their masks with torch ops and use their optimizer as on a GPU (foreach / fused)."""
    ours, ref = (
        device_ops(pretrain_step(c, "hubert", "hubert_base", SECONDS, num_layers=2, narrow=True,
                                 optimizer="recipe_foreach"))
        for c in ("ours", "torchaudio")
    )  # fmt: skip
    assert 0 < ours < ref


@pytest.mark.parametrize(("padding_free", "most"), [(False, 4), (True, 10)])
def test_compiled_step_breaks_its_graph_no_more_often_than_measured(padding_free, most):
    """A new host read in the step (an .item(), a .tolist(), a nonzero) splits the compiled step
    once more: the counts of 2026-11-28 (HuBERT's loss over every frame, no nonzero; the host work
    out of the graphs, models.devices.host_side) are the ceiling."""
    assert 1 <= compiled_graphs("hubert", "hubert_tiny", SECONDS, padding_free) <= most
