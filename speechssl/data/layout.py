"""Which files of a data dir are tables: the one rule `load`, `validate`, `fix` and `combine` share.

Tables, by what their first column is (<name>: letters, digits and underscores, so that
`utt2spk.orig`, `text~` or `wav.scp.bak` are not tables):

- utterance tables: utt2spk, text, segments, utt2dur, utt2num_frames, feats.scp, utt2lang,
  utt2uniq, our task tables phones and intent, and every `utt2<name>` and `<name>.scp`
  (other than wav.scp and cmvn.scp);
- recording tables: reco2dur, reco2file_and_channel and every `reco2<name>`;
- speaker tables: spk2utt, spk2gender, cmvn.scp and every `spk2<name>` (spk2age...);
- wav.scp: keyed by recording, or by utterance when there is no segments file.

Known files that are not one-line-per-id tables: phone_ctm (one line per phone; `validate` checks
it and `fix`, `combine`, `subset` and `copy` filter or carry it with the utterances), trials (ASV
pairs; `subset` and `copy` keep the trials of kept utterances), rttm (speaker turns of the
diarization task), frame_shift and cmvn_opts (settings
of the whole dir, copied as they are by `subset` and `copy`) and num_jobs (left alone). Any other
top-level file (NOTES, LICENSE, audio kept beside the tables, copies such as text.orig) is never
read as a table and never changed, and is listed once as ignored. Hidden entries (.backup/,
.speechssl_output) and subdirectories (units dirs, splits) are left alone without being listed.
Nothing here opens a file: entries are told apart with stat, so a FIFO is never read.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

UTTERANCE, RECORDING, SPEAKER, WAV = "utterance", "recording", "speaker", "wav"

# The Kaldi files DataDir parses into fields of its own.
CORE_FILES = ("wav.scp", "segments", "utt2spk", "spk2utt", "text", "utt2dur", "reco2dur")
# Named tables in the order problems and dropped ids list them; the patterns below add more.
UTT_FILES = (
    "utt2spk",
    "text",
    "segments",
    "utt2dur",
    "utt2num_frames",
    "feats.scp",
    "utt2lang",
    "utt2uniq",
    "phones",
    "intent",
)
RECO_FILES = ("reco2dur", "reco2file_and_channel")
SPK_FILES = ("spk2utt", "spk2gender", "cmvn.scp")
CTM_FILE = "phone_ctm"  # `uttid channel start duration phone`, several lines per utterance
TRIALS_FILE = "trials"  # `enroll_utt test_utt target|nontarget`
SETTINGS_FILES = ("frame_shift", "cmvn_opts")  # one value for the whole dir
RTTM_FILE = "rttm"  # NIST RTTM: `SPEAKER reco 1 start dur <NA> <NA> spk <NA> <NA>`, one line per turn
OTHER_FILES = (TRIALS_FILE, CTM_FILE, RTTM_FILE, *SETTINGS_FILES, "num_jobs")

_PATTERNS = (
    (re.compile(r"utt2[A-Za-z0-9_]+"), UTTERANCE),
    (re.compile(r"reco2[A-Za-z0-9_]+"), RECORDING),
    (re.compile(r"spk2[A-Za-z0-9_]+"), SPEAKER),
    (re.compile(r"[A-Za-z0-9_]+\.scp"), UTTERANCE),
)


def table_level(name: str) -> str | None:
    """What the keys of top-level file `name` are (UTTERANCE, RECORDING, SPEAKER, WAV), or None
    when it is not a table."""
    if name == "wav.scp":
        return WAV
    for names, level in ((UTT_FILES, UTTERANCE), (RECO_FILES, RECORDING), (SPK_FILES, SPEAKER)):
        if name in names:
            return level
    for pattern, level in _PATTERNS:
        if pattern.fullmatch(name):
            return level
    return None


def _order(name: str) -> tuple[int, bytes]:
    """Named tables in their listed order, then the others in C-locale order."""
    named = ("wav.scp", *UTT_FILES, *RECO_FILES, *SPK_FILES)
    return (named.index(name) if name in named else len(named), name.encode())


def file_kind(mode: int) -> str:
    """'a FIFO', 'a device'... for the error that names a non-regular file."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


@dataclass(frozen=True)
class Listing:
    """The top level of a data dir, sorted out by the table rule."""

    tables: dict[str, str]  # regular files named as tables -> level, in listing order
    not_regular: dict[str, str]  # table names that are not regular files -> what they are (never opened)
    ignored: tuple[str, ...]  # other visible files, C-sorted: never read, never changed


def list_data_dir(path: str | Path) -> Listing:
    """Sort the entries of data dir `path` by the table rule, with stat only."""
    tables: dict[str, str] = {}
    not_regular: dict[str, str] = {}
    ignored: list[str] = []
    for entry in sorted(os.scandir(path), key=lambda e: _order(e.name)):
        if entry.name.startswith("."):
            continue
        try:
            mode = os.stat(entry.path).st_mode  # follows symbolic links
        except OSError:
            mode = None
        level = table_level(entry.name)
        if mode is not None and stat.S_ISDIR(mode):
            if level is not None:
                not_regular[entry.name] = "a directory"
            continue
        if level is None:
            if entry.name not in OTHER_FILES:
                ignored.append(entry.name)
        elif mode is None:
            not_regular[entry.name] = "a broken symbolic link"
        elif not stat.S_ISREG(mode):
            not_regular[entry.name] = file_kind(mode)
        else:
            tables[entry.name] = level
    return Listing(tables, not_regular, tuple(sorted(ignored, key=str.encode)))


def describe_ignored(names: tuple[str, ...], shown: int = 8) -> str:
    """'LICENSE, NOTES and 3 more' for the one line that lists ignored files."""
    text = ", ".join(names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")
