"""`speechssl data copy`: id prefixes (copy_data_dir.sh), speed and volume perturbation
(perturb_data_dir_speed.sh / _volume.sh): renamed ids, rescaled times, perturbed audio."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf
import torch

from speechssl.data.audio import load_audio
from speechssl.data.datadir import DataDir, combine_data_dirs
from speechssl.data.dataset import AudioDataset
from speechssl.data.perturb import CopyConfig, copy_data_dir, perturb_audio
from speechssl.data.validate import check_data_dir
from speechssl.testing.cli import run_cli
from tests.data.rich_datadir import ctm_lines, make_rich_dir, tables_of, trials_lines


@pytest.fixture(params=[False, True], ids=["wav", "segments"])
def rich(tmp_path, request):
    return make_rich_dir(tmp_path, segments=request.param)


def test_plain_copy_with_prefixes_renames_every_id(rich, tmp_path):
    out = tmp_path / "copy"
    copy_data_dir(rich, out, CopyConfig(utt_prefix="a-", spk_prefix="b-"))
    assert check_data_dir(out).problems == []
    source, result = tables_of(rich), tables_of(out)
    segmented = "segments" in source
    assert set(result) == set(source)  # nothing dropped, no utt2uniq invented (Kaldi's copy_data_dir.sh)
    assert result["utt2spk"] == {f"a-{u}": f"b-{s}" for u, s in source["utt2spk"].items()}
    assert result["text"] == {f"a-{u}": t for u, t in source["text"].items()}
    assert result["spk2gender"] == {f"b-{s}": g for s, g in source["spk2gender"].items()}
    assert result["cmvn.scp"] == {f"b-{s}": v for s, v in source["cmvn.scp"].items()}
    if segmented:  # recordings keep their ids and audio, as Kaldi
        assert result["wav.scp"] == source["wav.scp"]
        assert result["segments"] == {f"a-{u}": v for u, v in source["segments"].items()}
    else:
        assert result["wav.scp"] == {f"a-{u}": p for u, p in source["wav.scp"].items()}
    assert ctm_lines(out) == [[f"a-{u}", *rest] for u, *rest in ctm_lines(rich)]
    assert trials_lines(out) == [[f"a-{a}", f"a-{b}", k] for a, b, k in trials_lines(rich)]
    assert not (out / "wav").exists()  # no audio written


@pytest.mark.parametrize("speed", [0.9, 1.1])
def test_speed_perturbation_divides_every_length_by_the_factor(rich, tmp_path, speed):
    out = tmp_path / "sp"
    result = copy_data_dir(rich, out, CopyConfig(speed=speed), progress=False)
    prefix = f"sp{speed}-"
    assert check_data_dir(out).problems == []  # audio headers included
    source, new = tables_of(rich), tables_of(out)
    assert set(new["utt2spk"]) == {prefix + u for u in source["utt2spk"]}
    assert set(new["utt2spk"].values()) == {prefix + s for s in source["utt2spk"].values()}
    assert new["utt2uniq"] == {prefix + u: u for u in source["utt2spk"]}
    # the audio: ceil(samples / speed) samples at the same rate, for every recording
    for reco, path in source["wav.scp"].items():
        old, new_info = sf.info(path), sf.info(new["wav.scp"][prefix + reco])
        assert new_info.samplerate == old.samplerate and new_info.subtype == old.subtype
        assert abs(new_info.frames - old.frames / speed) <= 1
    # durations, segments and alignments follow the audio
    for utt, seconds in source["utt2dur"].items():
        assert float(new["utt2dur"][prefix + utt]) == pytest.approx(
            float(seconds) / speed, abs=2e-6 + 1 / 16000
        )
    if "segments" in source:
        for utt, value in source["segments"].items():
            reco, start, end = value.split()
            new_reco, new_start, new_end = new["segments"][prefix + utt].split()
            assert new_reco == prefix + reco
            assert (float(new_start), float(new_end)) == pytest.approx(
                (float(start) / speed, float(end) / speed), abs=1e-6
            )
        assert set(new["reco2file_and_channel"]) == {prefix + r for r in source["wav.scp"]}
    for old_line, new_line in zip(ctm_lines(rich), ctm_lines(out), strict=True):
        assert new_line[0] == prefix + old_line[0] and new_line[4] == old_line[4]
        assert float(new_line[2]) == pytest.approx(float(old_line[2]) / speed, abs=1e-6)
        assert float(new_line[3]) == pytest.approx(float(old_line[3]) / speed, abs=1e-6)
    # features of the old audio are not carried; the result says so
    assert "feats.scp" not in new and "cmvn.scp" not in new
    assert "feats.scp (computed from the audio before perturbation)" in result.not_copied
    assert result.seconds == pytest.approx(
        sum(float(s) for s in source["utt2dur"].values()) / speed, rel=1e-4
    )


def test_speed_perturbed_audio_is_the_resampled_signal(tmp_path):
    """A 220 Hz tone at speed 1.1 becomes a 242 Hz tone, 1/1.1 as long (sox `speed`)."""
    d = make_rich_dir(tmp_path, num_speakers=1, utts_per_speaker=1)
    copy_data_dir(d, tmp_path / "sp", CopyConfig(speed=1.1), progress=False)
    data = DataDir.load(tmp_path / "sp")
    (utt,) = data.utterances()
    wav = load_audio(utt.path).numpy()
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    peak = np.argmax(spectrum) * 16000 / len(wav)
    assert peak == pytest.approx(242, abs=16000 / len(wav))
    # the loader reads the new dir: every utterance, the new lengths
    dataset = AudioDataset(tmp_path / "sp")
    assert len(dataset) == 1


def test_perturb_audio_matches_torchaudio_speed():
    torch.manual_seed(0)
    wav = torch.randn(2, 1601)
    ours = perturb_audio(wav, CopyConfig(speed=0.9).speed_fraction, 1.0)
    theirs, _ = __import__("torchaudio").functional.speed(wav, 16000, 0.9)
    assert ours.shape == (2, 1779) and ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_volume_scales_samples_clips_and_keeps_ids(tmp_path):
    d = make_rich_dir(tmp_path, num_speakers=1, utts_per_speaker=2)
    result = copy_data_dir(d, tmp_path / "v", CopyConfig(volume=2.0), progress=False)
    new = tables_of(tmp_path / "v")
    assert set(new["utt2spk"]) == {"spk1-utt1", "spk1-utt2"} and "utt2uniq" not in new
    assert new["utt2dur"] == tables_of(d)["utt2dur"]  # lengths unchanged
    for utt, path in tables_of(d)["wav.scp"].items():
        old, louder = load_audio(path), load_audio(new["wav.scp"][utt])
        assert torch.allclose(louder, 2 * old, atol=2 / 32768)
    assert not any("clipped" in n for n in result.notes)
    loud = copy_data_dir(d, tmp_path / "loud", CopyConfig(volume=20.0, utt_prefix="v-"), progress=False)
    clip_note = next(n for n in loud.notes if "clipped" in n)
    assert re.fullmatch(
        r"\d+ perturbed samples past \[-1, 1\] clipped \(the file format holds no more\),"
        r" in 2 of 2 recordings",
        clip_note,
    )
    assert float(load_audio(tables_of(tmp_path / "loud")["wav.scp"]["v-spk1-utt1"]).abs().max()) <= 1.0
    assert tables_of(tmp_path / "loud")["utt2uniq"] == {
        "v-spk1-utt1": "spk1-utt1",
        "v-spk1-utt2": "spk1-utt2",
    }


def test_speed_copy_combines_with_its_source(tmp_path):
    """utt2uniq is kept by combine (identity for the source), so train + sp0.9 + sp1.1 is one dir."""
    d = make_rich_dir(tmp_path, segments=True)
    copy_data_dir(d, tmp_path / "sp0.9", CopyConfig(speed=0.9), progress=False)
    copy_data_dir(d, tmp_path / "sp1.1", CopyConfig(speed=1.1), progress=False)
    combine_data_dirs(tmp_path / "all", [d, tmp_path / "sp0.9", tmp_path / "sp1.1"])
    assert check_data_dir(tmp_path / "all").problems == []
    uniq = tables_of(tmp_path / "all")["utt2uniq"]
    assert len(uniq) == 27 and uniq["spk1-utt1"] == uniq["sp0.9-spk1-utt1"] == uniq["sp1.1-spk1-utt1"]
    assert len(ctm_lines(tmp_path / "all")) == 3 * len(ctm_lines(d))


def test_cli_copy_speed_prints_and_writes_under_out(tmp_path, capsys):
    d = make_rich_dir(tmp_path, num_speakers=1, utts_per_speaker=2)
    out = tmp_path / "sp"
    assert run_cli("data", "copy", "--data", d, "--out", out, "--speed", "0.9", "--nj", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{out}: 2 of 2 utterances, 1 of 1 speakers")
    assert "feats.scp (computed from the audio before perturbation)" in lines[1]
    assert sorted(p.name for p in (out / "wav").iterdir()) == ["sp0.9-spk1-utt1.wav", "sp0.9-spk1-utt2.wav"]
    assert all(path.startswith(str(out.resolve() / "wav")) for path in tables_of(out)["wav.scp"].values())
    # a re-run replaces its own output whole
    assert run_cli("data", "copy", "--data", d, "--out", out, "--speed", "1.1") == 0
    assert sorted(p.name for p in (out / "wav").iterdir()) == ["sp1.1-spk1-utt1.wav", "sp1.1-spk1-utt2.wav"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--speed", "3"], r"speed must be between 0.5 and 2.0 \(sox speed factor\), found 3.0"),
        (["--speed", "0.9001"], "speed must have at most 3 decimals"),
        (["--volume", "0"], "volume must be a factor > 0, found 0.0"),
        (["--utt-prefix", "a b-"], "--utt-prefix 'a b-' must not contain whitespace"),
        (["--speed", "0.9", "--nj", "0"], "--nj must be at least 1, found 0"),
    ],
)
def test_cli_refusals_are_one_line(tmp_path, capsys, argv, message):
    d = make_rich_dir(tmp_path, num_speakers=1, utts_per_speaker=2)
    assert run_cli("data", "copy", "--data", d, "--out", tmp_path / "o", *argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "o").exists()


def test_missing_audio_names_the_recording_and_writes_nothing(tmp_path, capsys):
    d = make_rich_dir(tmp_path, num_speakers=1, utts_per_speaker=2)
    missing = tables_of(d)["wav.scp"]["spk1-utt2"]
    (tmp_path / "audio" / "spk1-utt2.wav").unlink()
    assert run_cli("data", "copy", "--data", d, "--out", tmp_path / "o", "--speed", "1.1") == 1
    err = capsys.readouterr().err
    assert f"utterance 'spk1-utt2' ({missing}): file not found" in err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))


def test_segmented_copy_with_prefix_combines_with_its_source(tmp_path):
    """Kaldi's copy keeps recording ids; combine accepts a recording in two sources when it names
    the same audio, and refuses it when it does not."""
    d = make_rich_dir(tmp_path, segments=True)
    copy_data_dir(d, tmp_path / "c", CopyConfig(utt_prefix="c-", spk_prefix="c-"))
    combine_data_dirs(tmp_path / "all", [d, tmp_path / "c"])
    assert check_data_dir(tmp_path / "all").problems == []
    assert len(tables_of(tmp_path / "all")["wav.scp"]) == 3
    wav_scp = tmp_path / "c" / "wav.scp"
    wav_scp.write_text(wav_scp.read_text().replace("spk1-rec.wav", "spk2-rec.wav", 1))
    with pytest.raises(
        ValueError, match=r"id 'spk1-rec' of wav.scp is in more than one source with another value"
    ):
        combine_data_dirs(tmp_path / "all2", [d, tmp_path / "c"])


def test_copy_refuses_an_out_that_holds_the_audio_of_its_input(tmp_path):
    """A perturbed copy, a plain copy of it (listing its audio), then a new perturbation written over
    the first: the swap would delete the audio the input lists. Refused, nothing changes."""
    from speechssl.data.perturb import CopyConfig, copy_data_dir
    from speechssl.errors import OutputExistsError
    from speechssl.testing.datadirs import make_data_dir

    src = make_data_dir(tmp_path, name="src").path
    copy_data_dir(src, tmp_path / "B", CopyConfig(speed=1.1))
    copy_data_dir(tmp_path / "B", tmp_path / "B2", CopyConfig(utt_prefix="x-"))
    before = sorted(p.name for p in (tmp_path / "B" / "wav").iterdir())
    with pytest.raises(OutputExistsError, match=r"B2/wav.scp: '.*' is audio inside --out"):
        copy_data_dir(tmp_path / "B2", tmp_path / "B", CopyConfig(speed=0.9))
    assert sorted(p.name for p in (tmp_path / "B" / "wav").iterdir()) == before
