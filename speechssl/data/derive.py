"""Write a data dir derived from another: some of its utterances (`speechssl data subset`), its ids
renamed and its times rescaled (`speechssl data copy`), every file carried consistently.

Like Kaldi's subset_data_dir.sh and copy_data_dir.sh, only the files a data dir is made of are
written: every table of the table rule (`speechssl.data.layout`), filtered by utterance, recording
or speaker; phone_ctm (the lines of kept utterances), rttm (the turns of kept recordings) and
trials (the trials whose two utterances are kept); frame_shift and cmvn_opts as they are. Files
that are not tables (NOTES, audio kept beside the tables), num_jobs and subdirectories (units
dirs, splits, which hold results for the source's utterances) are not copied, and the result
names them. The source must be valid (`speechssl data validate --no-audio`): a subset of an
inconsistent dir would be inconsistent too. The new dir is written beside `out`, validated, and
renamed into place (`output_directory`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from speechssl.data.alignments import format_ctm_row
from speechssl.data.datadir import UTT2UNIQ, spk2utt_from_utt2spk
from speechssl.data.kaldi import ProblemKind, c_sort_key, format_seconds, format_table, read_lines
from speechssl.data.layout import (
    CTM_FILE,
    RECORDING,
    RTTM_FILE,
    SETTINGS_FILES,
    SPEAKER,
    TRIALS_FILE,
    UTTERANCE,
    WAV,
)
from speechssl.data.rttm import derive_rttm
from speechssl.data.validate import ScannedDir, check_scanned
from speechssl.errors import OutputExistsError
from speechssl.io import atomic_write_text
from speechssl.outputs import check_output, output_directory

# tables whose values are seconds (rescaled with the audio) or ids (renamed with them)
_SECONDS = ("utt2dur", "reco2dur")


def read_source(path: str | Path) -> tuple[ScannedDir, bool]:
    """Scan data dir `path` and refuse it unless it is valid (audio headers are not read).
    Returns the scan and whether its utterance ids sort like their speakers (a dir that does not
    is accepted, as Kaldi's --no-spk-sort, and its copies are checked the same way)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"data dir {path} does not exist")
    files = ScannedDir(path)
    problems = check_scanned(files, check_audio=False).problems
    spk_sorted = not any(p.kind == ProblemKind.SPEAKER_ORDER for p in problems)
    problems = [p for p in problems if p.kind != ProblemKind.SPEAKER_ORDER]
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ValueError(
            f"{problems[0]}{more}; {path} is not a valid data dir: run `speechssl data validate {path}`"
            f" to list the problems and `speechssl data fix {path}` to repair them"
        )
    return files, spk_sorted


def check_id_prefix(prefix: str, what: str) -> None:
    """A prefix becomes part of every id: no whitespace, nothing invisible."""
    if prefix != prefix.strip() or any(c.isspace() or not c.isprintable() for c in prefix):
        raise ValueError(f"{what} {prefix!r} must not contain whitespace or invisible characters")


@dataclass(frozen=True, kw_only=True)
class Rename:
    """Prefixes of the new ids (Kaldi's copy_data_dir.sh --utt-prefix / --spk-prefix); recording
    ids take `reco_prefix` (with segments; without them a recording is its utterance)."""

    utt_prefix: str = ""
    spk_prefix: str = ""
    reco_prefix: str = ""

    def __post_init__(self) -> None:
        check_id_prefix(self.utt_prefix, "utterance prefix")
        check_id_prefix(self.spk_prefix, "speaker prefix")
        check_id_prefix(self.reco_prefix, "recording prefix")


@dataclass(frozen=True)
class NewAudio:
    """A recording written anew (a perturbed copy): its wav.scp entry, where it lies in the temp
    dir (relative) and its length."""

    path: str
    local: str
    seconds: float


# writes the new audio of the kept recordings into the temp dir and returns them by source id
AudioWriter = Callable[[Path, list[str]], dict[str, NewAudio]]


@dataclass(frozen=True)
class DerivedDir:
    """What `derive_data_dir` wrote."""

    path: Path
    num_utterances: int
    num_speakers: int
    num_recordings: int
    source_utterances: int
    source_speakers: int
    seconds: float | None  # from utt2dur or segments; None when neither is there
    not_copied: tuple[str, ...]  # 'NOTES (not a data-dir table)', 'feats.scp (...)'
    notes: tuple[str, ...]  # what else a user should know (trials left out...)


def _check_audio_outside(files: ScannedDir, out: Path) -> None:
    """Refuse an `out` that holds audio the source lists: writing it replaces the dir whole, and the
    earlier output's audio (a perturbed copy that this source was made from) would go with it."""
    target = out.resolve()
    for key, value in files.tables["wav.scp"].items():
        audio = Path(value).resolve()
        if audio.is_relative_to(target):
            raise OutputExistsError(
                f"{files.path / 'wav.scp'}: '{key}' is audio inside --out {out} ({value}); "
                "writing there would delete it: choose another --out"
            )


def derive_data_dir(
    files: ScannedDir,
    out: str | Path,
    command: str,
    utts: list[str],
    *,
    spk_sorted: bool = True,
    rename: Rename = Rename(),
    time_scale: float = 1.0,
    drop: dict[str, str] | None = None,
    audio: AudioWriter | None = None,
    add_utt2uniq: bool = False,
    overwrite: bool = False,
    inputs: tuple[str | Path, ...] = (),
) -> DerivedDir:
    """Write the utterances `utts` of the scanned, valid dir `files` to `out` (see the module
    docstring), ids renamed by `rename`, times (segments, durations, phone_ctm) multiplied by
    `time_scale`. `drop`: table name -> why it is not written (features of audio that changed).
    `audio`: writes new audio for the kept recordings (their wav.scp entries and lengths replace
    the source's; utt2dur and reco2dur then come from them). `add_utt2uniq`: map each new id to
    the utterance it copies (Kaldi's perturb_data_dir_speed.sh). Raises before writing anything
    when `out` may not be written (`check_output`)."""
    src = files.path
    check_output(out, command, overwrite=overwrite, inputs=(src, *inputs))
    _check_audio_outside(files, Path(out))
    drop = dict(drop or {})
    kept = set(utts)
    if not kept:
        raise ValueError(f"{src}: no utterance selected: nothing to write")
    values = {name: {row.key: row.value for row in reversed(rows)} for name, rows in files.rows.items()}
    segments = files.has("segments")
    utt2spk: dict[str, str] = files.tables["utt2spk"]
    speakers = {utt2spk[u] for u in kept}
    recos = {files.tables["segments"][u][0] for u in kept} if segments else kept

    def utt(key: str) -> str:
        return rename.utt_prefix + key

    def spk(key: str) -> str:
        return rename.spk_prefix + key

    def reco(key: str) -> str:
        return rename.reco_prefix + key if segments else utt(key)

    def seconds(text: str) -> str:
        return text if time_scale == 1.0 else format_seconds(float(text) * time_scale)

    tables: dict[str, dict[str, str]] = {}
    for name, level in files.listing.tables.items():
        if name in drop or name == "spk2utt":
            continue
        table = values[name]
        if level == UTTERANCE or (level == WAV and not segments):
            new = {utt(u): table[u] for u in kept}
        elif level in (RECORDING, WAV):
            new = {reco(r): table[r] for r in recos}
        else:
            assert level == SPEAKER, level
            new = {spk(s): table[s] for s in speakers if s in table}
        if name == "utt2spk":
            new = {utt(u): spk(utt2spk[u]) for u in kept}
        elif name == "segments":
            new = {}
            for u in kept:
                r, start, end = table[u].split()
                new[utt(u)] = f"{reco(r)} {seconds(start)} {seconds(end)}"
        elif name in _SECONDS:
            new = {k: seconds(v) for k, v in new.items()}
        tables[name] = new
    new_utt2spk = tables["utt2spk"]
    tables["spk2utt"] = {s: " ".join(us) for s, us in spk2utt_from_utt2spk(new_utt2spk).items()}
    if add_utt2uniq:
        uniq = values.get(UTT2UNIQ, {})
        tables[UTT2UNIQ] = {utt(u): uniq.get(u, u) for u in kept}

    not_copied = [f"{name} (not a data-dir table)" for name in files.listing.ignored]
    not_copied += [f"{name} ({why})" for name, why in drop.items() if files.has(name)]
    for entry in sorted(os.scandir(src), key=lambda e: e.name.encode()):
        if entry.name == "num_jobs" or (entry.is_dir() and not entry.name.startswith(".")):
            not_copied.append(f"{entry.name}{'/' if entry.is_dir() else ''} (left in the source)")
    notes: list[str] = []
    ctm = None
    if files.ctm is not None:
        ctm = "".join(
            format_ctm_row(r, uttid=utt(r.uttid) if rename.utt_prefix else None, scale=time_scale)
            for r in files.ctm
            if r.uttid in kept
        )
    trials = _trials(src / TRIALS_FILE, kept, utt, notes) if (src / TRIALS_FILE).is_file() else None
    rttm = None
    if (src / RTTM_FILE).is_file():  # the turns of kept recordings, renamed and rescaled as the segments
        rttm = derive_rttm(
            src / RTTM_FILE, lambda r: reco(r) if r in recos else None, scale=time_scale, speaker=spk
        )

    with output_directory(out, command, overwrite=overwrite) as tmp:
        if audio is not None:
            written = audio(tmp, sorted(recos, key=c_sort_key))
            tables["wav.scp"] = {reco(r): a.path for r, a in written.items()}
            local = {reco(r): a.local for r, a in written.items()}
            if time_scale != 1.0:  # speed: lengths from the new audio (Kaldi writes both)
                if segments:
                    tables["reco2dur"] = {reco(r): format_seconds(a.seconds) for r, a in written.items()}
                    tables["utt2dur"] = {
                        u: format_seconds(float(s.split()[2]) - float(s.split()[1]))
                        for u, s in tables["segments"].items()
                    }
                else:
                    tables["utt2dur"] = {utt(u): format_seconds(a.seconds) for u, a in written.items()}
                    if "reco2dur" in tables:
                        tables["reco2dur"] = dict(tables["utt2dur"])
        for name, table in tables.items():
            atomic_write_text(tmp / name, format_table(table))
        if ctm is not None:
            atomic_write_text(tmp / CTM_FILE, ctm)
        if trials:
            atomic_write_text(tmp / TRIALS_FILE, trials)
        if rttm is not None:
            atomic_write_text(tmp / RTTM_FILE, rttm)
        for name in SETTINGS_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
        if audio is not None:  # validate the headers where the audio is now, then name where it will be
            final = tables["wav.scp"]
            atomic_write_text(tmp / "wav.scp", format_table({r: str(tmp / local[r]) for r in final}))
        check = check_scanned(ScannedDir(tmp), check_audio=audio is not None, check_spk_sort=spk_sorted)
        if check.problems:  # a bug of ours: the source was valid
            raise ValueError(f"the new dir would not be valid, nothing written: {check.problems[0]}")
        if audio is not None:
            atomic_write_text(tmp / "wav.scp", format_table(final))
    durations = tables.get("utt2dur")
    if durations is not None:
        total = sum(float(v) for v in durations.values())
    elif segments:
        total = sum(float(s.split()[2]) - float(s.split()[1]) for s in tables["segments"].values())
    else:
        total = None
    return DerivedDir(
        path=Path(out),
        num_utterances=len(kept),
        num_speakers=len(speakers),
        num_recordings=len(recos),
        source_utterances=len(utt2spk),
        source_speakers=len(set(utt2spk.values())),
        seconds=total,
        not_copied=tuple(not_copied),
        notes=tuple(notes),
    )


def _trials(path: Path, kept: set[str], utt: Callable[[str], str], notes: list[str]) -> str | None:
    """The trials whose two utterances are kept, renamed; a malformed line is an error naming it."""
    lines, total, kinds = [], 0, set()
    for lineno, line in enumerate(read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[2] not in ("target", "nontarget"):
            raise ValueError(
                f"{path}:{lineno}: expected 'enroll_utt test_utt target|nontarget', found '{line.strip()}'"
            )
        total += 1
        a, b, kind = fields
        if a in kept and b in kept:
            lines.append(f"{utt(a)} {utt(b)} {kind}\n")
            kinds.add(kind)
    if not lines:
        notes.append(f"trials: none of the {total} trials has both utterances kept: not written")
        return None
    if len(lines) < total:
        notes.append(f"trials: kept {len(lines)} of {total} trials (those whose two utterances are kept)")
    if kinds != {"target", "nontarget"}:
        missing = "target" if "target" not in kinds else "nontarget"
        notes.append(f"trials: no {missing} trial is left, so no EER can be scored on this dir")
    return "".join(lines)
