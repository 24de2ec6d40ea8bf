"""Speech Commands v0.02 (Warden 2018) from a local copy -> SUPERB KS data dirs.

Layout expected under `root` (the unpacked speech_commands_v0.02 archive):

    <word>/<speaker>_nohash_<n>.wav        one 1 s clip per file, 35 word folders
    _background_noise_/*.wav               minutes-long noise recordings
    validation_list.txt, testing_list.txt  `<word>/<file>.wav`, one per line

SUPERB's 12-class protocol (as the TensorFlow speech commands task): the ten
keywords keep their label, every other word becomes `_unknown_`, and `_silence_`
is 1 s chunks cut from `_background_noise_` (written as wavs under
`out/_silence_/`, spread over the splits 80/10/10 by chunk index). A clip is in
dev or test when it is listed in validation_list.txt or testing_list.txt, in
train otherwise. The speaker of a clip is the hash before `_nohash_`.

Each split becomes `out/{train,dev,test}` with `text` holding the class (what
the `ks` task reads), wav.scp, utt2spk, spk2utt and utt2dur.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import soundfile as sf

from speechssl.data.audio import SAMPLE_RATE
from speechssl.data.datadir import write_data_dir, write_durations
from speechssl.data.kaldi import read_lines
from speechssl.outputs import claim_directories

logger = logging.getLogger(__name__)

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN, SILENCE = "_unknown_", "_silence_"
CLASSES = (*KEYWORDS, UNKNOWN, SILENCE)  # SUPERB KS: 12 classes
NOISE_DIR = "_background_noise_"
SPLIT_LISTS = {"dev": "validation_list.txt", "test": "testing_list.txt"}


def _check_root(root: Path) -> None:
    layout = (
        "the folder that holds validation_list.txt, testing_list.txt, _background_noise_/ "
        "and the word folders"
    )
    if not root.is_dir():
        raise FileNotFoundError(
            f"Speech Commands root {root} does not exist. speechssl downloads nothing: get Speech Commands"
            f" v0.02 yourself (speech_commands_v0.02.tar.gz), unpack it, and pass {layout}"
        )
    missing = [name for name in (*SPLIT_LISTS.values(), NOISE_DIR) if not (root / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"{root} is not Speech Commands v0.02: {', '.join(missing)} not found (expected {layout})"
        )


def read_split_list(path: Path, root: Path) -> set[str]:
    """`<word>/<file>.wav` lines -> set of relative paths; each must exist under root."""
    entries = set()
    for lineno, line in enumerate(read_lines(path), start=1):
        rel = line.strip()
        if not rel:
            continue
        if rel.count("/") != 1 or not rel.endswith(".wav"):
            raise ValueError(f"{path}:{lineno}: expected '<word>/<file>.wav', found '{rel}'")
        if not (root / rel).is_file():
            raise FileNotFoundError(f"{path}:{lineno}: {root / rel} does not exist")
        entries.add(rel)
    return entries


def keyword_class(word: str) -> str:
    """SUPERB's 12 classes: a keyword stays itself, any other word is _unknown_."""
    return word if word in KEYWORDS else UNKNOWN


def clip_ids(rel: str) -> tuple[str, str]:
    """'right/bb05582b_nohash_3.wav' -> (utt 'bb05582b-right-3', speaker 'bb05582b')."""
    word, name = rel.split("/")
    stem = name[: -len(".wav")]
    speaker, sep, n = stem.partition("_nohash_")
    if not sep:
        raise ValueError(f"{rel}: expected a file name '<speaker>_nohash_<n>.wav'")
    return f"{speaker}-{word}-{n}", speaker


def split_of_chunk(index: int) -> str:
    """Silence chunks spread over the splits 80/10/10 by index (deterministic, every split gets some)."""
    return {0: "test", 1: "dev"}.get(index % 10, "train")


def cut_silence(root: Path, out_dir: Path, chunk_seconds: float = 1.0) -> dict[str, list[tuple[str, str]]]:
    """Cut every background-noise file into 1 s chunks written as 16 kHz wavs under
    out_dir/_silence_/; returns {split: [(utt_id, wav path)]}."""
    target = out_dir / SILENCE
    target.mkdir(parents=True, exist_ok=True)
    per_split: dict[str, list[tuple[str, str]]] = {"train": [], "dev": [], "test": []}
    files = sorted((root / NOISE_DIR).glob("*.wav"))
    if not files:
        raise FileNotFoundError(
            f"{root / NOISE_DIR} has no .wav files (the _silence_ class is cut from them)"
        )
    index = 0
    for path in files:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        if rate != SAMPLE_RATE:
            raise ValueError(f"{path}: sample rate {rate}, expected {SAMPLE_RATE}")
        audio = audio[:, 0]
        size = int(chunk_seconds * rate)
        stem = path.stem.replace(" ", "_")
        for k in range(len(audio) // size):
            utt = f"noise-{SILENCE}-{stem}-{k:04d}"
            wav = target / f"{utt}.wav"
            if not wav.is_file():
                tmp = wav.with_name(f".{wav.name}.tmp.wav")
                sf.write(tmp, np.ascontiguousarray(audio[k * size : (k + 1) * size]), rate, subtype="PCM_16")
                tmp.replace(wav)
            per_split[split_of_chunk(index)].append((utt, str(wav.resolve())))
            index += 1
    return per_split


def prepare_speech_commands(
    root: str | Path, out_dir: str | Path, *, nj: int = 1, overwrite: bool = False
) -> dict[str, Path]:
    """Write out_dir/{train,dev,test} (text = one of the 12 classes); returns the dirs written.
    A target dir with files this command did not write is refused unless `overwrite`."""
    root, out_dir = Path(root), Path(out_dir)
    _check_root(root)
    listed = {split: read_split_list(root / name, root) for split, name in SPLIT_LISTS.items()}
    both = listed["dev"] & listed["test"]
    if both:
        raise ValueError(f"{sorted(both)[0]} is in both {SPLIT_LISTS['dev']} and {SPLIT_LISTS['test']}")
    tables: dict[str, dict[str, dict[str, str]]] = {
        s: {"wav": {}, "spk": {}, "text": {}} for s in ("train", "dev", "test")
    }
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    for word in words:
        for wav in sorted((root / word).glob("*.wav")):
            rel = f"{word}/{wav.name}"
            split = "dev" if rel in listed["dev"] else "test" if rel in listed["test"] else "train"
            utt, speaker = clip_ids(rel)
            t = tables[split]
            if utt in t["wav"]:
                raise ValueError(f"{rel}: utterance id {utt} is not unique")
            t["wav"][utt], t["spk"][utt], t["text"][utt] = str(wav.resolve()), speaker, keyword_class(word)
    targets = [out_dir / split for split in tables] + [out_dir / SILENCE]
    claim_directories(targets, "prepare speech_commands", overwrite=overwrite, inputs=(root,))
    for split, chunks in cut_silence(root, out_dir).items():
        t = tables[split]
        for utt, wav in chunks:
            t["wav"][utt], t["spk"][utt], t["text"][utt] = wav, "noise", SILENCE
    written = {}
    for split, t in tables.items():
        if not t["wav"]:
            raise ValueError(f"{root}: no clips for split {split}")
        target = out_dir / split
        target.mkdir(parents=True, exist_ok=True)
        write_data_dir(target, t["wav"], utt2spk=t["spk"], text=t["text"])
        write_durations(target, nj=nj)
        counts = {c: sum(v == c for v in t["text"].values()) for c in CLASSES}
        logger.info("speech commands %s: %d clips -> %s; per class %s", split, len(t["wav"]), target, counts)
        written[split] = target
    return written
