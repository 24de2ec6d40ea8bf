"""Score label files against a phone CTM; print a table, write JSON and a PNG chart.

Several label sets (k-means on different layers, HuBERT iterations, cluster
counts) are scored against the same alignments so they can be compared side by
side: `speechssl units score --labels a/labels b/labels --alignments phone_ctm`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from speechssl.io import atomic_file, atomic_write_json
from speechssl.outputs import record_output
from speechssl.units.labels import read_labels
from speechssl.units.metrics import UnitQuality, unit_quality

METRICS = (("pnmi", "PNMI"), ("phone_purity", "phone purity"), ("cluster_purity", "cluster purity"))
COMMAND = "units score"


def default_names(paths: Sequence[str | Path]) -> list[str]:
    """A short name per labels file: its directory name for `<dir>/labels`, else the file name;
    made unique with the parent directories when two collide."""
    paths = [Path(p) for p in paths]
    depth = 1
    while True:
        names = ["/".join((p.parent if p.name == "labels" else p).parts[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth > max(len(p.parts) for p in paths):
            return names
        depth += 1


def score_label_files(
    label_paths: Sequence[str | Path],
    ctm_path: str | Path,
    *,
    frame_shift: float = 0.02,
    names: Sequence[str] | None = None,
    tolerance: int = 1,
) -> dict[str, UnitQuality]:
    """{name: UnitQuality} for each labels file against the phones of `ctm_path` at `frame_shift` s."""
    from speechssl.data.alignments import ctm_to_frame_labels, read_phone_ctm

    names = list(names) if names else default_names(label_paths)
    if len(names) != len(label_paths):
        raise ValueError(f"{len(names)} names given for {len(label_paths)} label files")
    if len(set(names)) != len(names):
        raise ValueError(f"names must be unique, found {names}")
    phones = ctm_to_frame_labels(read_phone_ctm(ctm_path), frame_shift)
    results = {}
    for name, path in zip(names, label_paths):
        try:
            results[name] = unit_quality(phones, read_labels(path), tolerance=tolerance)
        except ValueError as err:
            raise ValueError(f"{path} vs {ctm_path} at {frame_shift} s per frame: {err}") from None
    return results


def format_table(results: Mapping[str, UnitQuality]) -> str:
    """A plain-text table, one row per label set."""
    header = ["labels", "PNMI", "phone pur.", "cluster pur.", "units", "phones", "frames", "utts"]
    rows = [
        [name, f"{q.pnmi:.4f}", f"{q.phone_purity:.4f}", f"{q.cluster_purity:.4f}",
         str(q.num_units), str(q.num_phones), str(q.num_frames), str(q.num_utts)]
        for name, q in results.items()
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)]) + "\n"


def write_json(
    results: Mapping[str, UnitQuality], path: str | Path, *, extra: Mapping[str, object] | None = None
) -> None:
    """{..extra, "results": [{"name", "pnmi", ...}]} written atomically."""
    doc = {**(extra or {}), "results": [{"name": n, **q.to_dict()} for n, q in results.items()]}
    atomic_write_json(path, doc)
    record_output(path, COMMAND)  # a re-run may replace it


def quality_figure(results: Mapping[str, UnitQuality], *, title: str = "Unit quality"):
    """The figure of `plot_quality`: grouped bars per label set, the figure as wide as the names
    need; names that still do not fit side by side are set vertically (`fit_tick_labels`)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on cluster nodes
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    x = np.arange(len(names))
    width = 0.8 / len(METRICS)
    slot = max(1.2, 0.085 * max(len(n) for n in names))  # inches per label set: its name fits under it
    fig, ax = plt.subplots(figsize=(min(max(4.0, slot * len(names) + 1.5), 12.0), 3.5))
    for i, (key, label) in enumerate(METRICS):
        values = [getattr(results[n], key) for n in names]
        bars = ax.bar(x + (i - (len(METRICS) - 1) / 2) * width, values, width, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.25)  # room for the legend above the bars
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper center", ncols=3, frameon=False)
    fit_tick_labels(fig, ax)
    return fig


def tick_labels_overlap(fig, ax, pad: float = 4.0) -> bool:
    """Whether two x tick labels overlap (boxes closer than `pad` pixels) or one leaves the figure."""
    renderer = fig.canvas.get_renderer()
    boxes = sorted(
        (t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()), key=lambda b: b.x0
    )
    width = fig.bbox.width
    if any(b.x0 < 0 or b.x1 > width for b in boxes):
        return True
    return any(a.x1 + pad > b.x0 and a.y1 > b.y0 and b.y1 > a.y0 for a, b in zip(boxes, boxes[1:]))


def fit_tick_labels(fig, ax) -> None:
    """Lay the figure out; if the x tick labels overlap side by side, set them vertically."""
    fig.tight_layout()
    if tick_labels_overlap(fig, ax):
        for label in ax.get_xticklabels():
            label.set_rotation(90)
            label.set_horizontalalignment("center")
        fig.tight_layout()


def plot_quality(
    results: Mapping[str, UnitQuality], path: str | Path, *, title: str = "Unit quality"
) -> None:
    """Grouped bars (PNMI, phone purity, cluster purity) per label set, as a PNG (atomic)."""
    import matplotlib.pyplot as plt

    fig = quality_figure(results, title=title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    with atomic_file(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    record_output(path, COMMAND)
