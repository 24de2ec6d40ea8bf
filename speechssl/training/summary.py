"""The closing summary of a pretraining recipe: unit quality and training runs in one table.

Reads what the stages wrote (`EXP/train_summary.json` of each run, the JSON of
`speechssl units score`) so the summary never re-computes or guesses a number.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from speechssl.io import atomic_write_text
from speechssl.outputs import check_output, record_output

COMMAND = "summarize"


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def _read_json(path: Path, what: str) -> dict:
    """The JSON object in `path`; anything else is one line naming the file (a wrong file given)."""
    try:
        content = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not {what} (not JSON: {err})") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: not {what} (a JSON {type(content).__name__}, not an object)")
    return content


def summarize_runs(runs: Sequence[str | Path], unit_scores: Sequence[str | Path] = ()) -> str:
    """Markdown: unit quality per label set, then steps, wall time, throughput and paths per run."""
    lines = ["# Pretraining summary", ""]
    unit_rows = []
    for path in unit_scores:
        scores = _read_json(Path(path), "the JSON of `speechssl units score`")
        if not isinstance(scores.get("results"), list):
            raise ValueError(f"{path}: not the JSON of `speechssl units score` (no 'results' list)")
        for item in scores["results"]:
            unit_rows.append([item["name"], f"{item['pnmi']:.3f}", f"{item['phone_purity']:.3f}",
                              f"{item['cluster_purity']:.3f}", str(item["num_units"])])  # fmt: skip
    if unit_rows:
        lines += ["## Unit quality (HuBERT paper IV.C, on the validation set)", ""]
        lines += _markdown_table(["labels", "PNMI", "phone purity", "cluster purity", "units"], unit_rows) + [
            ""
        ]
    run_rows = []
    for run in runs:
        path = Path(run) / "train_summary.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: has `speechssl pretrain --out {run}` finished?")
        s = _read_json(path, "the train_summary.json of `speechssl pretrain`")
        best = f"{s['best_valid_loss']:.3f}" if s.get("best_valid_loss") is not None else "-"
        run_rows.append([str(run), str(s["steps"]), f"{s['wall_seconds'] / 60:.1f}",
                         f"{s['audio_seconds_per_second']:.0f}", best, str(s["last_checkpoint"]),
                         str(s["tensorboard"])])  # fmt: skip
    lines += ["## Training runs", ""]
    lines += _markdown_table(
        ["run", "updates", "wall (min)", "audio-s/s", "best valid loss", "last checkpoint", "tensorboard"],
        run_rows,
    )
    return "\n".join(lines) + "\n"


def write_summary(
    out: str | Path,
    runs: Sequence[str | Path],
    unit_scores: Sequence[str | Path] = (),
    *,
    overwrite: bool = False,
) -> str:
    """Write the summary to `out` (the output-path rule: a re-run replaces its own file)."""
    check_output(out, COMMAND, overwrite=overwrite, inputs=(*runs, *unit_scores), is_file=True)
    text = summarize_runs(runs, unit_scores)
    atomic_write_text(out, text)
    record_output(out, COMMAND)
    return text
