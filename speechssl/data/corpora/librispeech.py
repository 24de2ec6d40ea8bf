"""LibriSpeech (OpenSLR 12) from a local copy into Kaldi data dirs.

Layout expected under `root` (the folder that holds the subsets, usually
`.../LibriSpeech`):

    <subset>/<reader>/<chapter>/<reader>-<chapter>-<utt>.flac
    <subset>/<reader>/<chapter>/<reader>-<chapter>.trans.txt

As in Kaldi's egs/librispeech, the speaker of an utterance is
`<reader>-<chapter>` (one recording session), utterance ids are the file
stems, and each subset becomes `out/<subset with _ for ->`
(train-clean-100 -> train_clean_100). Audio stays in FLAC, read directly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from speechssl.data.datadir import write_data_dir, write_durations
from speechssl.data.kaldi import read_lines
from speechssl.outputs import check_output, claim_directories

logger = logging.getLogger(__name__)

COMMAND = "prepare librispeech"

SUBSETS = (
    "dev-clean",
    "dev-other",
    "test-clean",
    "test-other",
    "train-clean-100",
    "train-clean-360",
    "train-other-500",
)


def _find_subset(root: Path, subset: str) -> Path:
    if not root.is_dir():
        raise FileNotFoundError(
            f"LibriSpeech root {root} does not exist. speechssl downloads nothing: get LibriSpeech"
            " yourself (OpenSLR resource 12), unpack it, and pass the folder that holds the subsets"
            " (e.g. /data/LibriSpeech)"
        )
    path = root / subset
    if not path.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"LibriSpeech subset {subset} not found under {root} (found: {', '.join(found) or 'nothing'})"
        )
    return path


def read_transcripts(chapter_dir: Path) -> dict[str, str]:
    """`<reader>-<chapter>.trans.txt` -> {utt_id: transcript}."""
    files = sorted(chapter_dir.glob("*.trans.txt"))
    if len(files) != 1:
        raise ValueError(f"{chapter_dir}: expected one *.trans.txt file, found {len(files)}")
    text = {}
    for lineno, line in enumerate(read_lines(files[0]), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) < 2:
            raise ValueError(f"{files[0]}:{lineno}: utterance {parts[0]} has an empty transcript")
        text[parts[0]] = parts[1]
    return text


def _read_subset(subset_dir: Path) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """wav.scp, text and utt2spk of one subset's chapters."""
    wav_scp, text, utt2spk = {}, {}, {}
    chapters = sorted(p for p in subset_dir.glob("*/*") if p.is_dir())
    for chapter_dir in tqdm(chapters, desc=f"librispeech {subset_dir.name}", unit="chapter"):
        transcripts = read_transcripts(chapter_dir)
        audio = {p.stem: p for p in chapter_dir.glob("*.flac")}
        if set(audio) != set(transcripts):
            missing = sorted(set(transcripts) - set(audio))[:3]
            extra = sorted(set(audio) - set(transcripts))[:3]
            raise ValueError(
                f"{chapter_dir}: transcripts and .flac files disagree"
                f" (no audio for {missing}, no transcript for {extra})"
            )
        speaker = f"{chapter_dir.parent.name}-{chapter_dir.name}"
        for utt_id, path in audio.items():
            wav_scp[utt_id] = str(path.resolve())
            text[utt_id] = transcripts[utt_id]
            utt2spk[utt_id] = speaker
    if not wav_scp:
        raise ValueError(f"{subset_dir}: no utterances found (expected <reader>/<chapter>/*.flac)")
    return wav_scp, text, utt2spk


def prepare_librispeech(
    root: str | Path,
    out_dir: str | Path,
    subsets: Sequence[str] = ("train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other"),
    *,
    nj: int = 1,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write one data dir per subset (wav.scp, text, utt2spk, spk2utt, utt2dur); a subset dir that
    holds files this command did not write is refused unless `overwrite` (speechssl.outputs)."""
    root, out_dir = Path(root), Path(out_dir)
    for subset in subsets:
        if subset not in SUBSETS:
            raise ValueError(f"unknown LibriSpeech subset '{subset}'; valid: {', '.join(SUBSETS)}")
    subset_dirs = {subset: _find_subset(root, subset) for subset in subsets}  # inputs before outputs
    targets = {subset: out_dir / subset.replace("-", "_") for subset in subsets}
    for target in targets.values():  # refused before the corpus is read
        check_output(target, COMMAND, overwrite=overwrite, inputs=(root,))
    # every transcript is read before any dir is made: a bad one leaves nothing behind
    tables = {subset: _read_subset(subset_dir) for subset, subset_dir in subset_dirs.items()}
    claim_directories(list(targets.values()), COMMAND, overwrite=overwrite, inputs=(root,))
    written = {}
    for subset, (wav_scp, text, utt2spk) in tables.items():
        target = targets[subset]
        write_data_dir(target, wav_scp, utt2spk=utt2spk, text=text)
        write_durations(target, nj=nj)
        logger.info(
            "%s: %d utterances, %d speakers -> %s", subset, len(wav_scp), len(set(utt2spk.values())), target
        )
        written[subset] = target
    return written
