"""Compare upstreams task by task: a markdown + JSON report of results_<split>.json files, a
PNG of the learned layer weights (one panel per task, one bar series per upstream) and a PNG of
the dev curves per task (one line per upstream and learning rate).

results.md holds, in order: the SUPERB-style table (a row per upstream, a column per task, and
the overall score), the per-task table (metric, split, ASV's minDCF), and every learning rate's
dev result (best step, last step, why the run stopped).

Overall score (SUPERB's, Yang et al. 2021 / the SUPERB challenge): each task's value is
normalised to (value - FBANK) / (best - FBANK), FBANK being the row of the `fbank` upstream
(SUPERB's baseline, per-utterance CMVN) and best the best row of this report on that task (the
challenge uses the published state of the art instead); the mean over tasks, x1000. The ratio
needs no sign flip for error rates: numerator and denominator change sign together, so FBANK
scores 0 and the best row 1000 whatever the metric's direction. Not computed: without an
`fbank` row (or with two rows of that source), for a task where no row beats FBANK (left out
of the mean, said in the report), and for a row missing a task of the mean.

Each upstream is named by its experiment record's `name` (`speechssl downstream train --name`,
by default derived from the run, e.g. `hubert_iter2` for `exp/hubert_iter2/checkpoints/last`);
two experiments of one task under one name are an error, one name over two different upstream
sources a warning.

Nothing printed is staler than the experiment: the test score is of the checkpoint EXP/best.json
chooses (else refused: evaluate again), and why each run stopped, its last step and every rate's
dev result come from best.json, which a --resume rewrites without changing the chosen checkpoint.
The report's marker lists the files it wrote: a re-run drops the earlier report's files it does
not write again (a task's curves), keeps the user's, and refuses one of its files that was
changed since (a hand-edited results.md) unless --overwrite.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from speechssl.downstream.runner import BEST_FILE, EXP_FILE, RESULTS_FILE, results_file, sweep_entry
from speechssl.downstream.tasks import TASKS
from speechssl.errors import OutputExistsError
from speechssl.io import atomic_file, atomic_write_json, atomic_write_text
from speechssl.outputs import (
    FILES_RECORD,
    LOCK,
    MARKER,
    check_output,
    forget_outputs,
    is_own_file,
    read_marker,
    record_output,
    write_marker,
)

log = logging.getLogger(__name__)

REPORT_COMMAND = "downstream report"

_PERCENT_METRICS = ("per", "wer", "accuracy", "eer", "der")
BASELINE_SOURCE = "fbank"  # SUPERB's FBANK row: per-utterance CMVN filterbanks
MEAN_POOLED_TASKS = ("ks", "ic", "sid")  # heads that mean-pool a linear projection of the features
SCORE_SCALE = 1000.0


def _higher_is_better(task: str, metric: str) -> bool:
    cls = TASKS.get(task)
    if cls is not None and cls.metric == metric:
        return bool(cls.higher_is_better)
    return metric not in ("per", "wer", "cer", "eer", "min_dcf", "der", "slot_value_cer")


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
            raise FileNotFoundError(_missing_results(Path(exp), split))
        row = {**json.loads(path.read_text()), "exp": str(exp)}
        _check_current(Path(exp), path, row, split)
        name = _recorded_name(Path(exp))
        if name:  # the record names the upstream, also for results written before a rename
            row["upstream"] = name
        rows.append(row)
    return rows


# what `train --resume` may change while it keeps the chosen checkpoint (and so the test score)
_CONVERGENCE = ("stopped", "last_step", "patience", "dev_curve")


def _check_current(exp: Path, path: Path, row: dict[str, Any], split: str) -> None:
    """Bring `row` up to date with EXP/best.json. Results of another checkpoint than the one it
    chooses now (a --resume trained on after they were written), or of one when nothing is chosen
    (best.json gone) or while a training holds (or a killed one left) EXP's lock, are stale:
    refused, naming what to run. Results of the chosen checkpoint take its run's convergence and
    every rate's dev result from best.json, which a --resume rewrites without touching the test
    score."""
    best_path = exp / BEST_FILE
    if "checkpoint" not in row:
        return  # nothing was chosen (qbe) or an older record
    command = read_marker(exp) or "downstream train"
    if not best_path.is_file():
        raise FileNotFoundError(
            f"{path} scored step {row.get('step')} but {best_path} does not exist: training of {exp} did "
            f"not finish: finish it with `speechssl {command} ... --resume`, then `{_evaluate(exp, split)}`"
        )
    if (exp / LOCK).exists():  # best.json is of the training before: the one under way may change it
        raise ValueError(
            f"{exp} is being trained, or its last training was killed ({exp / LOCK} exists), so {path} "
            f"may be stale: let it finish (or finish it with `speechssl {command} ... --resume`), then "
            f"`{_evaluate(exp, split)}`"
        )
    best = json.loads(best_path.read_text())
    if (row.get("step"), row.get("lr")) != (best.get("step"), best.get("lr")):
        raise ValueError(
            f"{path} scored step {row.get('step')} (lr {row.get('lr')}) but {best_path} now chooses step "
            f"{best.get('step')} (lr {best.get('lr')}): run `{_evaluate(exp, split)}` again"
        )
    current = {key: best[key] for key in _CONVERGENCE if key in best}
    if "runs" in best:
        current["sweep"] = [sweep_entry(run, row["metric"]) for run in best["runs"]]
    changed = sorted(key for key, value in current.items() if row.get(key) != value)
    if changed:  # results_<split>.json is older than the training that best.json records
        log.info("%s: %s from %s (trained on since %s)", exp, ", ".join(changed), BEST_FILE, path.name)
    row.update(current)


def _evaluate(exp: Path, split: str) -> str:
    """The command that scores EXP's chosen checkpoint on `split`."""
    command = read_marker(exp) or "downstream train"
    return f"speechssl {command.split()[0]} evaluate --out {exp} --split {split}"


def _missing_results(exp: Path, split: str) -> str:
    """What to run to get EXP's results of `split`: the evaluate of the command that trained it,
    or the training itself when it did not finish."""
    command = read_marker(exp) or "downstream train"
    if not (exp / EXP_FILE).is_file():
        return f"{exp} is not a trained experiment (no {EXP_FILE}): train it with `speechssl {command}`"
    evaluate = _evaluate(exp, split)
    if not (exp / BEST_FILE).is_file():
        return (
            f"{exp / results_file(split)} does not exist and training of {exp} did not finish "
            f"({BEST_FILE} missing): finish it with `speechssl {command} ... --resume`, then `{evaluate}`"
        )
    return f"{exp / results_file(split)} does not exist: run `{evaluate}` first"


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


def overall_score(rows: list[dict[str, Any]], table: dict[str, Any]) -> dict[str, Any]:
    """The SUPERB-style overall score of every upstream (see the module docstring):
    {"baseline", "tasks" (those averaged), "excluded" {task: why}, "scores" {upstream: score or
    None}, "missing" {upstream: [tasks]}, "reason" (why nothing was computed, else None)}."""
    result: dict[str, Any] = {"baseline": None, "tasks": [], "excluded": {}, "scores": {}, "missing": {}}
    baselines = sorted({r["upstream"] for r in rows if (_source(r) or r["upstream"]) == BASELINE_SOURCE})
    result["scores"] = {u: None for u in table["upstreams"]}
    if not baselines:
        result["reason"] = (
            "no FBANK row (an experiment of upstream `fbank`): the overall score is normalised "
            "between FBANK and the best row, so it is not computed"
        )
        return result
    if len(baselines) > 1:
        result["reason"] = (
            f"two rows come from upstream `fbank` ({', '.join(baselines)}): the FBANK baseline is "
            "ambiguous, so the overall score is not computed"
        )
        return result
    base = result["baseline"] = baselines[0]
    normalised: dict[str, dict[str, float]] = {}
    for task, entry in table["tasks"].items():
        values = entry["values"]
        if base not in values:
            result["excluded"][task] = "no FBANK result"
            continue
        higher = _higher_is_better(task, entry["metric"])
        best = max(values.values()) if higher else min(values.values())
        if best == values[base]:
            result["excluded"][task] = "no row beats FBANK"
            continue
        result["tasks"].append(task)
        normalised[task] = {u: (v - values[base]) / (best - values[base]) for u, v in values.items()}
    for upstream in table["upstreams"]:
        missing = [t for t in result["tasks"] if upstream not in normalised[t]]
        if missing:
            result["missing"][upstream] = missing
        elif result["tasks"]:
            parts = [normalised[t][upstream] for t in result["tasks"]]
            result["scores"][upstream] = SCORE_SCALE * sum(parts) / len(parts)
    result["reason"] = None if result["tasks"] else "no task where a row beats FBANK"
    return result


def superb_table(table: dict[str, Any], overall: dict[str, Any]) -> str:
    """A row per upstream, a column per task (arrows: which way is better), the overall score."""
    tasks = list(table["tasks"])
    header = ["upstream"]
    for task in tasks:
        metric = table["tasks"][task]["metric"]
        unit = " %" if metric in _PERCENT_METRICS else ""
        header.append(f"{task} {metric}{unit} {'↑' if _higher_is_better(task, metric) else '↓'}")
    header.append("SUPERB score ↑")
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(tasks) + 1)]
    for upstream in table["upstreams"]:
        cells = [upstream]
        for task in tasks:
            entry = table["tasks"][task]
            value = entry["values"].get(upstream)
            cells.append("-" if value is None else _format(entry["metric"], value))
        score = overall["scores"].get(upstream)
        cells.append("-" if score is None else f"{score:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def overall_notes(rows: list[dict[str, Any]], table: dict[str, Any], overall: dict[str, Any]) -> str:
    """What the overall score is, what it left out, and what the FBANK row means."""
    notes = []
    if overall["reason"] and not overall["tasks"]:
        notes.append(f"Overall score: not computed: {overall['reason']}.")
    else:
        notes.append(
            f"SUPERB score: each task's value normalised to (value - FBANK) / (best - FBANK), FBANK "
            f"being the `{overall['baseline']}` row and best the best row of this table on that task "
            f"(not the published state of the art), averaged over {', '.join(overall['tasks'])} and "
            "scaled to 1000 (FBANK 0, the best row on every task 1000); error rates need no inversion, "
            "the ratio's numerator and denominator change sign together."
        )
    for task, why in overall["excluded"].items():
        notes.append(f"{task} is left out of the overall score: {why}.")
    for upstream, tasks in overall["missing"].items():
        notes.append(f"{upstream} has no overall score: no result for {', '.join(tasks)}.")
    pooled = [t for t in MEAN_POOLED_TASKS if t in table["tasks"]]
    if overall["baseline"] is not None and pooled:
        notes.append(
            f"The FBANK row ({overall['baseline']}) uses per-utterance CMVN, as SUPERB's baseline: "
            "every utterance's features have zero mean per channel, so a linear projection followed "
            "by mean pooling gives the same pooled vector for every utterance, and FBANK is at chance "
            f"on the mean-pooled tasks ({', '.join(pooled)}) by construction. Those cells are the "
            "chance floor, not a measure of filterbank features."
        )
    unconverged = sorted({r["upstream"] + "/" + r["task"] for r in rows if r.get("stopped") == "max_steps"})
    if unconverged:
        notes.append(
            "Stopped at max_steps rather than by patience (the dev metric may still have been "
            f"improving): {', '.join(unconverged)}."
        )
    return "".join(f"- {note}\n" for note in notes)


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """Every learning rate's dev result per task and upstream (chosen rate marked *)."""
    lines = [
        "| task | upstream | lr | dev metric | best step | last step | stopped |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    order = {name: i for i, name in enumerate(TASKS)}
    for r in sorted(rows, key=lambda r: order.get(r["task"], len(order))):
        if r.get("lr") is None and not r.get("sweep"):
            continue  # nothing was trained (qbe scores every layer of the upstream as it is)
        sweep = r.get("sweep") or [
            {"lr": r.get("lr"), "dev": None, "step": r.get("step"), "last_step": r.get("last_step"),
             "stopped": r.get("stopped")}
        ]  # fmt: skip
        for run in sweep:
            mark = "*" if run.get("lr") == r.get("lr") else ""
            dev = "-" if run.get("dev") is None else _format(r["metric"], run["dev"])
            cells = [
                r["task"],
                r["upstream"],
                "-" if run.get("lr") is None else f"{run['lr']:g}{mark}",
                f"{r['metric']} {dev}",
                str(run.get("step", "-")),
                str(run.get("last_step") or "-"),
                run.get("stopped") or "-",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report_markdown(rows: list[dict[str, Any]], table: dict[str, Any], overall: dict[str, Any]) -> str:
    split = next(iter(table["tasks"].values()))["split"] if table["tasks"] else "test"
    return (
        f"# Downstream results ({split})\n\n"
        + superb_table(table, overall)
        + "\n"
        + overall_notes(rows, table, overall)
        + "\n## Per task\n\n"
        + markdown_table(table)
        + "\n## Learning rates (dev; * the chosen rate)\n\n"
        + sweep_table(rows)
    )


def _rows_with_curves(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """task -> its rows that hold dev curves (older results hold none)."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if any(run.get("dev_curve") for run in r.get("sweep") or []):
            by_task.setdefault(r["task"], []).append(r)
    return by_task


def _curves_name(task: str) -> str:
    return f"dev_curves_{task}.png"


def plot_dev_curves(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """dev_curves_<task>.png: the dev metric over updates, a line per upstream (its chosen rate
    solid, the other rates of its sweep dashed). Rows without curves (older results) are skipped."""
    by_task = _rows_with_curves(rows)
    if not by_task:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for task, group in by_task.items():
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        for k, r in enumerate(group):
            color = f"C{k % 10}"
            for run in r["sweep"]:
                curve = run.get("dev_curve") or []
                if not curve:
                    continue
                chosen = run.get("lr") == r.get("lr")
                ax.plot(
                    [p[0] for p in curve],
                    [p[1] * (100 if r["metric"] in _PERCENT_METRICS else 1) for p in curve],
                    color=color,
                    linestyle="-" if chosen else "--",
                    linewidth=1.8 if chosen else 0.9,
                    marker="o" if chosen else None,
                    markersize=3,
                    label=f"{r['upstream']} (lr {run.get('lr'):g})",
                )
        metric = group[0]["metric"]
        ax.set_title(f"{task}: dev {metric} over updates")
        ax.set_xlabel("update")
        ax.set_ylabel(f"{metric}{' (%)' if metric in _PERCENT_METRICS else ''}")
        ax.legend(fontsize="x-small")
        fig.tight_layout()
        path = out_dir / _curves_name(task)
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


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


def _rows_with_weights(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose runs learned layer weights (more than one hidden state)."""
    return [r for r in rows if r.get("layer_weights") and len(r["layer_weights"]) > 1]


def layer_weights_figure(rows: list[dict[str, Any]]):
    """One bar chart of softmax layer weights per task, a group of bars per hidden state and a
    bar per upstream, the legend outside the axes (right of them) so that it covers no bar;
    None if no run learned any."""
    with_weights = _rows_with_weights(rows)
    if not with_weights:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in with_weights))
    fig, axes = plt.subplots(len(tasks), 1, figsize=(8, 2.4 * len(tasks)), squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        group = [r for r in with_weights if r["task"] == task]
        width = 0.8 / len(group)
        for k, r in enumerate(group):
            weights = r["layer_weights"]
            offset = (k - (len(group) - 1) / 2) * width  # the group centred on its hidden state
            ax.bar([i + offset for i in range(len(weights))], weights, width=width, label=r["upstream"])
        ax.set_xticks(range(max(len(r["layer_weights"]) for r in group)))
        ax.set_title(f"{task}: learned layer weights")
        ax.set_xlabel("hidden state (0 = input of layer 1)")
        ax.set_ylabel("weight")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()  # makes room for the legends right of the axes
    return fig


def plot_layer_weights(rows: list[dict[str, Any]], path: Path) -> bool:
    """`layer_weights_figure` as a PNG; False (no file) if no run learned any layer weights."""
    fig = layer_weights_figure(rows)
    if fig is None:
        return False
    import matplotlib.pyplot as plt

    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return True


def write_report(
    exp_dirs: Sequence[str | Path], out_dir: str | Path, *, split: str = "test", overwrite: bool = False
) -> dict[str, Any]:
    """Write results.md, results.json, layer_weights.png (when any run has layer weights) and
    dev_curves_<task>.png (when the results hold dev curves) of the `split` scores under out_dir;
    returns the paths written ("curves": the list of curve PNGs). out_dir follows the
    output-path rule (new, empty, an earlier report, or --overwrite; never an experiment); its
    marker lists the files the report wrote, so a re-run replaces them and drops those it does
    not write again (a task's curves) but refuses one changed since (a hand-edited results.md)
    unless --overwrite, and keeps the user's files. Written in place, each file atomically (not
    swapped in whole like `output_directory`: `--out .` works)."""
    out_dir = Path(out_dir)
    rows = load_results(exp_dirs, split)
    check_output(out_dir, REPORT_COMMAND, overwrite=overwrite, inputs=tuple(exp_dirs))
    earlier = _earlier_files(out_dir)
    table = results_table(rows)  # a name collision is refused before anything is written
    overall = overall_score(rows, table)
    names = {"markdown": "results.md", "json": "results.json"}
    if _rows_with_weights(rows):
        names["png"] = "layer_weights.png"
    curves = [_curves_name(task) for task in _rows_with_curves(rows)]
    files = [*names.values(), *curves]
    if not overwrite and earlier is not None:
        _refuse_changed_files(out_dir, earlier, files)
    out_dir.mkdir(parents=True, exist_ok=True)
    # listed before anything is written: a killed run's files are the next run's to replace
    write_marker(out_dir, REPORT_COMMAND, files=sorted({*(earlier or ()), *files}))
    forget_outputs(out_dir, files)  # checked above; noted again as each is written
    atomic_write_text(out_dir / names["markdown"], report_markdown(rows, table, overall))
    record_output(out_dir / names["markdown"], REPORT_COMMAND)  # a re-run may replace it while unchanged
    atomic_write_json(out_dir / names["json"], {**table, "overall": overall, "experiments": rows})
    record_output(out_dir / names["json"], REPORT_COMMAND)
    if "png" in names:
        plot_layer_weights(rows, out_dir / names["png"])
        record_output(out_dir / names["png"], REPORT_COMMAND)
    for path in plot_dev_curves(rows, out_dir):
        record_output(path, REPORT_COMMAND)
    for name in sorted(set(earlier or ()) - set(files)):  # ours and unchanged since, even with --overwrite
        path = out_dir / name
        if path.is_file() and not path.is_symlink() and is_own_file(path, REPORT_COMMAND):
            path.unlink()
    write_marker(out_dir, REPORT_COMMAND, files=sorted(files))
    written: dict[str, Any] = {key: out_dir / name for key, name in names.items()}
    if curves:
        written["curves"] = [out_dir / name for name in curves]
    return written


def _earlier_files(out_dir: Path) -> list[str] | None:
    """The files an earlier report in out_dir wrote, as its marker lists them (plain names only);
    None when out_dir is not a report that lists its files (new, another command's, an older
    speechssl's report: the output rule alone applies)."""
    if read_marker(out_dir) != REPORT_COMMAND:
        return None
    listed = _read_json(out_dir / MARKER).get("files")
    if not isinstance(listed, list):
        return None
    plain = [name for name in listed if isinstance(name, str)]
    return [n for n in plain if n == Path(n).name and n not in ("", "..", MARKER, FILES_RECORD)]


def _refuse_changed_files(out_dir: Path, earlier: list[str], files: list[str]) -> None:
    """A re-run into a report dir neither replaces nor drops a file of the earlier report that was
    changed since it was written (its size or mtime differ from `record_output`'s note: a
    hand-edited results.md), nor replaces a file the earlier report did not write (the user's)."""
    record = _read_json(out_dir / FILES_RECORD)
    changed, foreign = [], []
    for name in sorted({*earlier, *files}):
        path = out_dir / name
        if not (path.exists() or path.is_symlink()):
            continue
        if name not in earlier:
            foreign.append(name)  # the user's, where this report writes
            continue
        entry = record.get(name)
        if entry is None:
            continue  # listed but never noted: written by a run killed before it noted it
        stat = path.lstat()
        if not (
            isinstance(entry, dict)
            and entry.get("command") == REPORT_COMMAND
            and path.is_file()
            and (entry.get("bytes"), entry.get("mtime_ns")) == (stat.st_size, stat.st_mtime_ns)
        ):
            changed.append(name)
    if not changed and not foreign:
        return
    them = "it" if len(changed) + len(foreign) == 1 else "them"
    why = []
    if changed:
        why.append(
            f"{', '.join(changed)} changed since `speechssl {REPORT_COMMAND}` wrote "
            f"{'it' if len(changed) == 1 else 'them'}"
        )
    if foreign:
        why.append(f"{', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not the report's own")
    raise OutputExistsError(
        f"--out {out_dir}: {'; '.join(why)}; move {them} away, or pass --overwrite to replace {them}"
    )


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object, or {} when the file is missing or holds something else."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}
