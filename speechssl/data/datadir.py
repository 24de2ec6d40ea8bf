"""Kaldi data dirs: load, write, combine and measure durations (`validate` is data/validate.py,
`fix` is data/fix.py).

A data dir is the unit of exchange between recipe stages (DESIGN.md):

    wav.scp    <reco-id> <audio path>     (<utt-id> when there is no segments file)
    segments   <utt-id> <reco-id> <start s> <end s>        optional
    utt2spk    <utt-id> <speaker>         each utterance its own speaker if unknown
    spk2utt    <speaker> <utt-id>...      derived from utt2spk
    text       <utt-id> <transcript>      optional
    utt2dur    <utt-id> <seconds>         optional (`speechssl data durations`)
    reco2dur   <reco-id> <seconds>        optional, with segments

Every file is sorted by key in C locale (byte order). Which other top-level
files are tables (phones, intent, utt2*, *.scp, spk2*...) and which are left
alone (NOTES, audio beside the tables...) is the rule of `speechssl.data.layout`:
utterance tables beyond the core are DataDir's "extra" tables, kept by `write`,
filtered by `fix` (speechssl.data.fix), checked for id consistency by `validate` (speechssl.data.validate).

Policy for Kaldi pipes: a wav.scp entry such as `utt1 sox in.flac -t wav - |`
is not supported, since we read audio with soundfile, never through a shell.
Write the audio to files first (e.g. run the command once per recording into
a wav/flac file) and list those paths. Ark offsets (`foo.ark:123`) are not
supported either. Relative audio paths are relative to the working directory,
as in Kaldi recipes; absolute paths are safest.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from speechssl.data.alignments import scan_phone_ctm
from speechssl.data.audio import AudioInfo, audio_info
from speechssl.data.backup import refuse_symlinked, write_backup
from speechssl.data.kaldi import (
    Problem,
    ProblemKind,
    Row,
    c_sort_key,
    fatal_problems,
    format_seconds,
    format_table,
    scan_table,
    write_table,
)
from speechssl.data.layout import (
    CORE_FILES,
    CTM_FILE,
    RTTM_FILE,
    UTTERANCE,
    Listing,
    list_data_dir,
    table_level,
)
from speechssl.data.rttm import format_rttm, read_rttm
from speechssl.io import atomic_write_text
from speechssl.outputs import check_output, is_own_file, output_directory, record_output

PIPE_POLICY = (
    "Kaldi pipe entries (`cmd |`) are not supported: write the audio to files first"
    " (e.g. run the command once per recording into a .wav/.flac) and list those paths in wav.scp"
)


@dataclass(frozen=True)
class Utterance:
    """One utterance, resolved through segments and wav.scp."""

    utt_id: str
    path: str  # audio file path from wav.scp
    start: float = 0.0  # seconds (from segments), 0 when no segments
    end: float | None = None  # seconds, None = to the end of the file
    speaker: str | None = None


# ---------------------------------------------------------------- parsing


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_rows(name: str, file: str, rows: list[Row]) -> tuple[dict, list[Problem]]:
    """Turn scanned rows of data-dir file `name` into typed values; malformed lines become problems.

    wav.scp/text/extras -> str, utt2spk -> speaker, spk2utt -> list[str],
    segments -> (reco, start, end), *2dur -> float. The first of duplicate keys wins.
    """
    table: dict = {}
    problems: list[Problem] = []

    def bad(row: Row, message: str, kind: ProblemKind = ProblemKind.MALFORMED) -> None:
        problems.append(Problem(file, row.line, row.key, message, kind))

    for row in rows:
        if row.key in table:
            continue  # duplicates are reported by scan_table
        fields = row.fields
        if name == "wav.scp":
            if not row.value:
                bad(row, "expected '<id> <audio path>', found no path")
                continue
            if row.value.endswith("|") or row.value.startswith("|"):
                bad(row, PIPE_POLICY, ProblemKind.PIPE)
                continue
            table[row.key] = row.value
        elif name == "utt2spk":
            if len(fields) != 1:
                bad(row, f"expected '<utt-id> <speaker>' (2 fields), found {len(fields) + 1} fields")
                continue
            table[row.key] = fields[0]
        elif name == "spk2utt":
            if not fields:
                bad(row, "expected '<speaker> <utt-id>...', found no utterances")
                continue
            table[row.key] = fields
        elif name == "segments":
            if len(fields) != 3:
                bad(
                    row,
                    f"expected '<utt-id> <reco-id> <start> <end>' (4 fields), found {len(fields) + 1} fields",
                )
                continue
            start, end = _float(fields[1]), _float(fields[2])
            if start is None or end is None:
                bad(row, f"start and end must be numbers (seconds), found '{fields[1]}' '{fields[2]}'")
                continue
            table[row.key] = (fields[0], start, end)
        elif name in ("utt2dur", "reco2dur"):
            value = _float(fields[0]) if len(fields) == 1 else None
            if value is None or value < 0:
                bad(
                    row,
                    f"expected '<id> <duration in seconds>' (one non-negative number), found '{row.value}'",
                )
                continue
            table[row.key] = value
        else:  # text and extras: free-form value (an empty text is a validation problem, not a parse one)
            table[row.key] = row.value
    return table, problems


def read_file(path: Path) -> tuple[dict, list[Problem]]:
    """Scan and parse one data-dir file, returning the table and every problem found."""
    rows, problems = scan_table(path)
    table, parse_problems = parse_rows(path.name, str(path), rows)
    return table, problems + parse_problems


def not_regular_problems(path: Path, listing: Listing) -> list[Problem]:
    """A problem for each table name of `listing` that is not a regular file (never opened)."""
    return [
        Problem(
            str(path / name), None, None, f"is {kind}, not a regular file: not read", ProblemKind.NOT_REGULAR
        )
        for name, kind in listing.not_regular.items()
    ]


# ---------------------------------------------------------------- DataDir


@dataclass
class DataDir:
    """The parsed files of a Kaldi data dir; absent optional files are None."""

    path: Path
    wav_scp: dict[str, str]  # recording (or utterance) id -> path
    segments: dict[str, tuple[str, float, float]] | None = None  # utt -> (reco, start, end)
    utt2spk: dict[str, str] | None = None
    spk2utt: dict[str, list[str]] | None = None
    text: dict[str, str] | None = None
    utt2dur: dict[str, float] | None = None
    reco2dur: dict[str, float] | None = None
    extra: dict[str, dict[str, str]] = field(default_factory=dict)  # other `key value` files by name

    @classmethod
    def load(cls, path: str | Path) -> DataDir:
        """Read a data dir. Malformed lines, duplicate ids and pipe entries raise
        ValueError naming file:line and id; consistency is `validate_data_dir`'s job."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"data dir {path} does not exist")
        listing = list_data_dir(path)
        problems = not_regular_problems(path, listing)
        if "wav.scp" not in listing.tables and not problems:
            raise FileNotFoundError(f"{path / 'wav.scp'} does not exist: every data dir needs a wav.scp")
        tables: dict[str, dict | None] = {name: None for name in CORE_FILES}
        extra = {}
        for name, level in listing.tables.items():
            if name in CORE_FILES or level == UTTERANCE:
                table, found = read_file(path / name)
                problems += fatal_problems(found)
                if name in CORE_FILES:
                    tables[name] = table
                else:
                    extra[name] = table
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise ValueError(f"{problems[0]}{more}; run `speechssl data validate {path}` to list them all")
        return cls(
            path=path,
            wav_scp=tables["wav.scp"],
            segments=tables["segments"],
            utt2spk=tables["utt2spk"],
            spk2utt=tables["spk2utt"],
            text=tables["text"],
            utt2dur=tables["utt2dur"],
            reco2dur=tables["reco2dur"],
            extra=extra,
        )

    def utt_ids(self) -> list[str]:
        """Utterance ids in C-locale order: from utt2spk, else segments, else wav.scp."""
        source = self.utt2spk if self.utt2spk is not None else self.segments
        if source is None:
            source = self.wav_scp
        return sorted(source, key=c_sort_key)

    def utterances(self) -> list[Utterance]:
        """Every utterance with its audio path and time span, in C-locale order of id."""
        out = []
        for utt in self.utt_ids():
            speaker = self.utt2spk.get(utt) if self.utt2spk is not None else None
            if self.segments is not None:
                if utt not in self.segments:
                    raise ValueError(f"{self.path / 'segments'}: utterance '{utt}' has no segment")
                reco, start, end = self.segments[utt]
                if reco not in self.wav_scp:
                    raise ValueError(
                        f"{self.path / 'segments'}: utterance '{utt}' refers to recording '{reco}',"
                        f" which is not in wav.scp"
                    )
                out.append(Utterance(utt, self.wav_scp[reco], start, end, speaker))
            else:
                if utt not in self.wav_scp:
                    raise ValueError(f"{self.path / 'wav.scp'}: utterance '{utt}' has no audio entry")
                out.append(Utterance(utt, self.wav_scp[utt], 0.0, None, speaker))
        return out

    def table(self, name: str) -> dict[str, str]:
        """Any other `key value` file of the dir (phones, intent, labels...), as strings."""
        if name in self.extra:
            return self.extra[name]
        file = self.path / name
        if not file.exists():
            raise FileNotFoundError(f"{file} does not exist")
        if not file.is_file():
            raise ValueError(f"{file}: is not a regular file: not read")
        rows, problems = scan_table(file)
        problems = fatal_problems(problems)
        if problems:
            raise ValueError(str(problems[0]))
        return {row.key: row.value for row in rows}

    def write(self, path: str | Path) -> None:
        """Write every present file, C-sorted, each atomically (temp file + rename)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_table(path / "wav.scp", self.wav_scp)
        if self.segments is not None:
            write_table(
                path / "segments",
                {u: f"{r} {format_seconds(s)} {format_seconds(e)}" for u, (r, s, e) in self.segments.items()},
            )
        if self.utt2spk is not None:
            write_table(path / "utt2spk", self.utt2spk)
        if self.spk2utt is not None:
            write_table(path / "spk2utt", {s: sorted(u, key=c_sort_key) for s, u in self.spk2utt.items()})
        if self.text is not None:
            write_table(path / "text", self.text)
        for name, durations in (("utt2dur", self.utt2dur), ("reco2dur", self.reco2dur)):
            if durations is not None:
                write_table(path / name, {k: format_seconds(v) for k, v in durations.items()})
        for name, table in self.extra.items():
            write_table(path / name, table)
        self.path = path


def spk2utt_from_utt2spk(utt2spk: Mapping[str, str]) -> dict[str, list[str]]:
    """Invert utt2spk; each speaker's utterances in C-locale order (as utt2spk_to_spk2utt.pl)."""
    spk2utt: dict[str, list[str]] = {}
    for utt in sorted(utt2spk, key=c_sort_key):
        spk2utt.setdefault(utt2spk[utt], []).append(utt)
    return spk2utt


def write_data_dir(
    path: str | Path,
    wav_scp: Mapping[str, str],
    *,
    utt2spk: Mapping[str, str] | None = None,
    text: Mapping[str, str] | None = None,
    segments: Mapping[str, tuple[str, float, float]] | None = None,
    utt2dur: Mapping[str, float] | None = None,
    reco2dur: Mapping[str, float] | None = None,
    extra: dict[str, dict[str, str]] | None = None,
) -> DataDir:
    """Write a data dir from in-memory tables and return it.

    spk2utt is derived from utt2spk. Without utt2spk, each utterance is its own
    speaker (Kaldi's advice when speakers are unknown: no false sharing of CMVN
    or speaker adaptation across people).
    """
    utt_ids = segments.keys() if segments is not None else wav_scp.keys()
    if utt2spk is None:
        utt2spk = {utt: utt for utt in utt_ids}
    for name, table in (
        ("wav.scp", wav_scp),
        ("utt2spk", utt2spk),
        ("text", text or {}),
        *(extra or {}).items(),
    ):
        for key in table:
            if not key or key.split() != [key]:
                raise ValueError(f"{name}: id {key!r} must be non-empty and contain no whitespace")
    for name in extra or {}:
        if name in CORE_FILES or table_level(name) != UTTERANCE:
            raise ValueError(
                f"extra table name '{name}' is not an utterance table name other than {CORE_FILES}"
                " (phones, intent, utt2<name>, <name>.scp: see speechssl.data.layout)"
            )
    data = DataDir(
        path=Path(path),
        wav_scp=dict(wav_scp),
        segments=dict(segments) if segments is not None else None,
        utt2spk=dict(utt2spk),
        spk2utt=spk2utt_from_utt2spk(utt2spk),
        text=dict(text) if text is not None else None,
        utt2dur=dict(utt2dur) if utt2dur is not None else None,
        reco2dur=dict(reco2dur) if reco2dur is not None else None,
        extra={k: dict(v) for k, v in (extra or {}).items()},
    )
    data.write(path)
    return data


# ---------------------------------------------------------------- audio headers


def read_headers(
    paths: Mapping[str, str], nj: int, progress: bool, desc: str
) -> dict[str, AudioInfo | Exception]:
    """id -> header of the audio file `paths[id]` or the error, reading headers on `nj` threads
    with a progress bar."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    def one(item: tuple[str, str]) -> tuple[str, AudioInfo | Exception]:
        key, audio = item
        try:
            return key, audio_info(audio)
        except (FileNotFoundError, ValueError) as err:
            return key, err

    items = list(paths.items())
    with ThreadPoolExecutor(max_workers=max(1, nj)) as pool:
        results = pool.map(one, items)
        return dict(tqdm(results, total=len(items), desc=desc, unit="file", disable=not progress))


# ---------------------------------------------------------------- summary


@dataclass(frozen=True)
class DataSummary:
    """What a valid data dir holds."""

    num_utterances: int
    num_speakers: int
    num_recordings: int
    seconds: float | None  # None: no utt2dur or segments, and the audio was not to be read

    @property
    def hours(self) -> float | None:
        return None if self.seconds is None else self.seconds / 3600.0

    def __str__(self) -> str:
        counts = f"{self.num_utterances} utterances, {self.num_speakers} speakers,"
        counts += f" {self.num_recordings} recordings"
        if self.seconds is None:
            return (
                f"{counts}, hours unknown (no utt2dur or segments; `speechssl data durations` writes utt2dur)"
            )
        return f"{counts}, {self.hours:.3f} hours ({self.seconds:.1f} s)"


def summarize_data_dir(path: str | Path, *, read_audio: bool = True) -> DataSummary:
    """Counts and total duration: from utt2dur, else segments, else audio headers (unless not
    `read_audio`: `data validate --no-audio` reads no audio)."""
    data = DataDir.load(path)
    utts = data.utt_ids()
    if data.utt2dur is not None:
        seconds = sum(data.utt2dur.get(u, 0.0) for u in utts)
    elif data.segments is not None:
        seconds = sum(data.segments[u][2] - data.segments[u][1] for u in utts if u in data.segments)
    elif read_audio:
        seconds = sum(audio_info(data.wav_scp[u], utt_id=u).duration for u in utts if u in data.wav_scp)
    else:
        seconds = None
    speakers = set(data.utt2spk.values()) if data.utt2spk is not None else set(utts)
    return DataSummary(len(utts), len(speakers), len(data.wav_scp), seconds)


# ---------------------------------------------------------------- durations


DURATIONS = "data durations"  # the command named in the record of the tables it wrote


def measure_durations(
    path: str | Path, *, nj: int = 1, progress: bool = True
) -> tuple[DataDir, dict[str, str]]:
    """The dir with utt2dur (and reco2dur when there are segments) from audio headers, and those
    tables' text by name; nothing is decoded, nothing written.

    With segments, an utterance lasts end - start (as Kaldi's get_utt2dur.sh).
    If any header cannot be read, raises ValueError naming every bad entry.
    """
    data = DataDir.load(path)
    infos = read_headers(data.wav_scp, nj, progress, "durations")
    lines = {row.key: row.line for row in scan_table(data.path / "wav.scp")[0]}
    errors = [
        f"{data.path / 'wav.scp'}:{lines[k]}: '{k}' {v}" for k, v in infos.items() if isinstance(v, Exception)
    ]
    if errors:
        more = f"\n... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise ValueError(f"cannot read {len(errors)} audio headers:\n" + "\n".join(errors[:10]) + more)
    headers = {k: v.duration for k, v in infos.items()}
    if data.segments is not None:
        data.utt2dur = {u: end - start for u, (_, start, end) in data.segments.items()}
        data.reco2dur = dict(headers)
    else:
        data.utt2dur = dict(headers)
    durations = {"utt2dur": data.utt2dur, "reco2dur": data.reco2dur if data.segments is not None else None}
    tables = {
        name: format_table({k: format_seconds(v) for k, v in table.items()})
        for name, table in durations.items()
        if table is not None
    }
    return data, tables


def write_durations(path: str | Path, *, nj: int = 1, progress: bool = True) -> None:
    """`measure_durations` written into a dir the caller has just made (`prepare`'s own output);
    `compute_durations` is the command that checks what is there first."""
    for name, table in measure_durations(path, nj=nj, progress=progress)[1].items():
        atomic_write_text(Path(path) / name, table)


@dataclass(frozen=True)
class DurationsReport:
    """What `compute_durations` did: the tables it wrote (none when they already held these
    durations) and where the originals it replaced are."""

    data: DataDir
    written: tuple[str, ...]
    backup_dir: Path | None


def compute_durations(
    path: str | Path, *, nj: int = 1, progress: bool = True, overwrite: bool = False
) -> DurationsReport:
    """`speechssl data durations`: write utt2dur (and reco2dur) of `measure_durations`.

    A table that already holds these durations is left alone; one this command wrote and nobody
    changed since (`record_output`) is replaced. Any other (measured by hand, by another tool, or
    edited) is refused before anything is written, naming its first differing line, unless
    `overwrite`; then the originals go to a `.backup/` dir first, as `data fix` keeps them.
    """
    data, tables = measure_durations(path, nj=nj, progress=progress)
    changed = [
        name
        for name, text in tables.items()
        if not (data.path / name).is_file() or (data.path / name).read_bytes() != text.encode("utf-8")
    ]
    refuse_symlinked(data.path, changed, "data durations")
    foreign = [name for name in changed if os.path.lexists(data.path / name) and not _own(data.path / name)]
    if foreign and not overwrite:
        name = foreign[0]
        raise ValueError(
            f"{data.path / name}: {_first_difference(data, name)}; `speechssl data durations` did not"
            " write this file (measured by hand or by another tool, or edited): pass --overwrite to"
            " replace it (the original is kept in a .backup dir, as `data fix` does)"
        )
    backup = write_backup(data.path, foreign) if foreign else None
    for name in changed:
        atomic_write_text(data.path / name, tables[name])
        record_output(data.path / name, DURATIONS)
    return DurationsReport(data, tuple(changed), backup)


def _own(table: Path) -> bool:
    return table.is_file() and is_own_file(table, DURATIONS)


def _first_difference(data: DataDir, name: str) -> str:
    """Where the table `name` on disk first differs from the durations just measured."""
    rows = {row.key: row for row in reversed(scan_table(data.path / name)[0])}  # the first of duplicates
    new = data.utt2dur if name == "utt2dur" else data.reco2dur
    assert new is not None
    for key in sorted(new.keys() | rows.keys(), key=c_sort_key):
        if key not in rows:
            return f"'{key}' is missing (the audio says {format_seconds(new[key])} s)"
        if key not in new:
            return f"line {rows[key].line}: '{key}' is not in this dir"
        measured = format_seconds(new[key])
        if rows[key].value != measured:
            return f"line {rows[key].line}: '{key}' {rows[key].value} s, the audio says {measured} s"
    return "differs from the durations the audio gives (in its layout only)"


# ---------------------------------------------------------------- combine


COMBINE = "data combine"  # the command named in the output marker of a combined dir
UTT2UNIQ = "utt2uniq"  # utterance -> the utterance it is a copy of (perturbed copies)


def combine_data_dirs(out: str | Path, sources: list[str | Path], *, overwrite: bool = False) -> DataDir:
    """Union of data dirs (Kaldi's utils/combine_data.sh), e.g. train_960 from the three
    LibriSpeech training subsets. A table is kept only if every source has it (as Kaldi
    does, so no utterance lacks an entry), except utt2uniq: a source without one maps each of its
    utterances to itself, as Kaldi does (a speed-perturbed copy combined with its original). An
    utterance id found in two sources is an error naming both; a recording id (segmented dirs) may
    be in several sources when it names the same audio (copies of one dir with other utterance
    ids). phone_ctm, where an utterance's alignment may be missing, and rttm are the unions of the sources'.

    `out` follows the output-path rule (`speechssl.outputs.check_output`): never a source or a
    dir holding one; a non-empty dir only if an earlier combine wrote it, or with `overwrite`.
    The new dir is written beside `out` and renamed over it (`output_directory`): no table of an
    earlier combine survives into the new one, and files you added there are carried over."""
    if not sources:
        raise ValueError("combine needs at least one source data dir")
    check_output(out, COMBINE, overwrite=overwrite, inputs=tuple(sources))
    dirs = [DataDir.load(src) for src in sources]
    if len({d.segments is None for d in dirs}) > 1:
        raise ValueError(
            "cannot combine data dirs with and without segments: " + ", ".join(map(str, sources))
        )
    recordings_shared = dirs[0].segments is not None  # wav.scp is keyed by recording

    def union(name: str, tables: list[Mapping | None], *, shared: bool = False) -> dict | None:
        if any(t is None for t in tables):
            return None
        merged: dict = {}
        origin: dict = {}
        for src, table in zip(sources, tables):
            for key, value in table.items():
                if key in merged and not (shared and merged[key] == value):
                    same = "" if not shared else f" with another value ('{merged[key]}' in {origin[key]})"
                    raise ValueError(
                        f"id '{key}' of {name} is in more than one source{same} (again in {src})"
                    )
                merged[key], origin[key] = value, src
        return merged

    extra_names = set.intersection(*(set(d.extra) for d in dirs))
    if any(UTT2UNIQ in d.extra for d in dirs):
        extra_names.add(UTT2UNIQ)
        for d in dirs:
            d.extra.setdefault(UTT2UNIQ, {u: u for u in d.utt_ids()})
    tables = dict(
        wav_scp=union("wav.scp", [d.wav_scp for d in dirs], shared=recordings_shared),
        utt2spk=union("utt2spk", [d.utt2spk for d in dirs]),
        text=union("text", [d.text for d in dirs]),
        segments=union("segments", [d.segments for d in dirs]),
        utt2dur=union("utt2dur", [d.utt2dur for d in dirs]),
        reco2dur=union("reco2dur", [d.reco2dur for d in dirs], shared=True),
        extra={name: union(name, [d.extra[name] for d in dirs]) for name in sorted(extra_names)},
    )
    ctm_lines = []
    for d in dirs:
        if (d.path / CTM_FILE).is_file():
            rows, problems = scan_phone_ctm(d.path / CTM_FILE)
            if problems:
                raise ValueError(
                    f"{problems[0]}; run `speechssl data validate {d.path}` to list every problem"
                )
            ctm_lines += rows
    rttm = {}  # the union of the sources' speaker turns (their recording ids are already checked)
    for d in dirs:
        if (d.path / RTTM_FILE).is_file():
            for reco, turns in read_rttm(d.path / RTTM_FILE).items():
                rttm.setdefault(reco, []).extend(turns)
    with output_directory(out, COMBINE, overwrite=overwrite) as tmp:
        data = write_data_dir(tmp, **tables)
        if ctm_lines:
            ctm_lines.sort(key=lambda row: c_sort_key(row.uttid))  # stable: each alignment in time order
            atomic_write_text(tmp / CTM_FILE, "".join(row.text + "\n" for row in ctm_lines))
        if rttm:
            atomic_write_text(tmp / RTTM_FILE, format_rttm(rttm))
    data.path = Path(out)
    return data
