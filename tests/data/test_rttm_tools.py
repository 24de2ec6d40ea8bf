"""The diarization reference (rttm) follows its recordings through subset, copy (speed: times
scaled, ids prefixed), combine and fix, like phone_ctm follows its utterances."""

from __future__ import annotations

from pathlib import Path

import pytest

from speechssl.data.datadir import combine_data_dirs
from speechssl.data.fix import fix_data_dir
from speechssl.data.kaldi import write_table
from speechssl.data.perturb import CopyConfig, copy_data_dir
from speechssl.data.rttm import Turn, format_rttm, read_rttm
from speechssl.data.subset import SubsetSelection, subset_data_dir
from speechssl.testing.datadirs import write_tone


def _diar_dir(root: Path, name: str = "diar", prefix: str = "") -> Path:
    """Two recordings of 2 s, each with two turns of two speakers."""
    d = root / name
    d.mkdir(parents=True)
    wav, segments, utt2spk, rttm = {}, {}, {}, {}
    for r in (f"{prefix}rA", f"{prefix}rB"):
        wav[r] = write_tone(root / "wav" / f"{r}.wav", 2.0)
        for k, (spk, start, end) in enumerate(((f"{prefix}s1", 0.0, 1.0), (f"{prefix}s2", 1.0, 2.0))):
            utt = f"{spk}-{r}-{k}"
            segments[utt] = f"{r} {start} {end}"
            utt2spk[utt] = spk
            rttm.setdefault(r, []).append(Turn(spk, start, end))
    write_table(d / "wav.scp", wav)
    write_table(d / "segments", segments)
    write_table(d / "utt2spk", utt2spk)
    spk2utt: dict[str, list[str]] = {}
    for utt, spk in sorted(utt2spk.items()):
        spk2utt.setdefault(spk, []).append(utt)
    write_table(d / "spk2utt", spk2utt)
    (d / "rttm").write_text(format_rttm(rttm))
    return d


def test_subset_keeps_the_turns_of_kept_recordings(tmp_path):
    """The rttm describes the audio: a kept recording keeps all its turns (its audio still holds
    them), a recording no kept utterance uses loses them."""
    src = _diar_dir(tmp_path)
    (tmp_path / "ids").write_text("s1-rA-0\ns2-rA-1\n")
    subset_data_dir(src, tmp_path / "sub", SubsetSelection(utt_list=tmp_path / "ids"))
    kept = read_rttm(tmp_path / "sub" / "rttm")
    assert list(kept) == ["rA"] and len(kept["rA"]) == 2


def test_speed_copy_scales_and_renames_the_turns(tmp_path):
    src = _diar_dir(tmp_path)
    copy_data_dir(src, tmp_path / "sp", CopyConfig(speed=0.8))
    turns = read_rttm(tmp_path / "sp" / "rttm")
    assert sorted(turns) == ["sp0.8-rA", "sp0.8-rB"]
    assert turns["sp0.8-rA"] == [Turn("sp0.8-s1", 0.0, 1.25), Turn("sp0.8-s2", 1.25, 2.5)]


def test_combine_unions_and_fix_filters(tmp_path):
    a, b = _diar_dir(tmp_path / "a"), _diar_dir(tmp_path / "b", prefix="x")
    combine_data_dirs(tmp_path / "all", [a, b])
    assert sorted(read_rttm(tmp_path / "all" / "rttm")) == ["rA", "rB", "xrA", "xrB"]
    segments = (a / "segments").read_text().splitlines()
    (a / "segments").write_text("\n".join(line for line in segments if " rB " not in line) + "\n")
    report = fix_data_dir(a)
    assert "rttm" in report.changed and sorted(read_rttm(a / "rttm")) == ["rA"]
    assert (a / ".backup" / "rttm").is_file()  # the original is kept


def test_fix_leaves_an_rttm_alone_when_no_recording_goes(tmp_path):
    d = _diar_dir(tmp_path)
    (d / "rttm").write_text((d / "rttm").read_text().replace("0.000", "0.0000"))  # not our formatting
    before = (d / "rttm").read_bytes()
    fix_data_dir(d)
    assert (d / "rttm").read_bytes() == before


@pytest.mark.parametrize("bad", ["SPEAKER rA 1 x 1.0 <NA> <NA> s1 <NA> <NA>\n"])
def test_a_malformed_rttm_is_a_one_line_error(tmp_path, bad):
    src = _diar_dir(tmp_path)
    (src / "rttm").write_text(bad)
    with pytest.raises(ValueError, match=r"rttm:1: start and duration"):
        subset_data_dir(src, tmp_path / "sub", SubsetSelection(first=2))
    assert not (tmp_path / "sub").exists()
