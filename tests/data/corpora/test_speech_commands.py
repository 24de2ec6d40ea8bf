"""Speech Commands v0.02 preparation on a fake tree the test builds (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechssl.data.corpora.speech_commands import CLASSES, prepare_speech_commands
from speechssl.data.datadir import DataDir
from speechssl.data.validate import validate_data_dir
from speechssl.testing.cli import run_cli, run_data_sh

REPO = Path(__file__).resolve().parents[3]


def _wav(path: Path, seconds: float, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(
        path, (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000, subtype="PCM_16"
    )


def make_fake_speech_commands(root: Path) -> Path:
    """yes, no (keywords), bed, wow (unknown words); 2 speakers x 2 clips each; 2 noise files
    of 5.5 s and 6 s (5 + 6 = 11 silence chunks)."""
    dev, test = [], []
    for w, word in enumerate(("yes", "no", "bed", "wow")):
        for s, spk in enumerate(("0a7c2a8d", "ffd2ba2f")):
            for n in range(2):
                rel = f"{word}/{spk}_nohash_{n}.wav"
                _wav(root / rel, 0.5 + 0.1 * n, seed=100 * w + 10 * s + n)
                if s == 1:
                    (dev if n == 0 else test).append(rel)
    _wav(root / "_background_noise_" / "white_noise.wav", 5.5, seed=1)
    _wav(root / "_background_noise_" / "running_tap.wav", 6.0, seed=2)
    (root / "_background_noise_" / "README.md").write_text("noise\n")
    (root / "validation_list.txt").write_text("".join(f"{r}\n" for r in dev))
    (root / "testing_list.txt").write_text("".join(f"{r}\n" for r in test))
    return root


def test_twelve_class_protocol_and_splits(tmp_path):
    root = make_fake_speech_commands(tmp_path / "speech_commands_v0.02")
    written = prepare_speech_commands(root, tmp_path / "ks")
    assert sorted(written) == ["dev", "test", "train"]
    data = {split: DataDir.load(path) for split, path in written.items()}
    for split, path in written.items():
        assert validate_data_dir(path) == [], split
    # speaker 0a7c2a8d only in train; ffd2ba2f clip 0 in dev, clip 1 in test
    assert data["train"].text["0a7c2a8d-yes-0"] == "yes"
    assert data["train"].text["0a7c2a8d-bed-1"] == "_unknown_"
    assert data["dev"].text["ffd2ba2f-wow-0"] == "_unknown_"
    assert data["test"].text["ffd2ba2f-no-1"] == "no"
    assert data["train"].utt2spk["0a7c2a8d-yes-0"] == "0a7c2a8d"
    assert not any("ffd2ba2f" in u for u in data["train"].utt_ids())
    # 11 one-second silence chunks: index % 10 == 0 -> test, == 1 -> dev, the rest train
    silence = {s: [u for u, t in d.text.items() if t == "_silence_"] for s, d in data.items()}
    assert [len(silence[s]) for s in ("train", "dev", "test")] == [8, 1, 2]
    chunk = silence["train"][0]
    assert data["train"].utt2dur[chunk] == pytest.approx(1.0, abs=1e-3)
    assert Path(data["train"].wav_scp[chunk]).parent == tmp_path / "ks" / "_silence_"
    assert set().union(*(set(d.text.values()) for d in data.values())) <= set(CLASSES)
    assert len(CLASSES) == 12


def test_silence_chunks_are_cut_from_the_noise(tmp_path):
    root = make_fake_speech_commands(tmp_path / "sc")
    prepare_speech_commands(root, tmp_path / "ks")
    noise, _ = sf.read(root / "_background_noise_" / "running_tap.wav", dtype="float32")
    chunk, _ = sf.read(
        tmp_path / "ks" / "_silence_" / "noise-_silence_-running_tap-0002.wav", dtype="float32"
    )
    np.testing.assert_allclose(chunk, noise[32000:48000], atol=1e-4)


def test_missing_root_and_bad_lists_are_named(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="Speech Commands root .*/nowhere does not exist.*downloads nothing"
    ):
        prepare_speech_commands(tmp_path / "nowhere", tmp_path / "ks")
    root = make_fake_speech_commands(tmp_path / "sc")
    (root / "testing_list.txt").unlink()
    with pytest.raises(FileNotFoundError, match="is not Speech Commands v0.02: testing_list.txt not found"):
        prepare_speech_commands(root, tmp_path / "ks")
    (root / "testing_list.txt").write_text("yes/0a7c2a8d_nohash_0.wav\nyes/missing_nohash_9.wav\n")
    with pytest.raises(FileNotFoundError, match=r"testing_list.txt:2: .*missing_nohash_9.wav does not exist"):
        prepare_speech_commands(root, tmp_path / "ks")


def test_cli_prepare_speech_commands(tmp_path, capsys):
    root = make_fake_speech_commands(tmp_path / "sc")
    assert run_cli("prepare", "speech_commands", "--root", root, "--out", tmp_path / "ks", "--nj", "1") == 0
    assert (tmp_path / "ks" / "test" / "utt2dur").is_file()
    assert run_cli("prepare", "speech_commands", "--root", tmp_path / "no", "--out", tmp_path / "x") == 1
    assert "does not exist" in capsys.readouterr().err


def test_recipe_data_sh_names_the_option_to_pass(tmp_path):
    egs = REPO / "egs" / "speech_commands" / "superb1"
    proc = run_data_sh(egs, tmp_path / "data")
    assert proc.returncode == 2 and "--speech_commands_dir" in proc.stderr
    proc = run_data_sh(egs, "--speech_commands_dir", tmp_path / "nowhere", tmp_path / "data")
    assert (
        proc.returncode == 2 and f"--speech_commands_dir {tmp_path / 'nowhere'} does not exist" in proc.stderr
    )
    root = make_fake_speech_commands(tmp_path / "sc")
    proc = run_data_sh(egs, "--speech_commands_dir", root, tmp_path / "data", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "data" / "ks" / "dev" / "text").is_file()
