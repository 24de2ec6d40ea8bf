"""`speechssl data subset`: each way to choose, every file filtered consistently, refusals."""

from __future__ import annotations

import re

import pytest

from speechssl.data.subset import SubsetSelection, subset_data_dir
from speechssl.data.validate import check_data_dir
from speechssl.errors import OutputExistsError
from speechssl.testing.cli import run_cli
from tests.data.rich_datadir import ctm_lines, make_rich_dir, tables_of, trials_lines

UTTS = [f"spk{s}-utt{u}" for s in (1, 2, 3) for u in (1, 2, 3)]


@pytest.fixture(params=[False, True], ids=["wav", "segments"])
def rich(tmp_path, request):
    return make_rich_dir(tmp_path, segments=request.param)


def assert_filtered(src, out, kept):
    """Every file of `out` holds exactly what `src` holds for the utterances `kept`."""
    check = check_data_dir(out)
    assert check.problems == []
    source, result = tables_of(src), tables_of(out)
    speakers = {u.split("-")[0] for u in kept}
    segmented = "segments" in source
    recos = {source["segments"][u].split()[0] for u in kept} if segmented else set(kept)
    assert set(result) == set(source)  # no table lost, none invented
    for name, table in source.items():
        level_keys = (
            speakers
            if name.startswith("spk2") or name == "cmvn.scp"
            else recos
            if name.startswith("reco2") or (name == "wav.scp" and segmented)
            else set(kept)
        )
        assert set(result[name]) == level_keys, name
        for key, value in result[name].items():
            if name == "spk2utt":
                assert value.split() == sorted(u for u in kept if u.startswith(key + "-"))
            else:
                assert value == table[key], (name, key)
    assert ctm_lines(out) == [line for line in ctm_lines(src) if line[0] in kept]
    assert trials_lines(out) == [t for t in trials_lines(src) if t[0] in kept and t[1] in kept]
    assert (out / "frame_shift").read_text() == "0.01\n"
    for absent in ("NOTES", "num_jobs", "units_k5"):
        assert not (out / absent).exists()


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        (SubsetSelection(first=4), UTTS[:4]),
        (SubsetSelection(last=2), UTTS[-2:]),
        (SubsetSelection(shortest=3), ["spk1-utt1", "spk2-utt1", "spk3-utt1"]),  # 0.5, 0.53, 0.56 s
        (SubsetSelection(per_spk=1), ["spk1-utt1", "spk2-utt1", "spk3-utt1"]),
        (
            SubsetSelection(per_spk=2),
            ["spk1-utt1", "spk1-utt2", "spk2-utt1", "spk2-utt2", "spk3-utt1", "spk3-utt2"],
        ),
    ],
)
def test_counted_selections_keep_the_right_ids_and_every_file(rich, tmp_path, selection, expected):
    result = subset_data_dir(rich, tmp_path / "out", selection)
    assert sorted(tables_of(tmp_path / "out")["utt2spk"]) == expected
    assert (result.num_utterances, result.source_utterances) == (len(expected), 9)
    assert_filtered(rich, tmp_path / "out", expected)


def test_per_spk_spreads_over_the_speakers_list_as_kaldi(tmp_path):
    d = make_rich_dir(tmp_path, num_speakers=1, utts_per_speaker=7)
    subset_data_dir(d, tmp_path / "out", SubsetSelection(per_spk=3))
    # Kaldi: skip = 2 (3 * 3 > 7), fields 2, 4, 6 of the spk2utt line
    assert sorted(tables_of(tmp_path / "out")["utt2spk"]) == ["spk1-utt1", "spk1-utt3", "spk1-utt5"]


def test_random_is_seeded_and_deterministic(rich, tmp_path):
    picks = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        subset_data_dir(rich, tmp_path / name, SubsetSelection(random=4, seed=seed))
        picks.append(sorted(tables_of(tmp_path / name)["utt2spk"]))
    assert picks[0] == picks[1] and len(picks[0]) == 4
    assert picks[0] != picks[2]  # another seed, another draw (checked for these seeds)
    assert_filtered(rich, tmp_path / "a", picks[0])


def test_speakers_takes_whole_speakers(rich, tmp_path):
    result = subset_data_dir(rich, tmp_path / "out", SubsetSelection(speakers=2, seed=1))
    utt2spk = tables_of(tmp_path / "out")["utt2spk"]
    assert result.num_speakers == 2 and len(set(utt2spk.values())) == 2
    assert len(utt2spk) == 6  # all 3 utterances of each chosen speaker
    assert_filtered(rich, tmp_path / "out", sorted(utt2spk))
    again = subset_data_dir(rich, tmp_path / "again", SubsetSelection(speakers=2, seed=1))
    assert tables_of(tmp_path / "again")["utt2spk"] == utt2spk and again.num_utterances == 6


def test_lists_select_and_count_unknown_ids(rich, tmp_path):
    (tmp_path / "spk.list").write_text("spk3\n\nspk9 whatever\nspk1\n")
    result = subset_data_dir(rich, tmp_path / "s", SubsetSelection(spk_list=tmp_path / "spk.list"))
    kept = [u for u in UTTS if u.startswith(("spk1-", "spk3-"))]
    assert_filtered(rich, tmp_path / "s", kept)
    assert any("1 listed speaker id(s)" in n and "'spk9' on line 3" in n for n in result.notes)
    (tmp_path / "utt.list").write_text("spk2-utt3 x\nspk1-utt1\n")
    subset_data_dir(rich, tmp_path / "u", SubsetSelection(utt_list=tmp_path / "utt.list"))
    assert_filtered(rich, tmp_path / "u", ["spk1-utt1", "spk2-utt3"])


def test_cli_prints_counts_and_what_was_not_copied(rich, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("data", "subset", "--data", rich, "--out", out, "--first", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{out}: 2 of 9 utterances, 1 of 3 speakers, 0.000 hours; validated")
    assert lines[1] == (
        "not copied: NOTES (not a data-dir table), num_jobs (left in the source),"
        " units_k5/ (left in the source)"
    )
    assert lines[2] == "note: trials: kept 1 of 36 trials (those whose two utterances are kept)"
    # a re-run replaces its own output; another selection then holds other ids
    assert run_cli("data", "subset", "--data", rich, "--out", out, "--last", "1") == 0
    assert sorted(tables_of(out)["utt2spk"]) == ["spk3-utt3"]
    assert not (out / "trials").exists()  # no trial has both utterances: none written


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--first", "10"], "--first 10: .* has only 9 utterances"),
        (["--speakers", "4"], "--speakers 4: .* has only 3 speakers"),
        (["--random", "0"], "random must be at least 1, found 0"),
        (["--utt-list", "nope.list"], "id list nope.list does not exist"),
    ],
)
def test_cli_refusals_are_one_line(rich, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert run_cli("data", "subset", "--data", rich, "--out", tmp_path / "out", *argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_ways_are_exclusive_and_one_is_required(rich, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli("data", "subset", "--data", rich, "--out", tmp_path / "o", "--first", "1", "--last", "1")
    with pytest.raises(ValueError, match="choose exactly one way .* found first, last"):
        SubsetSelection(first=1, last=1)


def test_list_selecting_nothing_and_bad_list_lines(rich, tmp_path):
    (tmp_path / "none.list").write_text("nobody\n")
    with pytest.raises(ValueError, match=r"none.list: none of its 1 utterance ids is in"):
        subset_data_dir(rich, tmp_path / "o", SubsetSelection(utt_list=tmp_path / "none.list"))
    (tmp_path / "bad.list").write_bytes(b"spk1-utt1\n\xff\xfe\n")
    with pytest.raises(ValueError, match=r"bad.list:2: is not valid UTF-8"):
        subset_data_dir(rich, tmp_path / "o", SubsetSelection(utt_list=tmp_path / "bad.list"))


def test_shortest_needs_durations(tmp_path):
    d = make_rich_dir(tmp_path)
    (d / "utt2dur").unlink()
    with pytest.raises(FileNotFoundError, match="--shortest needs .*utt2dur.*speechssl data durations"):
        subset_data_dir(d, tmp_path / "o", SubsetSelection(shortest=1))


def test_invalid_source_is_refused_naming_file_and_line(rich, tmp_path):
    text = (rich / "text").read_text().splitlines(keepends=True)
    (rich / "text").write_text("".join(text[1:]))  # spk1-utt1 has no transcript
    with pytest.raises(ValueError, match=r"utt2spk:1: 'spk1-utt1' utterance has no entry in text.*data fix"):
        subset_data_dir(rich, tmp_path / "o", SubsetSelection(first=1))
    assert not (tmp_path / "o").exists()


def test_output_rule_never_writes_over_the_source_or_a_foreign_dir(rich, tmp_path):
    with pytest.raises(OutputExistsError, match="is an input"):
        subset_data_dir(rich, rich, SubsetSelection(first=1))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="did not write"):
        subset_data_dir(rich, foreign, SubsetSelection(first=1))
    assert (foreign / "keep.txt").read_text() == "mine"


def test_bad_trials_line_is_named(rich, tmp_path):
    with open(rich / "trials", "a") as f:
        f.write("spk1-utt1 spk1-utt2 maybe\n")
    with pytest.raises(ValueError, match=r"trials:37: expected 'enroll_utt test_utt target\|nontarget'"):
        subset_data_dir(rich, tmp_path / "o", SubsetSelection(first=3))
    assert not (tmp_path / "o").exists()
