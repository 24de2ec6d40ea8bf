"""phone_ctm in the data tools: validate checks it, fix filters it, combine keeps it, subset and
copy carry it, and `units score` can read every result."""

from __future__ import annotations

import os

import pytest

from speechssl.data.alignments import ctm_to_frame_labels, read_phone_ctm
from speechssl.data.datadir import combine_data_dirs
from speechssl.data.fix import fix_data_dir
from speechssl.data.kaldi import ProblemKind
from speechssl.data.perturb import CopyConfig, copy_data_dir
from speechssl.data.subset import SubsetSelection, subset_data_dir
from speechssl.data.validate import check_data_dir
from speechssl.testing.cli import run_cli
from tests.data.rich_datadir import ctm_lines, make_rich_dir


@pytest.fixture
def rich(tmp_path):
    return make_rich_dir(tmp_path)


def _append(path, text):
    with open(path, "a") as f:
        f.write(text)


def _problems(d):
    return [str(p) for p in check_data_dir(d, check_audio=False).problems]


def test_validate_names_unknown_ids_bad_lines_and_ends_past_utt2dur(rich):
    ctm = rich / "phone_ctm"
    lines = ctm.read_text().splitlines(keepends=True)
    # line 2 of spk1-utt1 ends at 0.5 s (its utt2dur): make it end at 0.6 s
    lines[1] = lines[1].replace("0.3000", "0.4000")
    lines[3] = "spk1-utt2 1 0.2000 0.4000\n"  # 4 fields
    ctm.write_text("".join(lines) + "zz-ghost 1 0.0 0.1 sil\n")
    problems = _problems(rich)
    assert problems == [
        f"{ctm}:4: 'spk1-utt2' expected 5 fields 'uttid channel start duration phone', found 4",
        f"{ctm}:19: 'zz-ghost' utterance is not in utt2spk",
        f"{ctm}:2: 'spk1-utt1' alignment ends at 0.6 s, past the end of the utterance (0.5 s from utt2dur;"
        " tolerance 0.01 s)",
    ]


def test_validate_accepts_partial_coverage_and_names_a_fifo(rich):
    lines = (rich / "phone_ctm").read_text().splitlines(keepends=True)
    (rich / "phone_ctm").write_text("".join(lines[2:]))  # spk1-utt1 has no alignment: fine
    assert _problems(rich) == []
    (rich / "phone_ctm").unlink()
    os.mkfifo(rich / "phone_ctm")
    check = check_data_dir(rich, check_audio=False)  # never blocks on the FIFO
    assert [(p.kind, p.message) for p in check.problems] == [
        (ProblemKind.NOT_REGULAR, "is a FIFO (named pipe), not a regular file: not read")
    ]


def test_fix_drops_whole_alignments_of_dropped_or_broken_utterances(rich, capsys):
    ctm = rich / "phone_ctm"
    lines = ctm.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace("0.2000 0.4000", "0.2500 0.3500")  # a gap in spk1-utt2
    ctm.write_text("".join(lines) + "zz-ghost 1 0.0 0.1 sil\n")
    text = (rich / "text").read_text().splitlines(keepends=True)
    (rich / "text").write_text("".join(text[:-1]))  # spk3-utt3 loses its transcript: dropped by fix
    assert run_cli("data", "fix", rich) == 0
    out = capsys.readouterr().out
    assert (
        "dropped the 2 phone_ctm line(s) of 'spk1-utt2': line 4: gap: segment starts at 0.2500 s but the"
        " previous one (line 3) ends at 0.2000 s"
    ) in out
    assert "dropped the 1 phone_ctm line(s) of 'zz-ghost': line 19: utterance is not in utt2spk" in out
    assert "dropped the 2 phone_ctm line(s) of 'spk3-utt3': its utterance is not kept" in out
    assert "phone_ctm" in out.splitlines()[-1]  # named among the changed files
    assert sorted({line[0] for line in ctm_lines(rich)}) == [
        f"spk{s}-utt{u}" for s in (1, 2, 3) for u in (1, 2, 3) if (s, u) not in ((1, 2), (3, 3))
    ]
    assert (rich / ".backup" / "phone_ctm").read_text().endswith("zz-ghost 1 0.0 0.1 sil\n")
    assert _problems(rich) == []
    assert fix_data_dir(rich).backup_dir is None  # a second fix has nothing to do


def test_fix_leaves_a_good_phone_ctm_byte_for_byte(rich):
    before = (rich / "phone_ctm").read_bytes()
    _append(rich / "utt2spk", "zz-extra zz\n")  # fix has something else to do
    report = fix_data_dir(rich)
    assert "phone_ctm" not in report.changed and report.alignments == ()
    assert (rich / "phone_ctm").read_bytes() == before


def test_combine_keeps_the_union_of_alignments(tmp_path):
    a = make_rich_dir(tmp_path / "a")
    b = make_rich_dir(tmp_path / "b", num_speakers=1)
    copy_data_dir(b, tmp_path / "b2", CopyConfig(utt_prefix="x-", spk_prefix="x-"))
    (tmp_path / "b2" / "phone_ctm").unlink()  # a source without alignments adds none
    copy_data_dir(a, tmp_path / "a2", CopyConfig(utt_prefix="y-", spk_prefix="y-"))
    combine_data_dirs(tmp_path / "all", [a, tmp_path / "a2", tmp_path / "b2"])
    lines = ctm_lines(tmp_path / "all")
    assert lines == sorted(ctm_lines(a) + ctm_lines(tmp_path / "a2"), key=lambda line: line[0].encode())
    assert _problems(tmp_path / "all") == []


def test_combine_refuses_a_bad_phone_ctm_naming_file_and_line(tmp_path):
    a = make_rich_dir(tmp_path / "a")
    _append(a / "phone_ctm", "spk1-utt1 1 x 0.1 sil\n")
    b = make_rich_dir(tmp_path / "b")
    copy_data_dir(b, tmp_path / "b2", CopyConfig(utt_prefix="x-", spk_prefix="x-"))
    with pytest.raises(ValueError, match=r"a/data/phone_ctm:19: 'spk1-utt1' start/duration must be numbers"):
        combine_data_dirs(tmp_path / "all", [a, tmp_path / "b2"])
    assert not (tmp_path / "all").exists()


def test_round_trip_through_validate_fix_subset_copy_combine_and_frame_labels(rich, tmp_path):
    assert _problems(rich) == [] and fix_data_dir(rich).backup_dir is None
    subset_data_dir(rich, tmp_path / "sub", SubsetSelection(speakers=2, seed=0))
    copy_data_dir(tmp_path / "sub", tmp_path / "sp", CopyConfig(speed=0.9), progress=False)
    combine_data_dirs(tmp_path / "all", [tmp_path / "sub", tmp_path / "sp"])
    for d in (tmp_path / "sub", tmp_path / "sp", tmp_path / "all"):
        assert _problems(d) == [], d
    labels = ctm_to_frame_labels(tmp_path / "all" / "phone_ctm", 0.02)  # a path is read
    original = ctm_to_frame_labels(read_phone_ctm(rich / "phone_ctm"), 0.02)
    for utt, frames in original.items():
        if utt in labels:
            assert labels[utt] == frames
            slow = labels[f"sp0.9-{utt}"]  # 1/0.9 as many frames, the same phones in order
            assert abs(len(slow) - len(frames) / 0.9) <= 1
            assert slow[0] == "sil" and slow[-1] == "a"


def test_ctm_to_frame_labels_accepts_a_path_and_refuses_other_types(rich):
    from pathlib import Path

    by_str = ctm_to_frame_labels(str(rich / "phone_ctm"), 0.01)
    assert by_str == ctm_to_frame_labels(Path(rich / "phone_ctm"), 0.01)
    assert len(by_str["spk1-utt1"]) == 50
    with pytest.raises(
        TypeError, match="ctm must be a phone_ctm path or the dict read_phone_ctm returns, found list"
    ):
        ctm_to_frame_labels([("u1", [])], 0.01)


def test_without_utt2dur_segments_give_the_durations(tmp_path):
    d = make_rich_dir(tmp_path, segments=True)
    (d / "utt2dur").unlink()
    assert _problems(d) == []
    ctm = d / "phone_ctm"
    ctm.write_text(ctm.read_text().replace("spk1-utt1 1 0.2000 0.3000 a", "spk1-utt1 1 0.2000 0.3500 a"))
    assert _problems(d) == [
        f"{ctm}:2: 'spk1-utt1' alignment ends at 0.55 s, past the end of the utterance (0.5 s from segments;"
        " tolerance 0.01 s)"
    ]


def test_fix_of_phone_ctm_alone_rewrites_only_it(rich):
    tables = {p.name: p.read_bytes() for p in rich.iterdir() if p.is_file() and p.name != "phone_ctm"}
    _append(rich / "phone_ctm", "zz-ghost 1 0.0 0.1 sil\n")
    report = fix_data_dir(rich)
    assert report.changed == ("phone_ctm",) and report.num_utterances == 9
    assert [str(a) for a in report.alignments] == [
        "dropped the 1 phone_ctm line(s) of 'zz-ghost': line 19: utterance is not in utt2spk"
    ]
    assert {p.name: p.read_bytes() for p in rich.iterdir() if p.is_file() and p.name != "phone_ctm"} == tables
    assert "zz-ghost" not in (rich / "phone_ctm").read_text()
