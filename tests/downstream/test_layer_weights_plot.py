"""layer_weights.png: every legend lies outside its axes (it covers no bar), inside the figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from speechssl.downstream.report import layer_weights_figure, plot_layer_weights  # noqa: E402


def _rows(num_upstreams: int, tasks=("ks", "asr"), layers: int = 5):
    return [
        {
            "task": task,
            "upstream": f"hubert_iter{u + 1}_long_name",
            "layer_weights": [0.1] * (layers - 1) + [0.6],
        }
        for task in tasks
        for u in range(num_upstreams)
    ]


@pytest.mark.parametrize("num_upstreams", [1, 3])
def test_legend_is_outside_the_axes_and_inside_the_figure(num_upstreams):
    fig = layer_weights_figure(_rows(num_upstreams))
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            legend = ax.get_legend().get_window_extent(renderer)
            axes_box = ax.get_window_extent(renderer)
            assert legend.x0 >= axes_box.x1, (legend, axes_box)  # right of the axes: no bar under it
            assert legend.x1 <= fig.bbox.width and legend.y0 >= 0 and legend.y1 <= fig.bbox.height
            bars = [p.get_window_extent(renderer) for p in ax.patches]
            assert not any(legend.overlaps(b) for b in bars)
    finally:
        plt.close(fig)


def test_no_weights_no_file(tmp_path):
    assert not plot_layer_weights(
        [{"task": "ks", "upstream": "fbank", "layer_weights": None}], tmp_path / "x.png"
    )
    assert not (tmp_path / "x.png").exists()
    assert plot_layer_weights(_rows(2), tmp_path / "w.png") and (tmp_path / "w.png").stat().st_size > 0
