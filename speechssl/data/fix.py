"""`speechssl data fix`: make a data dir consistent (Kaldi's utils/fix_data_dir.sh) without losing data.

What it may touch: only the tables of `speechssl.data.layout` (other files are listed as ignored,
never read, never changed), and it never deletes a file. Before it changes anything, the
originals of every table are copied into a new backup dir (`speechssl.data.backup`): `.backup/`
the first time, then `.backup.1/`, `.backup.2/`..., so the first originals are never replaced. A
table to change that is a symlink is refused (its target may be shared; the link is the user's).
The backup is written to a temp dir and renamed; the changed tables are written as temp files and
renamed together at the end: a failure or Ctrl-C among the renames puts the replaced tables back
from the backup, and a kill there leaves every table whole (old or new), the originals in the
backup and a dir that `fix` run again fixes (it removes the killed run's temp tables). A fix that
would keep no utterance changes nothing unless asked (`allow_empty`), and a fix with nothing to
change writes nothing (no backup either).
"""

from __future__ import annotations

import shutil
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from speechssl.data.backup import refuse_symlinked, write_backup
from speechssl.data.datadir import spk2utt_from_utt2spk
from speechssl.data.kaldi import Problem, ProblemKind, c_sort_key, format_table
from speechssl.data.layout import CTM_FILE, RECORDING, RTTM_FILE, SPEAKER, UTTERANCE
from speechssl.data.rttm import derive_rttm, rttm_lines
from speechssl.data.validate import ScannedDir, check_phone_ctm
from speechssl.io import atomic_file, remove_stale_temporaries

# lines fix removes (the first of duplicates is kept) and characters it removes from the lines it keeps
REMOVED_LINES = frozenset(
    {ProblemKind.NOT_UTF8, ProblemKind.DUPLICATE, ProblemKind.MALFORMED, ProblemKind.PIPE}
)
CLEANED = frozenset({ProblemKind.BYTE_ORDER_MARK, ProblemKind.LINE_ENDINGS, ProblemKind.INVISIBLE})


@dataclass(frozen=True)
class Dropped:
    """An id removed by `fix_data_dir`, and the files that lacked it (or why)."""

    kind: str  # UTTERANCE, RECORDING or SPEAKER (speechssl.data.layout)
    key: str
    files: tuple[str, ...]
    reason: str

    def __str__(self) -> str:
        return f"dropped {self.kind} '{self.key}': {self.reason} {', '.join(self.files)}"


@dataclass(frozen=True)
class DroppedAlignment:
    """The phone_ctm lines of one utterance that `fix_data_dir` removed, and why."""

    key: str | None  # None: a line no utterance can be read from (not UTF-8)
    num_lines: int
    reason: str

    def __str__(self) -> str:
        if self.key is None:
            return f"dropped a {CTM_FILE} line: {self.reason}"
        return f"dropped the {self.num_lines} {CTM_FILE} line(s) of '{self.key}': {self.reason}"


@dataclass(frozen=True)
class FixReport:
    """What `fix_data_dir` changed; the originals are in `backup_dir` (None when nothing changed)."""

    dropped: tuple[Dropped, ...]
    removed_lines: tuple[Problem, ...]  # malformed or duplicate lines (the first of duplicates is kept)
    cleaned: tuple[Problem, ...]  # byte-order marks, CR line endings and invisible characters removed
    changed: tuple[str, ...]  # tables rewritten or created, by name
    ignored: tuple[str, ...]  # files that are not tables: never read, never changed
    backup_dir: Path | None
    num_utterances: int
    alignments: tuple[DroppedAlignment, ...] = ()  # phone_ctm lines removed, by utterance


def _why_empty(dropped: list[Dropped], total: int) -> str:
    counts = Counter(name for d in dropped if d.kind == UTTERANCE for name in d.files)
    worst = ", ".join(f"{name} ({count})" for name, count in counts.most_common(3))
    return f"all {total} utterances lack an entry in some table; the tables lacking most: {worst}"


def fix_data_dir(path: str | Path, *, allow_empty: bool = False) -> FixReport:
    """Make a data dir consistent, as Kaldi's utils/fix_data_dir.sh does.

    Drops malformed and duplicate lines, removes invisible characters, keeps
    only utterances present in every utterance-level table (and, with
    segments, whose segment is well-formed and whose recording is in wav.scp
    and every recording table), keeps only recordings some kept segment uses,
    rebuilds spk2utt, filters speaker tables, and rewrites the tables that
    change C-sorted. See the module docstring for what keeps this safe.
    """
    path = Path(path)
    files = ScannedDir(path)
    if files.listing.not_regular:
        name, kind = next(iter(files.listing.not_regular.items()))
        raise ValueError(
            f"{path / name}: is {kind}, not a regular file; fix reads only regular files: nothing changed"
        )
    for name in ("wav.scp", "utt2spk"):
        if not files.has(name):
            raise FileNotFoundError(f"{path / name} does not exist: fix needs wav.scp and utt2spk")
    removed = tuple(p for p in files.problems if p.kind in REMOVED_LINES)
    cleaned = tuple(p for p in files.problems if p.kind in CLEANED)
    lines = {
        name: {row.key: row for row in reversed(rows)} for name, rows in files.rows.items()
    }  # first wins
    dropped: list[Dropped] = []

    # Recordings usable by segments: in wav.scp and every recording-level table.
    segments = files.has("segments")
    reco_files = ["wav.scp", *files.reco_files()]
    recos = set.intersection(*(set(files.tables[n]) for n in reco_files))
    utt_files = ["utt2spk", *files.utt_files()]
    all_utts = set().union(*(files.keys(n) for n in utt_files))
    kept_utts = []
    for utt in sorted(all_utts, key=c_sort_key):
        lacking = tuple(n for n in utt_files if utt not in files.tables[n])
        if lacking:
            dropped.append(Dropped(UTTERANCE, utt, lacking, "missing or malformed in"))
            continue
        if segments:
            reco, start, end = files.tables["segments"][utt]
            if reco not in recos:
                missing = tuple(n for n in reco_files if reco not in files.tables[n])
                dropped.append(Dropped(UTTERANCE, utt, missing, f"its recording '{reco}' is missing from"))
                continue
            if not 0 <= start < end:
                dropped.append(
                    Dropped(UTTERANCE, utt, ("segments",), f"bad segment times {start:g}..{end:g} in")
                )
                continue
        kept_utts.append(utt)
    if not kept_utts and not allow_empty:
        raise ValueError(
            f"{path}: fix would keep no utterance ({_why_empty(dropped, len(all_utts))}); nothing changed."
            " Run `speechssl data validate` to see why, or pass --allow-empty to write an empty data dir"
        )
    kept = set(kept_utts)

    tables: dict[str, dict[str, str]] = {}
    for name in utt_files:
        tables[name] = {u: lines[name][u].value for u in kept_utts}
    if segments:
        used = {files.tables["segments"][u][0] for u in kept}
        for reco in sorted(files.keys("wav.scp"), key=c_sort_key):
            if reco not in used:
                dropped.append(Dropped(RECORDING, reco, ("segments",), "not used by any kept utterance in"))
        for name in reco_files:
            tables[name] = {r: lines[name][r].value for r in used}
    else:  # without segments a recording is an utterance
        for name in files.reco_files():
            tables[name] = {u: lines[name][u].value for u in kept if u in files.tables[name]}
    utt2spk = {u: files.tables["utt2spk"][u] for u in kept_utts}
    speakers = set(utt2spk.values())
    tables["spk2utt"] = {s: " ".join(u) for s, u in spk2utt_from_utt2spk(utt2spk).items()}
    for name in files.spk_files():
        tables[name] = {s: lines[name][s].value for s in speakers if s in files.tables[name]}
    for spk in sorted(set(files.tables.get("spk2utt", {})) - speakers, key=c_sort_key):
        dropped.append(Dropped(SPEAKER, spk, ("utt2spk",), "has no kept utterance in"))

    contents = {name: format_table(table) for name, table in tables.items()}
    alignments: list[DroppedAlignment] = []
    if files.ctm is not None:
        contents[CTM_FILE], alignments = _filter_ctm(files, kept)
    extra = [name for name in (CTM_FILE, RTTM_FILE) if (path / name).is_file()]
    if RTTM_FILE in extra:  # rewritten only when it names a recording that goes
        recordings = {files.tables["segments"][u][0] for u in kept} if segments else kept
        if {reco for _, reco, _ in rttm_lines(path / RTTM_FILE)} - recordings:
            contents[RTTM_FILE] = derive_rttm(path / RTTM_FILE, lambda r: r if r in recordings else None)
    changed = [
        name
        for name in contents
        if not (files.has(name) or name in extra)
        or (path / name).read_bytes() != contents[name].encode("utf-8")
    ]
    originals = list(files.listing.tables) + extra
    remove_stale_temporaries(path, of={*contents, *originals})  # a killed fix's temp tables
    backup = None
    if changed:
        refuse_symlinked(path, changed, "fix")
        backup = write_backup(path, originals)
        created = [name for name in changed if not (path / name).exists() and not (path / name).is_symlink()]
        try:
            with ExitStack() as stack:  # every temp file is written before the first rename
                for name in changed:
                    stack.enter_context(atomic_file(path / name)).write_text(contents[name], encoding="utf-8")
        except BaseException:
            _put_back(path, backup, changed, created)
            raise
    return FixReport(
        dropped=tuple(dropped),
        removed_lines=removed,
        cleaned=cleaned,
        changed=tuple(sorted(changed, key=c_sort_key)),
        ignored=files.listing.ignored,
        backup_dir=backup,
        num_utterances=len(kept_utts),
        alignments=tuple(alignments),
    )


def _put_back(path: Path, backup: Path, changed: list[str], created: list[str]) -> None:
    """After a failure (or Ctrl-C) among the renames: the tables already replaced get their
    originals back from `backup`, and the ones this fix created (`created`: absent before it) go,
    so the dir is as it was, not half fixed."""
    for name in changed:
        original, table = backup / name, path / name
        if name in created:
            table.unlink(missing_ok=True)
        elif original.is_file() and table.read_bytes() != original.read_bytes():
            with atomic_file(table) as tmp:
                shutil.copy2(original, tmp)


def _filter_ctm(files: ScannedDir, kept: set[str]) -> tuple[str, list[DroppedAlignment]]:
    """phone_ctm without the lines of utterances that are not kept or whose alignment has a problem
    (a malformed line, a gap or overlap, an end past utt2dur): half an alignment would shift every
    later frame label, so an utterance keeps all its lines or none. Lines keep their order."""
    problems = [p for p in files.problems if p.file == files.file(CTM_FILE)] + check_phone_ctm(files)
    reasons: dict[str, str] = {}
    counts: Counter[str] = Counter()
    unreadable = []
    for p in problems:
        if p.key is None:
            unreadable.append(DroppedAlignment(None, 1, f"line {p.line} {p.message}"))
            continue
        reasons.setdefault(p.key, f"line {p.line}: {p.message}")
        if p.kind == ProblemKind.MALFORMED:  # a line scan_phone_ctm returned no row for
            counts[p.key] += 1
    lines = []
    for row in files.ctm or []:
        if row.uttid in kept and row.uttid not in reasons:
            lines.append(row.text + "\n")
        else:
            counts[row.uttid] += 1
    for utt in counts:
        reasons.setdefault(utt, "its utterance is not kept")
    dropped = [DroppedAlignment(u, counts[u], reasons[u]) for u in sorted(counts, key=c_sort_key)]
    return "".join(lines), unreadable + dropped
