"""Compare upstreams task by task: a markdown + JSON table of results.json files and a
PNG of the learned layer weights (one panel per task, one bar series per upstream).

Each upstream is named by its experiment record's `name` (`speechssl downstream train --name`,
by default derived from the run, e.g. `hubert_iter2` for `exp/hubert_iter2/checkpoints/last`);
two experiments of one task under one name are an error, one name over two different upstream
sources a warning.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from speechssl.downstream.runner import EXP_FILE, RESULTS_FILE, results_file
from speechssl.downstream.tasks import TASKS
from speechssl.io import atomic_file, atomic_write_text
from speechssl.outputs import check_output, write_marker

log = logging.getLogger(__name__)

REPORT_COMMAND = "downstream report"

_PERCENT_METRICS = ("per", "wer", "accuracy", "eer")


def _results_path(exp: Path, split: str) -> Path | None:
    """EXP/results_<split>.json, else (older experiments) results.json when it holds that split."""
    path = exp / results_file(split)
    if path.is_file():
        return path
    legacy = exp / RESULTS_FILE
    if legacy.is_file() and json.loads(legacy.read_text()).get("split") == split:
        return legacy
    return None


def load_results(exp_dirs: Sequence[str | Path], split: str = "test") -> list[dict[str, Any]]:
    rows = []
    for exp in exp_dirs:
        path = _results_path(Path(exp), split)
        if path is None:
            raise FileNotFoundError(
                f"{Path(exp) / results_file(split)} does not exist: run `speechssl downstream "
                f"evaluate --out {exp} --split {split}` first"
            )
        row = {**json.loads(path.read_text()), "exp": str(exp)}
        name = _recorded_name(Path(exp))
        if name:  # the record names the upstream, also for results written before a rename
            row["upstream"] = name
        rows.append(row)
    return rows


def _recorded_name(exp: Path) -> str | None:
    """The `name` of EXP/downstream.yaml (None for records of a speechssl without names)."""
    try:
        record = yaml.safe_load((exp / EXP_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    name = record.get("name") if isinstance(record, dict) else None
    return str(name) if name else None


def _source(row: dict[str, Any]) -> str | None:
    source = row.get("upstream_source")
    return os.path.normpath(source) if isinstance(source, str) else None


def _format(metric: str, value: float) -> str:
    return f"{100 * value:.2f}" if metric in _PERCENT_METRICS else f"{value:.4f}"


def results_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """{"upstreams": [...], "tasks": {task: {"metric", "split", "values": {upstream: value}}}}."""
    upstreams = list(dict.fromkeys(r["upstream"] for r in rows))
    order = {name: i for i, name in enumerate(TASKS)}
    tasks: dict[str, Any] = {}
    seen: dict[tuple[str, str], dict[str, Any]] = {}  # (task, name) -> its experiment
    sources: dict[str, dict[str | None, dict[str, Any]]] = {}  # name -> source -> its first experiment
    for r in sorted(rows, key=lambda r: order.get(r["task"], len(order))):
        entry = tasks.setdefault(
            r["task"], {"metric": r["metric"], "split": r["split"], "values": {}, "extra": {}}
        )
        other = seen.setdefault((r["task"], r["upstream"]), r)
        if other is not r:
            raise ValueError(
                f"two experiments give task {r['task']} for upstream {r['upstream']} "
                f"({other['exp']} from {other.get('upstream_source')} "
                f"and {r['exp']} from {r.get('upstream_source')}); pass one per task "
                "and upstream, or name the upstreams apart "
                "(`speechssl downstream train --name`, or the `name` of "
                f"EXP/{EXP_FILE})"
            )
        first = sources.setdefault(r["upstream"], {}).setdefault(_source(r), r)
        if first is r and len(sources[r["upstream"]]) > 1:
            first = next(iter(sources[r["upstream"]].values()))
            log.warning(
                "upstream name %s stands for two sources: %s (%s) and %s (%s); name them apart with "
                "`speechssl downstream train --name`",
                r["upstream"],
                first.get("upstream_source"),
                first["exp"],
                r.get("upstream_source"),
                r["exp"],
            )
        entry["values"][r["upstream"]] = r["value"]
        if r["task"] == "asv" and "min_dcf" in r.get("metrics", {}):
            entry["extra"].setdefault("min_dcf", {})[r["upstream"]] = r["metrics"]["min_dcf"]
    return {"upstreams": upstreams, "tasks": tasks}


def markdown_table(table: dict[str, Any]) -> str:
    """Tasks as rows, upstreams as columns; error rates and accuracies in %."""
    ups = table["upstreams"]
    lines = ["| task | metric | " + " | ".join(ups) + " |", "|---|---|" + "---:|" * len(ups)]
    for task, entry in table["tasks"].items():
        metric = entry["metric"]
        unit = " (%)" if metric in _PERCENT_METRICS else ""
        cells = [_format(metric, entry["values"][u]) if u in entry["values"] else "-" for u in ups]
        lines.append(f"| {task} | {metric}{unit} ({entry['split']}) | " + " | ".join(cells) + " |")
        for name, values in entry["extra"].items():
            cells = [f"{values[u]:.4f}" if u in values else "-" for u in ups]
            lines.append(f"| {task} | {name} ({entry['split']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_layer_weights(rows: list[dict[str, Any]], path: Path) -> bool:
    """Bar charts of softmax layer weights per task; False (no file) if no run learned any."""
    with_weights = [r for r in rows if r.get("layer_weights") and len(r["layer_weights"]) > 1]
    if not with_weights:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in with_weights))
    fig, axes = plt.subplots(len(tasks), 1, figsize=(7, 2.4 * len(tasks)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        group = [r for r in with_weights if r["task"] == task]
        width = 0.8 / len(group)
        for k, r in enumerate(group):
            weights = r["layer_weights"]
            ax.bar([i + k * width for i in range(len(weights))], weights, width=width, label=r["upstream"])
        ax.set_title(f"{task}: learned layer weights")
        ax.set_xlabel("hidden state (0 = input of layer 1)")
        ax.set_ylabel("weight")
        ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return True


def write_report(
    exp_dirs: Sequence[str | Path], out_dir: str | Path, *, split: str = "test", overwrite: bool = False
) -> dict[str, Path]:
    """Write results.md, results.json and layer_weights.png (when any run has layer weights)
    of the `split` scores under out_dir; returns the paths written. out_dir follows the
    output-path rule (new, empty, an earlier report, or --overwrite; never an experiment)."""
    out_dir = Path(out_dir)
    rows = load_results(exp_dirs, split)
    check_output(out_dir, REPORT_COMMAND, overwrite=overwrite, inputs=tuple(exp_dirs))
    table = results_table(rows)  # a name collision is refused before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    write_marker(out_dir, REPORT_COMMAND)
    written = {"markdown": out_dir / "results.md", "json": out_dir / "results.json"}
    atomic_write_text(written["markdown"], markdown_table(table))
    atomic_write_text(written["json"], json.dumps({**table, "experiments": rows}, indent=2) + "\n")
    png = out_dir / "layer_weights.png"
    if plot_layer_weights(rows, png):
        written["png"] = png
    return written
