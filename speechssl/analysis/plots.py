"""PNG charts of the analyses: RankMe per layer, a CKA heat map, unit quality per layer."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from speechssl.io import atomic_file


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> None:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    with atomic_file(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def plot_layer_lines(
    series: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    path: str | Path,
    *,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
) -> None:
    """One line per series name: (layers, values), markers at each layer."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    styles = ("-", "--", ":", "-.")
    for i, (name, (layers, values)) in enumerate(series.items()):
        ax.plot(list(layers), list(values), styles[i % len(styles)], marker="o", label=name)
    all_layers = sorted({int(x) for layers, _ in series.values() for x in layers})
    ax.set_xticks(all_layers)
    ax.set_xlabel("layer (0: transformer input)")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_heatmap(
    matrix: np.ndarray,
    path: str | Path,
    *,
    row_layers: Sequence[int],
    col_layers: Sequence[int],
    row_name: str,
    col_name: str,
    title: str,
) -> None:
    """CKA matrix as a heat map in [0, 1], each cell labelled with its value."""
    plt = _pyplot()
    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * cols + 1.2, 1.0 + 0.55 * rows))
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis", origin="lower")
    if rows * cols <= 400:
        for i in range(rows):
            for j in range(cols):
                value = matrix[i, j]
                ax.text(j, i, "nan" if np.isnan(value) else f"{value:.2f}", ha="center", va="center",
                        fontsize=7, color="white" if value < 0.6 else "black")  # fmt: skip
    ax.set_xticks(range(cols), [str(x) for x in col_layers])
    ax.set_yticks(range(rows), [str(x) for x in row_layers])
    ax.set_xlabel(f"{col_name} layer")
    ax.set_ylabel(f"{row_name} layer")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="linear CKA")
    fig.tight_layout()
    _save(fig, path)
