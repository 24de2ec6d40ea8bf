"""Session fixtures: a tiny corpus laid out per task, and a tiny HuBERT checkpoint.

The corpus is the embedded synthetic one (speechssl.data.synth, hours=0.01) when
espeak-ng is usable, else tone "utterances" written here with the same files
(text, phones, intent, utt2spk, trials)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from speechssl.data.kaldi import read_table, write_table
from speechssl.io import atomic_write_text
from speechssl.testing.datadirs import write_tone

TASK_SUBSETS = {"pr": "read", "asr": "read", "sid": "read", "ks": "keywords", "ic": "commands"}


def _tone_corpus(root: Path) -> None:
    """Same layout as the synthetic corpus, from sine tones whose pitch carries the label."""
    keywords = ["yes", "no", "up", "down"]
    intents = ["activate lights kitchen", "deactivate music none", "increase heat bedroom"]
    phones = ["a b c", "b c", "c a b a", "a c"]
    rng = np.random.default_rng(0)
    for subset, count in (("read", 4), ("keywords", 8), ("commands", 6), ("asv", 6)):
        for split in ("test",) if subset == "asv" else ("train", "dev", "test"):
            d = root / subset / split
            d.mkdir(parents=True)
            tables: dict[str, dict[str, str]] = {
                n: {} for n in ("wav.scp", "utt2spk", "text", "phones", "intent", "utt2dur")
            }
            for k in range(count):
                spk = f"spk{k % 3 + (10 if subset == 'asv' else 1):03d}"
                utt = f"{spk}-{subset}-{split}-{k:04d}"
                label = k % 4
                seconds = round(0.6 + 0.1 * rng.integers(0, 4), 2)
                tables["wav.scp"][utt] = write_tone(
                    root / "wav" / f"{utt}.wav", seconds, freq=200.0 + 100 * label
                )
                tables["utt2spk"][utt] = spk
                tables["text"][utt] = keywords[label] if subset == "keywords" else f"{keywords[label]} go"
                tables["phones"][utt] = phones[label]
                tables["intent"][utt] = intents[k % 3]
                tables["utt2dur"][utt] = f"{seconds}"
            for name, table in tables.items():
                if name != "intent" or subset == "commands":
                    write_table(d / name, table)
            spk2utt: dict[str, list[str]] = {}
            for utt, spk in sorted(tables["utt2spk"].items()):
                spk2utt.setdefault(spk, []).append(utt)
            write_table(d / "spk2utt", spk2utt)
            if subset == "asv":
                ids = sorted(tables["utt2spk"])
                atomic_write_text(
                    d / "trials",
                    "".join(
                        f"{a} {b} "
                        f"{'target' if tables['utt2spk'][a] == tables['utt2spk'][b] else 'nontarget'}\n"
                        for i, a in enumerate(ids)
                        for b in ids[i + 1 :]
                    ),
                )


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    try:
        from speechssl.data.synth import SynthConfig, build_corpus

        build_corpus(SynthConfig(out_dir=str(root), hours=0.01, progress=False))
    except Exception:  # no espeak-ng (or synth not available): tones with the same layout
        import shutil

        shutil.rmtree(root)
        root.mkdir()
        _tone_corpus(root)
    return root


@pytest.fixture(scope="session")
def task_data(corpus, tmp_path_factory) -> dict[str, Path]:
    """task -> dir holding train/dev/test. ASV trains on the keyword speakers and is scored
    on the unseen asv/test speakers (dev = test here, for selection on tiny data). PR and IC
    declare their label inventory in labels.txt (the tiny train split lacks some phones and
    slot values that dev/test have), as a corpus with a fixed phone set and intents does."""
    dirs = {task: corpus / subset for task, subset in TASK_SUBSETS.items()}
    for task, filename in (("pr", "phones"), ("ic", "intent")):
        task_dir = tmp_path_factory.mktemp(f"{task}_task")
        labels: set[str] = set()
        for split in ("train", "dev", "test"):
            (task_dir / split).symlink_to(dirs[task] / split)
            for value in read_table(dirs[task] / split / filename).values():
                labels |= set(value.split()) if task == "pr" else {value}
        atomic_write_text(task_dir / "labels.txt", "".join(f"{label}\n" for label in sorted(labels)))
        dirs[task] = task_dir
    asv = tmp_path_factory.mktemp("asv_task")
    (asv / "train").symlink_to(corpus / "keywords" / "train")
    (asv / "dev").symlink_to(corpus / "asv" / "test")
    (asv / "test").symlink_to(corpus / "asv" / "test")
    dirs["asv"] = asv
    return dirs


@pytest.fixture(scope="session")
def tiny_upstream(tmp_path_factory) -> Path:
    """hubert_tiny (2 layers, 64 dims) with random weights, saved as a speechssl checkpoint."""
    import torch

    from speechssl.models.checkpoint import save_checkpoint
    from speechssl.models.model import build_model
    from speechssl.models.presets import hubert_tiny

    torch.manual_seed(0)
    config = hubert_tiny()
    path = tmp_path_factory.mktemp("up") / "hubert_tiny"
    save_checkpoint(build_model(config), config, path)
    return path
