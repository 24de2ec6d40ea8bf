"""benchmarks.host: the counts a GPU-less session tracks the host cost of a step by."""

from __future__ import annotations

import pytest

from benchmarks.host import compiled_graphs, top_level_ops
from benchmarks.pretrain import pretrain_step

SECONDS = [0.5, 0.45, 0.3]


@pytest.mark.parametrize(("family", "preset", "reference"),
                         [("hubert", "hubert_base", "torchaudio"), ("wav2vec2", "wav2vec2_base", "transformers")])  # fmt: skip
def test_our_step_issues_fewer_ops_than_the_reference(family, preset, reference):
    """Each top-level op is at least one kernel launch on a GPU, where the step is host-bound."""
    ours, ref = (
        top_level_ops(pretrain_step(c, family, preset, SECONDS, num_layers=2, narrow=True))
        for c in ("ours", reference)
    )
    assert 0 < ours < ref


@pytest.mark.parametrize(("padding_free", "most"), [(False, 9), (True, 20)])
def test_compiled_step_breaks_its_graph_no_more_often_than_measured(padding_free, most):
    """A new host read in the step (an .item(), a .tolist(), a nonzero) splits the compiled step
    once more: the counts of 2026-11-28 are the ceiling."""
    assert 1 <= compiled_graphs("hubert", "hubert_tiny", SECONDS, padding_free) <= most
