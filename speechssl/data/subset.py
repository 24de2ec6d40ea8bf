"""`speechssl data subset`: some of a data dir's utterances, as Kaldi's utils/subset_data_dir.sh.

One way to choose, as in Kaldi (utterances in C-locale order of id):
- `first` / `last` N utterances; `shortest` N (by utt2dur, else segments; ties by id);
- `random` N utterances, drawn with `seed` (Kaldi's default spreads them evenly instead);
- `speakers` N whole speakers drawn with `seed` (Kaldi's --speakers N draws speakers until it has
  N *utterances*; here N counts speakers, and `per_spk` caps utterances per speaker);
- `per_spk` N utterances of every speaker, spread evenly over its utterances (Kaldi's --per-spk);
- `spk_list` / `utt_list`: the speakers / utterances named by the first field of each line of a
  file. As Kaldi's filter_scp.pl, listed ids the dir does not have are skipped (the result counts
  them); a list that selects nothing is an error.
Every file is then carried as `speechssl.data.derive` says.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from speechssl.data.derive import DerivedDir, derive_data_dir, read_source
from speechssl.data.kaldi import c_sort_key, check_regular_file
from speechssl.data.validate import ScannedDir
from speechssl.outputs import check_output

SUBSET = "data subset"  # the command named in the output marker
_COUNTS = ("first", "last", "random", "shortest", "speakers", "per_spk")


@dataclass(frozen=True, kw_only=True)
class SubsetSelection:
    """Which utterances `subset_data_dir` keeps: exactly one of the fields other than `seed`."""

    first: int | None = None
    last: int | None = None
    random: int | None = None
    shortest: int | None = None
    speakers: int | None = None
    per_spk: int | None = None
    spk_list: Path | None = None
    utt_list: Path | None = None
    seed: int = 0  # of `random` and `speakers`

    def __post_init__(self) -> None:
        chosen = [f.name for f in fields(self) if f.name != "seed" and getattr(self, f.name) is not None]
        if len(chosen) != 1:
            names = ", ".join(f.name for f in fields(self) if f.name != "seed")
            found = ", ".join(chosen) if chosen else "none"
            raise ValueError(f"choose exactly one way to select utterances ({names}); found {found}")
        for name in _COUNTS:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, found {value}")

    @property
    def way(self) -> str:
        return next(f.name for f in fields(self) if f.name != "seed" and getattr(self, f.name) is not None)


def read_id_list(path: str | Path) -> list[tuple[int, str]]:
    """(line, id) for the first field of each non-empty line of `path`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"id list {path} does not exist")
    check_regular_file(path)
    ids = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                fields_ = raw.decode("utf-8").split()
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{lineno}: is not valid UTF-8 ({err.reason})") from None
            if fields_:
                ids.append((lineno, fields_[0]))
    return ids


def select_utterances(files: ScannedDir, selection: SubsetSelection) -> tuple[list[str], list[str]]:
    """The utterances `selection` keeps (C-sorted) and notes on the choice (ids of a list that the
    dir does not have)."""
    utt2spk: dict[str, str] = files.tables["utt2spk"]
    utts = sorted(utt2spk, key=c_sort_key)
    spk2utt: dict[str, list[str]] = {}
    for u in utts:
        spk2utt.setdefault(utt2spk[u], []).append(u)
    speakers = sorted(spk2utt, key=c_sort_key)
    src, way = files.path, selection.way
    notes: list[str] = []
    n = getattr(selection, way)

    def enough(count: int, have: int, what: str) -> None:
        if count > have:
            raise ValueError(f"--{way.replace('_', '-')} {count}: {src} has only {have} {what}")

    if way in ("first", "last", "random", "shortest"):
        enough(n, len(utts), "utterances")
    if way == "first":
        kept = utts[:n]
    elif way == "last":
        kept = utts[-n:]
    elif way == "random":
        rng = np.random.default_rng(selection.seed)
        kept = [utts[i] for i in rng.choice(len(utts), size=n, replace=False)]
    elif way == "shortest":
        if files.has("utt2dur"):
            durations = files.tables["utt2dur"]
        elif files.has("segments"):
            durations = {u: end - start for u, (_, start, end) in files.tables["segments"].items()}
        else:
            raise FileNotFoundError(
                f"--shortest needs {src / 'utt2dur'} (or segments): run `speechssl data durations {src}`"
            )
        kept = sorted(utts, key=lambda u: (durations[u], c_sort_key(u)))[:n]
    elif way == "speakers":
        enough(n, len(speakers), "speakers")
        rng = np.random.default_rng(selection.seed)
        kept = [u for i in rng.choice(len(speakers), size=n, replace=False) for u in spk2utt[speakers[i]]]
    elif way == "per_spk":  # Kaldi: up to n utterances, every skip-th, spread over the speaker's list
        kept = []
        for spk in speakers:
            own, skip = spk2utt[spk], 1
            while n * (skip + 1) <= len(own):
                skip += 1
            kept += own[: n * skip : skip]
    else:
        path = selection.spk_list if way == "spk_list" else selection.utt_list
        listed = read_id_list(path)
        known = spk2utt if way == "spk_list" else utt2spk
        what = "speaker" if way == "spk_list" else "utterance"
        missing = [(line, key) for line, key in listed if key not in known]
        if missing:
            line, key = missing[0]
            notes.append(
                f"{len(missing)} listed {what} id(s) of {path} are not in {src}, skipped (the first: '{key}'"
                f" on line {line})"
            )
        chosen = {key for _, key in listed if key in known}
        if not chosen:
            raise ValueError(f"{path}: none of its {len(listed)} {what} ids is in {src}: nothing to keep")
        kept = [u for u in utts if (utt2spk[u] if way == "spk_list" else u) in chosen]
    return sorted(kept, key=c_sort_key), notes


def subset_data_dir(
    src: str | Path, out: str | Path, selection: SubsetSelection, *, overwrite: bool = False
) -> DerivedDir:
    """Write the utterances of `src` that `selection` keeps to `out`, every file filtered with them
    (`speechssl.data.derive`), and validate the result. `out` follows the output-path rule."""
    inputs = tuple(p for p in (selection.spk_list, selection.utt_list) if p is not None)
    check_output(out, SUBSET, overwrite=overwrite, inputs=(src, *inputs))
    files, spk_sorted = read_source(src)
    utts, notes = select_utterances(files, selection)
    result = derive_data_dir(
        files, out, SUBSET, utts, spk_sorted=spk_sorted, overwrite=overwrite, inputs=inputs
    )
    return replace(result, notes=tuple(notes) + result.notes)
