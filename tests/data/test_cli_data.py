"""`speechssl data validate|fix|durations`: exit codes and what is printed."""

from __future__ import annotations

import re

import pytest

from speechssl.cli.main import main
from speechssl.testing.datadirs import make_data_dir, plant_defect


def test_validate_good_dir_prints_summary(data_dir, capsys):
    assert main(["data", "validate", str(data_dir.path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{data_dir.path}: OK: 4 utterances, 2 speakers, 4 recordings, 0.001 hours (2.3 s)")


def test_validate_bad_dir_prints_every_problem_and_exits_1(tmp_path, capsys):
    data = make_data_dir(tmp_path, segments=True)
    planted = [
        plant_defect(data.path, d) for d in ("segment_start_ge_end", "empty_transcript", "malformed_line")
    ]
    assert main(["data", "validate", str(data.path)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 3
    for p in planted:
        assert any(re.match(p.expected, line) for line in lines), (p.expected, lines)
    assert f"{data.path}: 3 problem(s)" in captured.err


def test_validate_no_audio_skips_headers(data_dir, capsys):
    plant_defect(data_dir.path, "corrupt_audio")
    assert main(["data", "validate", str(data_dir.path)]) == 1
    assert "cannot read audio header" in capsys.readouterr().out
    # --no-audio skips the header check; the summary then comes from utt2dur.
    assert main(["data", "validate", "--no-audio", str(data_dir.path)]) == 0
    # and without utt2dur it reads no audio either: the hours are unknown (it failed on the audio)
    (data_dir.path / "utt2dur").unlink()
    capsys.readouterr()
    assert main(["data", "validate", "--no-audio", str(data_dir.path)]) == 0
    assert "4 recordings, hours unknown (no utt2dur or segments;" in capsys.readouterr().out


def test_validate_missing_dir_is_one_line_error(tmp_path, capsys):
    assert main(["data", "validate", str(tmp_path / "nope")]) == 1
    assert (
        capsys.readouterr().err.strip()
        == f"speechssl data: error: data dir {tmp_path / 'nope'} does not exist"
    )


def test_fix_reports_dropped_ids_then_validates(data_dir, capsys):
    planted = plant_defect(data_dir.path, "text_extra_utt")
    assert main(["data", "fix", str(data_dir.path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"dropped utterance '{planted.key}': missing or malformed in utt2spk, wav.scp, utt2dur"
    assert out[1] == (
        f"{data_dir.path}: kept 4 utterances, dropped 1; changed text; "
        f"originals in {data_dir.path / '.backup'}"
    )
    assert main(["data", "validate", str(data_dir.path)]) == 0


def test_durations_writes_utt2dur(segmented_data_dir, capsys):
    d = segmented_data_dir.path
    (d / "utt2dur").unlink()
    assert main(["data", "durations", str(d), "--nj", "2"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"{d}: wrote utt2dur and reco2dur for 4 utterances (0.001 hours)"
    assert "durations: 100%" in captured.err  # tqdm progress bar
    assert (d / "utt2dur").read_text() == "spk1-utt1 0.5\nspk1-utt2 0.6\nspk2-utt1 0.53\nspk2-utt2 0.63\n"


@pytest.mark.parametrize("nj", ["0", "-1"])
def test_durations_rejects_bad_nj(data_dir, capsys, nj):
    assert main(["data", "durations", str(data_dir.path), "--nj", nj]) == 1
    assert f"--nj must be at least 1, found {nj}" in capsys.readouterr().err


def test_durations_pipe_entry_names_policy(data_dir, capsys):
    wav_scp = data_dir.path / "wav.scp"
    wav_scp.write_text(wav_scp.read_text().replace(data_dir.wav_scp["spk1-utt1"], "sox in.flac -t wav - |"))
    assert main(["data", "durations", str(data_dir.path)]) == 1
    err = capsys.readouterr().err
    assert (
        f"{wav_scp}:1: 'spk1-utt1' Kaldi pipe entries (`cmd |`) are not supported: "
        "write the audio to files first"
    ) in err
