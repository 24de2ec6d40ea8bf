"""VoxCeleb1 (Nagrani et al. 2017) from a local copy -> SUPERB SID and ASV data dirs.

Layout expected under `root`:

    wav/<speaker>/<video>/<nnnnn>.wav     speakers id10001 .. id11251 (the dev and test
                                          archives unpacked into one wav/, or kept apart as
                                          vox1_dev_wav/wav and vox1_test_wav/wav)
    iden_split.txt                        `<1|2|3> <speaker>/<video>/<nnnnn>.wav`
    veri_test2.txt                        `<1|0> <enroll wav> <test wav>` (cleaned VoxCeleb1-O)

Utterance ids are `<speaker>-<video>-<nnnnn>`, speakers `<speaker>`.

SID (SUPERB): iden_split 1 -> train, 2 -> dev, 3 -> test; 1,251 speakers in every split.

ASV (SUPERB trains on VoxCeleb1 dev, scores VoxCeleb1-O): the speakers of the trial
list (id10270-id10309) are held out. `asv/test` holds every utterance of the trial
list and its `trials` (`enroll test target|nontarget`). The other speakers'
iden-split-2 utterances form `asv/dev`, whose trials (one target and one nontarget
partner per utterance, seeded) pick the checkpoint; the rest is `asv/train`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from speechssl.data.datadir import write_data_dir, write_durations
from speechssl.data.kaldi import read_lines
from speechssl.data.trials import format_trials, make_trials
from speechssl.io import atomic_write_text
from speechssl.outputs import claim_directories

logger = logging.getLogger(__name__)

IDEN_SPLITS = {"1": "train", "2": "dev", "3": "test"}
WAV_DIRS = ("wav", "vox1_dev_wav/wav", "vox1_test_wav/wav")


def _wav_roots(root: Path) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(
            f"VoxCeleb1 root {root} does not exist. speechssl downloads nothing: "
            "get VoxCeleb1 yourself, unpack it, and pass the folder that holds wav/ "
            "(or vox1_dev_wav/wav and vox1_test_wav/wav), iden_split.txt and veri_test2.txt"
        )
    found = [root / d for d in WAV_DIRS if (root / d).is_dir()]
    if not found:
        raise FileNotFoundError(f"{root}: no wav/ folder (looked for {', '.join(WAV_DIRS)})")
    return found


def utt_id(rel: str) -> tuple[str, str]:
    """'id10001/1zcIwhmdeo4/00001.wav' -> ('id10001-1zcIwhmdeo4-00001', 'id10001')."""
    parts = rel.split("/")
    if len(parts) != 3 or not parts[2].endswith(".wav"):
        raise ValueError(f"expected '<speaker>/<video>/<nnnnn>.wav', found '{rel}'")
    return f"{parts[0]}-{parts[1]}-{parts[2][:-4]}", parts[0]


class _Resolver:
    """Relative wav path -> absolute path, across the wav roots."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots

    def __call__(self, rel: str, where: str) -> str:
        for base in self.roots:
            path = base / rel
            if path.is_file():
                return str(path.resolve())
        raise FileNotFoundError(f"{where}: {rel} not found under {', '.join(map(str, self.roots))}")


def read_iden_split(path: Path) -> list[tuple[int, str, str]]:
    """(line, split name, relative wav) per line of iden_split.txt."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (VoxCeleb1's identification split list)")
    rows = []
    for lineno, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in IDEN_SPLITS:
            raise ValueError(
                f"{path}:{lineno}: expected '<1|2|3> <speaker>/<video>/<nnnnn>.wav', found '{line.strip()}'"
            )
        rows.append((lineno, IDEN_SPLITS[parts[0]], parts[1]))
    return rows


def read_veri_trials(path: Path) -> list[tuple[int, str, str, bool]]:
    """(line, enroll wav, test wav, is_target) per line of veri_test2.txt."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (VoxCeleb1-O trial list, veri_test2.txt)")
    rows = []
    for lineno, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise ValueError(
                f"{path}:{lineno}: expected '<1|0> <enroll wav> <test wav>', found '{line.strip()}'"
            )
        rows.append((lineno, parts[1], parts[2], parts[0] == "1"))
    return rows


def _write(target: Path, wavs: dict[str, str], nj: int) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    write_data_dir(target, wavs, utt2spk={u: u.split("-")[0] for u in wavs})
    write_durations(target, nj=nj)
    return target


def prepare_voxceleb1(
    root: str | Path,
    out_dir: str | Path,
    *,
    tasks: tuple[str, ...] = ("sid", "asv"),
    iden_split: str | Path | None = None,
    veri_trials: str | Path | None = None,
    seed: int = 0,
    nj: int = 1,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write out_dir/sid/{train,dev,test} and/or out_dir/asv/{train,dev,test} (with trials).
    iden_split / veri_trials default to root/iden_split.txt and root/veri_test2.txt. A target dir
    with files this command did not write is refused unless `overwrite`."""
    root, out_dir = Path(root), Path(out_dir)
    for task in tasks:
        if task not in ("sid", "asv"):
            raise ValueError(f"unknown VoxCeleb1 task '{task}'; valid: sid, asv")
    resolve = _Resolver(_wav_roots(root))
    iden_path = Path(iden_split) if iden_split else root / "iden_split.txt"
    rows = read_iden_split(iden_path)
    written = {}
    splits: dict[str, dict[str, str]] = {"train": {}, "dev": {}, "test": {}}
    for lineno, split, rel in rows:
        utt, _ = utt_id(rel)
        splits[split][utt] = resolve(rel, f"{iden_path}:{lineno}")
    trial_path = Path(veri_trials) if veri_trials else root / "veri_test2.txt"
    trials = read_veri_trials(trial_path) if "asv" in tasks else []  # every input read before any output
    targets = [out_dir / task / split for task in tasks for split in ("train", "dev", "test")]
    claim_directories(targets, "prepare voxceleb1", overwrite=overwrite, inputs=(root,))
    if "sid" in tasks:
        for split, wavs in splits.items():
            if not wavs:
                raise ValueError(f"{iden_path}: no utterances in split {split}")
            written[f"sid/{split}"] = _write(out_dir / "sid" / split, wavs, nj)
    if "asv" in tasks:
        test: dict[str, str] = {}
        lines = []
        for lineno, a, b, target in trials:
            ids = []
            for rel in (a, b):
                utt, _ = utt_id(rel)
                test.setdefault(utt, resolve(rel, f"{trial_path}:{lineno}"))
                ids.append(utt)
            lines.append(f"{ids[0]} {ids[1]} {'target' if target else 'nontarget'}\n")
        held_out = {u.split("-")[0] for u in test}
        train = {
            u: p for s in ("train", "test") for u, p in splits[s].items() if u.split("-")[0] not in held_out
        }
        dev = {u: p for u, p in splits["dev"].items() if u.split("-")[0] not in held_out}
        if not train or not dev:
            raise ValueError(f"{iden_path}: no training speakers left outside the trial list {trial_path}")
        written["asv/train"] = _write(out_dir / "asv" / "train", train, nj)
        written["asv/dev"] = _write(out_dir / "asv" / "dev", dev, nj)
        pairs = make_trials({u: u.split("-")[0] for u in dev}, per_utterance=1, seed=seed)
        atomic_write_text(out_dir / "asv" / "dev" / "trials", format_trials(pairs))
        written["asv/test"] = _write(out_dir / "asv" / "test", test, nj)
        atomic_write_text(out_dir / "asv" / "test" / "trials", "".join(lines))
        logger.info(
            "voxceleb1 asv: %d train / %d dev utterances (%d speakers); %d test trials over %d speakers",
            len(train),
            len(dev),
            len({u.split("-")[0] for u in train}),
            len(lines),
            len(held_out),
        )
    return written
