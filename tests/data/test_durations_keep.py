"""`data durations` never replaces a utt2dur / reco2dur it did not write without --overwrite, and then
keeps the original in .backup (README: no command overwrites what it did not write)."""

from __future__ import annotations

import pytest

from speechssl.cli.main import main
from speechssl.data.datadir import compute_durations

HAND = "spk1-utt1 0.37\nspk1-utt2 0.41\nspk2-utt1 0.39\nspk2-utt2 0.43\n"


def test_a_hand_written_utt2dur_is_refused_naming_its_first_differing_line(data_dir):
    d = data_dir.path
    (d / "utt2dur").write_text(HAND)
    with pytest.raises(
        ValueError, match=r"utt2dur: line 1: 'spk1-utt1' 0.37 s, the audio says 0.5 s; .*--overwrite"
    ):
        compute_durations(d, progress=False)
    assert (d / "utt2dur").read_text() == HAND
    assert not (d / ".backup").exists()


def test_overwrite_keeps_the_original_in_backup(data_dir, capsys):
    d = data_dir.path
    (d / "utt2dur").write_text(HAND)
    assert main(["data", "durations", str(d), "--overwrite"]) == 0
    assert capsys.readouterr().out.strip().endswith(f"; originals in {d / '.backup'}")
    assert (d / ".backup" / "utt2dur").read_text() == HAND
    assert (d / "utt2dur").read_text().startswith("spk1-utt1 0.5\n")


def test_its_own_utt2dur_is_rewritten_and_an_equal_one_left_alone(data_dir, capsys):
    d = data_dir.path
    (d / "utt2dur").unlink()
    assert main(["data", "durations", str(d)]) == 0
    assert main(["data", "durations", str(d)]) == 0  # equal: nothing to write
    assert capsys.readouterr().out.splitlines()[-1].endswith("; nothing written")
    (d / "wav.scp").write_text((d / "wav.scp").read_text().replace("spk1-utt1.wav", "spk1-utt2.wav"))
    assert main(["data", "durations", str(d)]) == 0  # the audio changed: its own file is replaced
    assert (d / "utt2dur").read_text().startswith("spk1-utt1 0.6\n")
    assert not (d / ".backup").exists()


def test_reco2dur_of_another_tool_is_refused_too(segmented_data_dir):
    d = segmented_data_dir.path
    (d / "utt2dur").unlink()
    (d / "reco2dur").write_text("spk1-rec 1.2\nspk2-rec 1.16\n")
    with pytest.raises(ValueError, match=r"reco2dur: line 1: 'spk1-rec' 1.2 s, the audio says 1.1 s"):
        compute_durations(d, progress=False)
    assert not (d / "utt2dur").exists()  # nothing written
