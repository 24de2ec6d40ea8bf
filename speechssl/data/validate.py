"""`speechssl data validate`: check a data dir as Kaldi's utils/validate_data_dir.sh does, and what
training will accept.

`ScannedDir` reads every table of a dir by the table rule (speechssl.data.layout) collecting
problems instead of raising; `fix` (speechssl.data.fix) repairs from the same scan. Each problem
names a file, a line and an id where possible, and carries a `ProblemKind` (speechssl.data.kaldi)
that code tells problems apart by; notes (ignored files, audio resampled when read) are problems
of kinds IGNORED_FILES and RESAMPLED that do not make a dir invalid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from speechssl.data.alignments import CtmRow, scan_phone_ctm
from speechssl.data.audio import SAMPLE_RATE
from speechssl.data.datadir import not_regular_problems, parse_rows, read_headers, spk2utt_from_utt2spk
from speechssl.data.kaldi import Problem, ProblemKind, Row, c_sort_key, scan_table
from speechssl.data.layout import (
    CTM_FILE,
    RECORDING,
    SPEAKER,
    UTTERANCE,
    describe_ignored,
    file_kind,
    list_data_dir,
)

SEGMENT_TOLERANCE = 0.01  # seconds a segment may run past its recording (Kaldi's validate_data_dir.sh)


class ScannedDir:
    """Scanned rows, parsed tables and line numbers of every table of a data dir (the table rule
    of `speechssl.data.layout`; ignored files are listed, never opened)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.listing = list_data_dir(path)
        self.rows: dict[str, list[Row]] = {}
        self.tables: dict[str, dict] = {}
        self.lines: dict[str, dict[str, int]] = {}
        self.problems: list[Problem] = not_regular_problems(path, self.listing)
        for name in self.listing.tables:
            file = path / name
            rows, problems = scan_table(file)
            table, parse_problems = parse_rows(name, str(file), rows)
            self.rows[name], self.tables[name] = rows, table
            self.lines[name] = {}
            for row in rows:
                self.lines[name].setdefault(row.key, row.line)
            self.problems += problems + parse_problems
        self.ctm: list[CtmRow] | None = None  # the well-formed lines of phone_ctm, when there is one
        ctm = path / CTM_FILE
        if os.path.lexists(ctm):
            try:
                mode = os.stat(ctm).st_mode
            except OSError:
                mode = None
            if mode is None or not os.path.isfile(ctm):
                kind = "a broken symbolic link" if mode is None else file_kind(mode)
                self.problems.append(
                    Problem(
                        str(ctm),
                        None,
                        None,
                        f"is {kind}, not a regular file: not read",
                        ProblemKind.NOT_REGULAR,
                    )
                )
            else:
                self.ctm, problems = scan_phone_ctm(ctm)
                self.problems += problems

    def file(self, name: str) -> str:
        return str(self.path / name)

    def has(self, name: str) -> bool:
        return name in self.tables

    def keys(self, name: str) -> dict[str, int]:
        """Every id of a file (malformed lines included) -> its first line."""
        return self.lines[name]

    def _level(self, level: str) -> list[str]:
        return [n for n, lv in self.listing.tables.items() if lv == level]

    def reference(self) -> str:
        """The table whose ids are the utterances: utt2spk, else segments, else wav.scp."""
        if self.has("utt2spk"):
            return "utt2spk"
        return "segments" if self.has("segments") else "wav.scp"

    def utt_files(self) -> list[str]:
        """Files keyed by utterance id that are present (wav.scp when there is no segments), utt2spk aside."""
        names = [n for n in self._level(UTTERANCE) if n != "utt2spk"]
        return names if self.has("segments") else ["wav.scp", *names]

    def reco_files(self) -> list[str]:
        """Recording-level tables that are present, wav.scp aside."""
        return self._level(RECORDING)

    def spk_files(self) -> list[str]:
        """Speaker-level tables that are present, spk2utt aside."""
        return [n for n in self._level(SPEAKER) if n != "spk2utt"]


@dataclass(frozen=True)
class DataDirCheck:
    """What `check_data_dir` found: problems (the dir is invalid while any remain) and notes
    (ignored files, audio that is resampled when read), each naming a file and where possible
    a line and an id."""

    problems: list[Problem]
    notes: list[Problem]


def validate_data_dir(
    path: str | Path, *, check_audio: bool = True, check_spk_sort: bool = True
) -> list[Problem]:
    """Every problem `check_data_dir` finds; an empty list means the dir is valid."""
    return check_data_dir(path, check_audio=check_audio, check_spk_sort=check_spk_sort).problems


def check_data_dir(
    path: str | Path, *, check_audio: bool = True, check_spk_sort: bool = True, sample_rate: int = SAMPLE_RATE
) -> DataDirCheck:
    """Check a data dir as Kaldi's utils/validate_data_dir.sh does, and what training will accept.

    Problems: each table sorted (C locale) with unique ids and well-formed
    lines, without invisible characters, CR line endings or a byte-order mark;
    tables are regular files; the same utterance ids in every utterance-level
    table; utt2spk and spk2utt agree, speaker tables name known speakers;
    utterance ids sort like their speakers (unless not `check_spk_sort`,
    Kaldi's --no-spk-sort); transcripts non-empty; audio files are regular,
    complete, readable and mono (every later stage reads mono audio); segments
    name known recordings, start < end, and end within the recording (+0.01 s).
    Notes: files that are not tables (ignored, listed once) and audio whose
    rate is not `sample_rate` (resampled when read, as `load_audio` logs).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"data dir {path} does not exist")
    return check_scanned(
        ScannedDir(path), check_audio=check_audio, check_spk_sort=check_spk_sort, sample_rate=sample_rate
    )


def check_scanned(
    files: ScannedDir,
    *,
    check_audio: bool = True,
    check_spk_sort: bool = True,
    sample_rate: int = SAMPLE_RATE,
) -> DataDirCheck:
    """`check_data_dir` of a dir already scanned (commands that go on to use the scan)."""
    path = files.path
    problems = list(files.problems)
    notes = []
    if files.listing.ignored:
        notes.append(
            Problem(
                str(path),
                None,
                None,
                f"ignored {len(files.listing.ignored)} file(s) that are not"
                f" data-dir tables (left as they are): {describe_ignored(files.listing.ignored)}",
                ProblemKind.IGNORED_FILES,
            )
        )
    if not files.has("wav.scp"):
        if "wav.scp" not in files.listing.not_regular:
            problems.append(
                Problem(
                    files.file("wav.scp"),
                    None,
                    None,
                    "is missing: every data dir needs wav.scp",
                    ProblemKind.MISSING_FILE,
                )
            )
        return DataDirCheck(problems, notes)
    problems += _check_speakers(files, check_spk_sort)
    problems += _check_speaker_tables(files)
    problems += _check_utt_ids(files)
    problems += _check_text(files)
    problems += check_phone_ctm(files)
    found, rate_notes = _check_recordings(files, check_audio, sample_rate)
    return DataDirCheck(problems + found, notes + rate_notes)


def _check_speakers(files: ScannedDir, check_spk_sort: bool) -> list[Problem]:
    if not files.has("utt2spk"):
        return [
            Problem(
                files.file("utt2spk"),
                None,
                None,
                "is missing: every data dir needs utt2spk "
                "(if speakers are unknown, make each utterance its own speaker)",
                ProblemKind.MISSING_FILE,
            )
        ]
    problems = []
    utt2spk: dict[str, str] = files.tables["utt2spk"]
    lines = files.keys("utt2spk")
    # Kaldi requires that sorting by speaker keeps utterances sorted (speaker-prefixed ids).
    previous: tuple[str, str] | None = None
    for utt in sorted(utt2spk, key=c_sort_key) if check_spk_sort else []:
        spk = utt2spk[utt]
        if previous is not None and c_sort_key(spk) < c_sort_key(previous[1]):
            problems.append(
                Problem(
                    files.file("utt2spk"),
                    lines[utt],
                    utt,
                    f"speaker '{spk}' sorts before speaker '{previous[1]}' of the previous utterance"
                    f" '{previous[0]}': utterance ids must sort like their speakers "
                    "(prefix each id with its speaker id)",
                    ProblemKind.SPEAKER_ORDER,
                )
            )
            break
        previous = (utt, spk)
    if not files.has("spk2utt"):
        problems.append(
            Problem(
                files.file("spk2utt"),
                None,
                None,
                "is missing; `speechssl data fix` rebuilds it from utt2spk",
                ProblemKind.MISSING_FILE,
            )
        )
        return problems
    expected = spk2utt_from_utt2spk(utt2spk)
    spk2utt: dict[str, list[str]] = files.tables["spk2utt"]
    spk_file, spk_lines = files.file("spk2utt"), files.keys("spk2utt")
    for spk, utts in spk2utt.items():
        line = spk_lines[spk]
        for utt in dict.fromkeys(utts):
            if utt not in utt2spk:
                problems.append(
                    Problem(
                        spk_file,
                        line,
                        spk,
                        f"lists utterance '{utt}', which is not in utt2spk",
                        ProblemKind.SPEAKERS,
                    )
                )
            elif utt2spk[utt] != spk:
                problems.append(
                    Problem(
                        spk_file,
                        line,
                        spk,
                        f"lists utterance '{utt}', whose speaker in utt2spk is '{utt2spk[utt]}'",
                        ProblemKind.SPEAKERS,
                    )
                )
        for utt in expected.get(spk, []):
            if utt not in utts:
                problems.append(
                    Problem(
                        spk_file,
                        line,
                        spk,
                        f"does not list utterance '{utt}' (utt2spk line {lines[utt]})",
                        ProblemKind.SPEAKERS,
                    )
                )
        if len(set(utts)) != len(utts):
            problems.append(
                Problem(spk_file, line, spk, "lists an utterance more than once", ProblemKind.SPEAKERS)
            )
        elif utts != sorted(utts, key=c_sort_key):
            problems.append(
                Problem(spk_file, line, spk, "utterances are not sorted in C locale", ProblemKind.UNSORTED)
            )
    for spk, utts in expected.items():
        if spk not in spk2utt:
            problems.append(
                Problem(
                    files.file("utt2spk"),
                    lines[utts[0]],
                    utts[0],
                    f"speaker '{spk}' is not in spk2utt",
                    ProblemKind.SPEAKERS,
                )
            )
    return problems


def _check_speaker_tables(files: ScannedDir) -> list[Problem]:
    """Speaker tables (spk2gender, spk2age...) name only speakers of utt2spk (`fix` drops the others)."""
    if not files.has("utt2spk"):
        return []
    speakers = set(files.tables["utt2spk"].values())
    return [
        Problem(files.file(name), line, spk, "speaker is not in utt2spk", ProblemKind.SPEAKERS)
        for name in files.spk_files()
        for spk, line in files.keys(name).items()
        if spk not in speakers
    ]


def _check_utt_ids(files: ScannedDir) -> list[Problem]:
    """Every utterance-level file holds exactly the utterances of utt2spk."""
    reference = files.reference()
    utts = files.keys(reference)
    problems = []
    for name in files.utt_files():
        if name == reference:
            continue
        keys = files.keys(name)
        for key, line in keys.items():
            if key not in utts:
                problems.append(
                    Problem(
                        files.file(name),
                        line,
                        key,
                        f"utterance is not in {reference}",
                        ProblemKind.MISSING_ID,
                    )
                )
        for utt, line in utts.items():
            if utt not in keys:
                problems.append(
                    Problem(
                        files.file(reference),
                        line,
                        utt,
                        f"utterance has no entry in {name}",
                        ProblemKind.MISSING_ID,
                    )
                )
    return problems


def _check_text(files: ScannedDir) -> list[Problem]:
    """Empty transcripts (control and other invisible characters are reported by `scan_table`)."""
    if not files.has("text"):
        return []
    return [
        Problem(files.file("text"), files.keys("text")[utt], utt, "empty transcript", ProblemKind.EMPTY_TEXT)
        for utt, words in files.tables["text"].items()
        if not words.strip()
    ]


def check_phone_ctm(files: ScannedDir) -> list[Problem]:
    """phone_ctm names only utterances of the dir (not every utterance needs an alignment), and,
    where utt2dur (else segments) gives durations, no utterance's alignment ends past its duration
    (+0.01 s). Its lines
    themselves were checked when it was scanned (`scan_phone_ctm`)."""
    if files.ctm is None or not files.has(files.reference()):
        return []
    reference = files.reference()
    utts = files.keys(reference)
    durations: dict[str, float] = files.tables.get("utt2dur", {})
    source = "utt2dur"
    if not durations and files.has("segments"):
        durations = {u: end - start for u, (_, start, end) in files.tables["segments"].items()}
        source = "segments"
    file = files.file(CTM_FILE)
    problems = []
    ends: dict[str, CtmRow] = {}
    for row in files.ctm:
        if row.uttid not in utts:
            if row.uttid not in ends:
                problems.append(
                    Problem(
                        file, row.line, row.uttid, f"utterance is not in {reference}", ProblemKind.MISSING_ID
                    )
                )
            ends[row.uttid] = row
        elif (
            row.uttid not in ends
            or row.start + row.duration > ends[row.uttid].start + ends[row.uttid].duration
        ):
            ends[row.uttid] = row
    for utt, row in ends.items():
        end = row.start + row.duration
        if utt in durations and end > durations[utt] + SEGMENT_TOLERANCE:
            problems.append(
                Problem(
                    file,
                    row.line,
                    utt,
                    f"alignment ends at {end:g} s, past the end of the utterance ({durations[utt]:g} s from"
                    f" {source}; tolerance {SEGMENT_TOLERANCE} s)",
                    ProblemKind.SEGMENT,
                )
            )
    return problems


def _check_recordings(
    files: ScannedDir, check_audio: bool, sample_rate: int
) -> tuple[list[Problem], list[Problem]]:
    """Recording tables' ids, audio headers (readable, complete, mono; other rates are notes),
    and segment bounds against recording durations. Returns (problems, notes)."""
    problems: list[Problem] = []
    notes: list[Problem] = []
    wav_scp: dict[str, str] = files.tables["wav.scp"]
    wav_lines = files.keys("wav.scp")
    wav_file = files.file("wav.scp")
    durations: dict[str, tuple[float, str]] = {}  # reco -> (seconds, where the number came from)
    for name in files.reco_files():
        for reco, line in files.keys(name).items():
            if reco not in wav_lines:
                problems.append(
                    Problem(
                        files.file(name), line, reco, "recording is not in wav.scp", ProblemKind.MISSING_ID
                    )
                )
    if files.has("reco2dur"):
        reco_lines = files.keys("reco2dur")
        for reco, line in wav_lines.items():
            if reco not in reco_lines:
                problems.append(
                    Problem(
                        wav_file, line, reco, "recording has no entry in reco2dur", ProblemKind.MISSING_ID
                    )
                )
        durations.update({k: (v, "reco2dur") for k, v in files.tables["reco2dur"].items()})
    if check_audio:
        rates: dict[int, list[str]] = {}
        for reco, info in read_headers(wav_scp, 1, False, "headers").items():
            line = wav_lines[reco]
            if isinstance(info, Exception):
                problems.append(Problem(wav_file, line, reco, str(info), ProblemKind.AUDIO))
            elif info.num_frames <= 0:
                problems.append(
                    Problem(
                        wav_file, line, reco, f"audio file {wav_scp[reco]} has no samples", ProblemKind.AUDIO
                    )
                )
            elif info.num_channels != 1:
                problems.append(
                    Problem(
                        wav_file,
                        line,
                        reco,
                        f"audio file {wav_scp[reco]} has {info.num_channels} channels; training,"
                        " features and evaluation read mono audio: "
                        "keep one channel (e.g. `sox IN OUT remix 1`)",
                        ProblemKind.AUDIO,
                    )
                )
            else:
                durations.setdefault(reco, (info.duration, "audio header"))
                if info.sample_rate != sample_rate:
                    rates.setdefault(info.sample_rate, []).append(reco)
        for rate, recos in sorted(rates.items()):
            notes.append(
                Problem(
                    wav_file,
                    wav_lines[recos[0]],
                    recos[0],
                    f"{len(recos)} recording(s) at {rate} Hz, this one first:"
                    f" resampled to {sample_rate} Hz when read",
                    ProblemKind.RESAMPLED,
                )
            )
    if not files.has("segments"):
        return problems, notes
    seg_file = files.file("segments")
    seg_lines = files.keys("segments")
    for utt, (reco, start, end) in files.tables["segments"].items():
        line = seg_lines[utt]
        if reco not in wav_lines:
            problems.append(
                Problem(seg_file, line, utt, f"recording '{reco}' is not in wav.scp", ProblemKind.MISSING_ID)
            )
            continue
        if start < 0:
            problems.append(
                Problem(seg_file, line, utt, f"start {start:g} s is negative", ProblemKind.SEGMENT)
            )
        if start >= end:
            problems.append(
                Problem(
                    seg_file, line, utt, f"start {start:g} s is not before end {end:g} s", ProblemKind.SEGMENT
                )
            )
        if reco in durations:
            seconds, source = durations[reco]
            if end > seconds + SEGMENT_TOLERANCE:
                problems.append(
                    Problem(
                        seg_file,
                        line,
                        utt,
                        f"end {end:g} s is past the end of recording '{reco}' ({seconds:g} s, from {source};"
                        f" tolerance {SEGMENT_TOLERANCE} s)",
                        ProblemKind.SEGMENT,
                    )
                )
    return problems, notes
