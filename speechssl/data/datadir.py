"""Kaldi data dirs: load, write, validate, fix and measure durations.

A data dir is the unit of exchange between recipe stages (DESIGN.md):

    wav.scp    <reco-id> <audio path>     (<utt-id> when there is no segments file)
    segments   <utt-id> <reco-id> <start s> <end s>        optional
    utt2spk    <utt-id> <speaker>         each utterance its own speaker if unknown
    spk2utt    <speaker> <utt-id>...      derived from utt2spk
    text       <utt-id> <transcript>      optional
    utt2dur    <utt-id> <seconds>         optional (`speechssl data durations`)
    reco2dur   <reco-id> <seconds>        optional, with segments

Every file is sorted by key in C locale (byte order). Any other top-level
`key value` file (phones, intent, labels...) is an utterance-level "extra"
table: kept by `write`, filtered by `fix`, checked for id consistency by
`validate`.

Policy for Kaldi pipes: a wav.scp entry such as `utt1 sox in.flac -t wav - |`
is not supported, since we read audio with soundfile, never through a shell.
Write the audio to files first (e.g. run the command once per recording into
a wav/flac file) and list those paths. Ark offsets (`foo.ark:123`) are not
supported either. Relative audio paths are relative to the working directory,
as in Kaldi recipes; absolute paths are safest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from speechssl.data.kaldi import Problem, Row, c_sort_key, scan_table, write_table

# Files whose keys are utterance ids (besides extras); wav.scp is one of them
# only when there is no segments file.
UTT_FILES = ("utt2spk", "text", "segments", "utt2dur", "utt2num_frames", "feats.scp", "utt2lang", "utt2uniq")
RECO_FILES = ("reco2dur", "reco2file_and_channel")
SPK_FILES = ("spk2utt", "spk2gender", "cmvn.scp")
CORE_FILES = ("wav.scp", "segments", "utt2spk", "spk2utt", "text", "utt2dur", "reco2dur")
# Top-level files that are not `key value` tables keyed by utterance.
NON_TABLE_FILES = ("frame_shift", "num_jobs", "cmvn_opts", "README", "README.md")
NON_TABLE_SUFFIXES = (".sh", ".txt", ".md", ".yaml", ".yml", ".json", ".log", ".done", ".lock", ".pt", ".npy")
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


def _fmt_seconds(value: float) -> str:
    """Seconds with microsecond precision, no trailing zeros (1.5, 0.01, 3)."""
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"


def parse_rows(name: str, file: str, rows: list[Row]) -> tuple[dict, list[Problem]]:
    """Turn scanned rows of data-dir file `name` into typed values; malformed lines become problems.

    wav.scp/text/extras -> str, utt2spk -> speaker, spk2utt -> list[str],
    segments -> (reco, start, end), *2dur -> float. The first of duplicate keys wins.
    """
    table: dict = {}
    problems: list[Problem] = []

    def bad(row: Row, message: str) -> None:
        problems.append(Problem(file, row.line, row.key, message))

    for row in rows:
        if row.key in table:
            continue  # duplicates are reported by scan_table
        fields = row.fields
        if name == "wav.scp":
            if not row.value:
                bad(row, "expected '<id> <audio path>', found no path")
                continue
            if row.value.endswith("|") or row.value.startswith("|"):
                bad(row, PIPE_POLICY)
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
                bad(row, f"expected '<utt-id> <reco-id> <start> <end>' (4 fields), found {len(fields) + 1} fields")
                continue
            start, end = _float(fields[1]), _float(fields[2])
            if start is None or end is None:
                bad(row, f"start and end must be numbers (seconds), found '{fields[1]}' '{fields[2]}'")
                continue
            table[row.key] = (fields[0], start, end)
        elif name in ("utt2dur", "reco2dur"):
            value = _float(fields[0]) if len(fields) == 1 else None
            if value is None or value < 0:
                bad(row, f"expected '<id> <duration in seconds>' (one non-negative number), found '{row.value}'")
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


def is_extra_table(path: Path) -> bool:
    """Whether a top-level file of a data dir is an utterance-level extra table."""
    name = path.name
    return (
        path.is_file()
        and not name.startswith(".")
        and name not in CORE_FILES
        and name not in RECO_FILES
        and name not in SPK_FILES
        and name not in NON_TABLE_FILES
        and not name.endswith(NON_TABLE_SUFFIXES)
    )


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
        if not (path / "wav.scp").is_file():
            raise FileNotFoundError(f"{path / 'wav.scp'} does not exist: every data dir needs a wav.scp")
        tables: dict[str, dict | None] = {}
        problems: list[Problem] = []
        for name in CORE_FILES:
            file = path / name
            if file.is_file():
                tables[name], found = read_file(file)
                problems += [p for p in found if "not sorted" not in p.message]
            else:
                tables[name] = None
        extra = {}
        for file in sorted(path.iterdir(), key=lambda p: c_sort_key(p.name)):
            if is_extra_table(file):
                extra[file.name], found = read_file(file)
                problems += [p for p in found if "not sorted" not in p.message]
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
        if not file.is_file():
            raise FileNotFoundError(f"{file} does not exist")
        rows, problems = scan_table(file)
        problems = [p for p in problems if "not sorted" not in p.message]
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
                {u: f"{r} {_fmt_seconds(s)} {_fmt_seconds(e)}" for u, (r, s, e) in self.segments.items()},
            )
        if self.utt2spk is not None:
            write_table(path / "utt2spk", self.utt2spk)
        if self.spk2utt is not None:
            write_table(path / "spk2utt", {s: sorted(u, key=c_sort_key) for s, u in self.spk2utt.items()})
        if self.text is not None:
            write_table(path / "text", self.text)
        for name, durations in (("utt2dur", self.utt2dur), ("reco2dur", self.reco2dur)):
            if durations is not None:
                write_table(path / name, {k: _fmt_seconds(v) for k, v in durations.items()})
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
    for name, table in (("wav.scp", wav_scp), ("utt2spk", utt2spk), ("text", text or {}), *(extra or {}).items()):
        for key in table:
            if not key or key.split() != [key]:
                raise ValueError(f"{name}: id {key!r} must be non-empty and contain no whitespace")
    for name in extra or {}:
        if name in CORE_FILES or "/" in name or name.startswith("."):
            raise ValueError(f"extra table name '{name}' must be a plain file name other than {CORE_FILES}")
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
