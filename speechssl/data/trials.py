"""Speaker-verification trial lists (`enroll_utt test_utt target|nontarget`, one trial a line, as
Kaldi's and SUPERB's ASV `trials`) drawn from a data dir's speakers.

Two ways to pick the pairs, both in C-locale order of utterance id and seeded:
- every pair (enroll < test), optionally a sample of `max_trials` of them, kept in order;
- `per_utterance=N`: for each utterance, up to N partners of its own speaker (target trials) and
  up to N of other speakers (nontarget trials), drawn at random without repeats.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from speechssl.data.datadir import DataDir
from speechssl.data.kaldi import c_sort_key
from speechssl.io import atomic_write_text
from speechssl.outputs import check_output, record_output

TRIALS_COMMAND = "data trials"

Trial = tuple[str, str, str]  # (enroll utterance, test utterance, "target" | "nontarget")


def _draw(rng: np.random.Generator, pool: list[str], count: int, accept=lambda v: True) -> list[str]:
    """Up to `count` distinct accepted items of `pool`, drawn one at a time (rejection sampling)."""
    chosen: list[str] = []
    while len(chosen) < count:
        v = pool[int(rng.integers(len(pool)))]
        if v not in chosen and accept(v):
            chosen.append(v)
    return chosen


def make_trials(
    utt2spk: Mapping[str, str],
    *,
    per_utterance: int | None = None,
    max_trials: int | None = None,
    seed: int = 0,
) -> list[Trial]:
    """Trials over the utterances of `utt2spk` (see the module docstring); `per_utterance`
    None: every pair, or a seeded sample of `max_trials` pairs when there are more."""
    if per_utterance is not None and per_utterance < 1:
        raise ValueError(f"per_utterance must be at least 1, found {per_utterance}")
    if max_trials is not None and max_trials < 1:
        raise ValueError(f"max_trials must be at least 1, found {max_trials}")
    if per_utterance is not None and max_trials is not None:
        raise ValueError("max_trials samples every pair; it does not combine with per_utterance")
    ids = sorted(utt2spk, key=c_sort_key)
    spk = dict(utt2spk)
    if per_utterance is None:
        pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1 :]]
        if max_trials is not None and len(pairs) > max_trials:
            keep = np.random.default_rng([seed, 2**31]).choice(len(pairs), size=max_trials, replace=False)
            pairs = [pairs[i] for i in sorted(keep)]
        return [(a, b, "target" if spk[a] == spk[b] else "nontarget") for a, b in pairs]
    rng = np.random.default_rng(seed)
    by_spk: dict[str, list[str]] = {}
    for u in ids:
        by_spk.setdefault(spk[u], []).append(u)
    trials: list[Trial] = []
    for u in ids:
        same = [v for v in by_spk[spk[u]] if v != u]
        if same:
            trials += [(u, v, "target") for v in _draw(rng, same, min(per_utterance, len(same)))]
        others = len(ids) - len(by_spk[spk[u]])
        if others:
            trials += [
                (u, v, "nontarget")
                for v in _draw(rng, ids, min(per_utterance, others), lambda v, own=spk[u]: spk[v] != own)
            ]
    return trials


def format_trials(trials: list[Trial]) -> str:
    return "".join(f"{a} {b} {kind}\n" for a, b, kind in trials)


def write_trials(
    data_dir: str | Path,
    out: str | Path | None = None,
    *,
    per_utterance: int | None = None,
    max_trials: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> list[Trial]:
    """Write the trials of `data_dir`'s utterances (speakers from its utt2spk) to `out`
    (default `data_dir/trials`) and return them. A list without both target and nontarget
    trials scores no EER and is refused. `out` follows the output-path rule (a trials file this
    command wrote is replaced; inside the data dir nothing else is ever written over)."""
    data_dir = Path(data_dir)
    out = Path(out) if out is not None else data_dir / "trials"
    check_output(out, TRIALS_COMMAND, overwrite=overwrite, inputs=(data_dir,), is_file=True)
    data = DataDir.load(data_dir)
    if data.utt2spk is None:
        raise FileNotFoundError(
            f"{data_dir / 'utt2spk'} does not exist: trials need the speaker of every utterance"
        )
    trials = make_trials(data.utt2spk, per_utterance=per_utterance, max_trials=max_trials, seed=seed)
    kinds = {kind for *_, kind in trials}
    if kinds != {"target", "nontarget"}:
        missing = " and ".join(k for k in ("target", "nontarget") if k not in kinds)
        raise ValueError(
            f"{data_dir}: no {missing} trials ({len(data.utt2spk)} utterances of "
            f"{len(set(data.utt2spk.values()))} speakers); an EER needs both: a speaker with two "
            "utterances and at least two speakers"
        )
    atomic_write_text(out.resolve(), format_trials(trials))  # a symlinked `out` is written at its target
    record_output(out, TRIALS_COMMAND)
    return trials
