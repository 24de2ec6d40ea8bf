"""`units score --plot`: the x tick labels (the label sets' default names, often long) never overlap
each other or leave the figure, however many there are (checked with Agg's text extents)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from speechssl.units.metrics import UnitQuality  # noqa: E402
from speechssl.units.report import default_names, plot_quality, quality_figure, tick_labels_overlap  # noqa: E402

RECIPE_NAMES = [  # what the ssl recipe's label dirs are called
    "units_mfcc_k50", "units_hubert_iter1_layer2_k100", "units_hubert_iter2_layer3_k500",
    "units_wavlm_iter1_layer4_k100",
]  # fmt: skip


def _results(names):
    return {
        name: UnitQuality(pnmi=0.27 + 0.01 * i, phone_purity=0.26, cluster_purity=0.24, num_frames=100,
                          num_utts=3, num_phones=40, num_units=50)
        for i, name in enumerate(names)
    }  # fmt: skip


def _label_boxes(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    return sorted(
        (t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels() if t.get_text()),
        key=lambda b: b.x0,
    )


@pytest.mark.parametrize("count", [1, 2, 3, 4, 12])
def test_default_names_never_overlap_and_stay_in_the_figure(count):
    names = default_names([f"data/dev/{RECIPE_NAMES[i % 4]}_{i}/labels" for i in range(count)])
    fig = quality_figure(_results(names))
    try:
        boxes = _label_boxes(fig)
        assert len(boxes) == count
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), [(b.x0, b.x1) for b in boxes]
        assert all(b.x0 >= 0 and b.x1 <= fig.bbox.width and b.y0 >= 0 for b in boxes)
        assert not tick_labels_overlap(fig, fig.axes[0])
    finally:
        plt.close(fig)


def test_overlap_check_sees_labels_that_collide():
    """The check itself: long names on a narrow axis collide."""
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_xticks([0, 1], RECIPE_NAMES[1:3])
    fig.canvas.draw()
    try:
        assert tick_labels_overlap(fig, ax)
    finally:
        plt.close(fig)


def test_plot_writes_a_png(tmp_path):
    plot_quality(_results(RECIPE_NAMES[:2]), tmp_path / "q.png")
    assert (tmp_path / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
