"""LibriSpeech preparation on a fake tree the test builds (nothing is downloaded)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from speechssl.data.corpora.librispeech import prepare_librispeech
from speechssl.data.datadir import DataDir
from speechssl.data.validate import validate_data_dir


def make_fake_librispeech(
    root, subset="dev-clean", readers=(("84", "121123"), ("174", "50561")), per_chapter=2
):
    rng = np.random.default_rng(0)
    for reader, chapter in readers:
        chapter_dir = root / subset / reader / chapter
        chapter_dir.mkdir(parents=True)
        lines = []
        for i in range(per_chapter):
            utt = f"{reader}-{chapter}-{i:04d}"
            seconds = 0.5 + 0.25 * i
            sf.write(chapter_dir / f"{utt}.flac", 0.1 * rng.standard_normal(int(16000 * seconds)), 16000)
            lines.append(f"{utt} HELLO WORLD NUMBER {i}")
        (chapter_dir / f"{reader}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_prepares_valid_data_dirs_with_kaldi_speaker_convention(tmp_path):
    root = make_fake_librispeech(tmp_path / "LibriSpeech")
    written = prepare_librispeech(root, tmp_path / "data", ["dev-clean"])
    data_dir = written["dev-clean"]
    assert data_dir.name == "dev_clean"
    assert validate_data_dir(data_dir) == []
    data = DataDir.load(data_dir)
    assert data.utt_ids() == ["174-50561-0000", "174-50561-0001", "84-121123-0000", "84-121123-0001"]
    assert data.utt2spk["84-121123-0001"] == "84-121123"
    assert data.text["84-121123-0001"] == "HELLO WORLD NUMBER 1"
    assert data.utt2dur["84-121123-0001"] == pytest.approx(0.75, abs=1e-3)


def test_missing_root_or_subset_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="downloads nothing.*pass the folder that holds the subsets"):
        prepare_librispeech(tmp_path / "nowhere", tmp_path / "data", ["dev-clean"])
    root = make_fake_librispeech(tmp_path / "LibriSpeech")
    with pytest.raises(FileNotFoundError, match=r"subset test-clean not found .*\(found: dev-clean\)"):
        prepare_librispeech(root, tmp_path / "data", ["test-clean"])
    with pytest.raises(ValueError, match="unknown LibriSpeech subset 'dev_clean'"):
        prepare_librispeech(root, tmp_path / "data", ["dev_clean"])


def test_transcript_audio_mismatch_names_the_chapter(tmp_path):
    root = make_fake_librispeech(tmp_path / "LibriSpeech")
    (root / "dev-clean" / "84" / "121123" / "84-121123-0001.flac").unlink()
    with pytest.raises(
        ValueError, match=r"121123: transcripts and .flac files disagree \(no audio for \['84-121123-0001'\]"
    ):
        prepare_librispeech(root, tmp_path / "data", ["dev-clean"])


def test_recipe_data_stage_prepares_subsets_and_train_960(tmp_path):
    """egs/librispeech/ssl1/local/data.sh on a fake tree: the subsets and their union."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    root = tmp_path / "LibriSpeech"
    for i, subset in enumerate(("train-clean-100", "train-clean-360", "train-other-500", "dev-clean")):
        make_fake_librispeech(root, subset, readers=((str(100 + i), "1000"),), per_chapter=2)
    cwd = tmp_path / "ssl1"
    shutil.copytree(repo / "egs/librispeech/ssl1/local", cwd / "local")
    (cwd / "utils").symlink_to(repo / "recipes/utils")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    subsets = "train-clean-100 train-clean-360 train-other-500 dev-clean"
    run = subprocess.run(["local/data.sh", "--librispeech_dir", str(root), "--subsets", subsets, "--nj", "1"],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert validate_data_dir(cwd / "data/train_960") == []
    assert len(DataDir.load(cwd / "data/train_960").utt_ids()) == 6
    missing = subprocess.run(["local/data.sh"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "--librispeech_dir is required" in missing.stderr


def test_combine_refuses_an_id_in_two_sources(tmp_path):
    from speechssl.data.datadir import combine_data_dirs

    root = make_fake_librispeech(tmp_path / "LibriSpeech")
    prepare_librispeech(root, tmp_path / "a", ["dev-clean"])
    prepare_librispeech(root, tmp_path / "b", ["dev-clean"])
    with pytest.raises(ValueError, match=r"id '174-50561-0000' of wav.scp is in more than one source"):
        combine_data_dirs(tmp_path / "c", [tmp_path / "a/dev_clean", tmp_path / "b/dev_clean"])


def test_a_subset_dir_with_foreign_files_is_refused_before_anything_is_written(tmp_path, capsys):
    from speechssl.cli.main import main

    root = make_fake_librispeech(tmp_path / "LibriSpeech")
    mine = tmp_path / "data" / "dev_clean"
    mine.mkdir(parents=True)
    (mine / "wav.scp").write_text("my-utt /my/audio.wav\n")
    args = [
        "prepare",
        "librispeech",
        "--root",
        str(root),
        "--out",
        str(tmp_path / "data"),
        "--subsets",
        "dev-clean",
    ]
    assert main(args) == 1
    assert (
        "already holds files that `speechssl prepare librispeech` did not write (wav.scp)"
        in capsys.readouterr().err
    )
    assert (mine / "wav.scp").read_text() == "my-utt /my/audio.wav\n"
    assert sorted(p.name for p in mine.iterdir()) == ["wav.scp"]
    assert main([*args, "--overwrite"]) == 0  # the user said so
    assert len((mine / "wav.scp").read_text().splitlines()) == 4
    assert main(args) == 0  # its own earlier output: re-running is safe
