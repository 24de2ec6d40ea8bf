"""VoxCeleb1 preparation (SID and ASV) on a fake tree the test builds (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechssl.data.corpora.voxceleb1 import prepare_voxceleb1
from speechssl.data.datadir import DataDir
from speechssl.data.validate import validate_data_dir
from speechssl.testing.cli import run_cli, run_data_sh

REPO = Path(__file__).resolve().parents[3]
TRAIN_SPEAKERS = ("id10001", "id10002", "id10003")
TEST_SPEAKERS = ("id10270", "id10271")


def make_fake_voxceleb1(root: Path, *, split_archives: bool = False) -> Path:
    """5 speakers x 2 videos x 2 segments (0.3 s wavs); iden split by segment/video;
    veri_test2.txt over the two test speakers."""
    rng = np.random.default_rng(0)
    iden = []
    for spk in TRAIN_SPEAKERS + TEST_SPEAKERS:
        base = (
            root / ("vox1_test_wav" if spk in TEST_SPEAKERS else "vox1_dev_wav") / "wav"
            if split_archives
            else root / "wav"
        )
        for v, video in enumerate(("a-B_c1", "Zz9")):
            for n in (1, 2):
                rel = f"{spk}/{video}/{n:05d}.wav"
                (base / rel).parent.mkdir(parents=True, exist_ok=True)
                sf.write(
                    base / rel, 0.1 * rng.standard_normal(4800).astype(np.float32), 16000, subtype="PCM_16"
                )
                iden.append(f"{1 if v == 0 else n + 1} {rel}")  # video 0 -> train, video 1 -> dev / test
    (root / "iden_split.txt").write_text("\n".join(iden) + "\n")
    (root / "veri_test2.txt").write_text(
        "1 id10270/a-B_c1/00001.wav id10270/Zz9/00002.wav\n"
        "0 id10270/a-B_c1/00001.wav id10271/Zz9/00001.wav\n"
        "0 id10271/a-B_c1/00002.wav id10270/Zz9/00001.wav\n"
    )
    return root


def test_sid_follows_iden_split(tmp_path):
    root = make_fake_voxceleb1(tmp_path / "VoxCeleb1")
    written = prepare_voxceleb1(root, tmp_path / "data", tasks=("sid",))
    assert sorted(written) == ["sid/dev", "sid/test", "sid/train"]
    train, dev, test = (DataDir.load(written[f"sid/{s}"]) for s in ("train", "dev", "test"))
    for path in written.values():
        assert validate_data_dir(path) == []
    assert len(train.utt_ids()) == 10 and len(dev.utt_ids()) == 5 and len(test.utt_ids()) == 5
    assert "id10001-a-B_c1-00001" in train.utt_ids()
    assert dev.utt_ids()[0] == "id10001-Zz9-00001" and test.utt_ids()[0] == "id10001-Zz9-00002"
    assert train.utt2spk["id10001-a-B_c1-00002"] == "id10001"
    assert set(train.utt2spk.values()) == set(TRAIN_SPEAKERS + TEST_SPEAKERS)
    assert train.utt2dur["id10001-a-B_c1-00001"] == pytest.approx(0.3, abs=1e-3)


def test_asv_holds_out_trial_speakers(tmp_path):
    root = make_fake_voxceleb1(tmp_path / "VoxCeleb1", split_archives=True)
    written = prepare_voxceleb1(root, tmp_path / "data", tasks=("asv",))
    train, dev, test = (DataDir.load(written[f"asv/{s}"]) for s in ("train", "dev", "test"))
    assert set(train.utt2spk.values()) == set(dev.utt2spk.values()) == set(TRAIN_SPEAKERS)
    assert not set(train.utt_ids()) & set(dev.utt_ids())
    assert len(train.utt_ids()) == 9 and len(dev.utt_ids()) == 3  # iden split 1 + 3 vs split 2
    assert set(test.utt2spk.values()) == set(TEST_SPEAKERS) and len(test.utt_ids()) == 5
    assert (written["asv/test"] / "trials").read_text().splitlines() == [
        "id10270-a-B_c1-00001 id10270-Zz9-00002 target",
        "id10270-a-B_c1-00001 id10271-Zz9-00001 nontarget",
        "id10271-a-B_c1-00002 id10270-Zz9-00001 nontarget",
    ]
    dev_trials = [line.split() for line in (written["asv/dev"] / "trials").read_text().splitlines()]
    assert {t for *_, t in dev_trials} == {"nontarget"}  # one dev utterance per speaker here: no target pair
    for a, b, kind in dev_trials:
        assert (
            a in dev.utt2spk and b in dev.utt2spk and (dev.utt2spk[a] == dev.utt2spk[b]) == (kind == "target")
        )
    again = prepare_voxceleb1(root, tmp_path / "again", tasks=("asv",))
    assert (again["asv/dev"] / "trials").read_text() == (written["asv/dev"] / "trials").read_text()  # seeded


def test_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="VoxCeleb1 root .*/nowhere does not exist.*downloads nothing"
    ):
        prepare_voxceleb1(tmp_path / "nowhere", tmp_path / "data")
    root = make_fake_voxceleb1(tmp_path / "VoxCeleb1")
    (root / "iden_split.txt").write_text("1 id10001/a-B_c1/00001.wav\n4 id10001/a-B_c1/00002.wav\n")
    with pytest.raises(ValueError, match=r"iden_split.txt:2: expected '<1\|2\|3> "):
        prepare_voxceleb1(root, tmp_path / "data")
    (root / "iden_split.txt").write_text("1 id10001/a-B_c1/00001.wav\n3 id10009/x/00001.wav\n")
    with pytest.raises(FileNotFoundError, match=r"iden_split.txt:2: id10009/x/00001.wav not found under"):
        prepare_voxceleb1(root, tmp_path / "data")


def test_cli_and_recipe_data_sh(tmp_path, capsys):
    root = make_fake_voxceleb1(tmp_path / "VoxCeleb1")
    assert run_cli("prepare", "voxceleb1", "--root", root, "--out", tmp_path / "data", "--nj", "1") == 0
    assert (tmp_path / "data" / "asv" / "test" / "trials").is_file()
    assert (tmp_path / "data" / "sid" / "dev" / "utt2dur").is_file()
    egs = REPO / "egs" / "voxceleb1" / "superb1"
    proc = run_data_sh(egs, tmp_path / "d")
    assert proc.returncode == 2 and "--voxceleb1_dir" in proc.stderr
    proc = run_data_sh(egs, "--voxceleb1_dir", tmp_path / "nowhere", tmp_path / "d")
    assert proc.returncode == 2 and f"--voxceleb1_dir {tmp_path / 'nowhere'} does not exist" in proc.stderr
