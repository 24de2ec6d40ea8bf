"""Bytes that are not UTF-8 in a trials list, an rttm, a LibriSpeech transcript or a --unit-scores
file: one line naming the file and line (not the codec's bare message), and nothing left behind."""

from __future__ import annotations

import pytest

from speechssl.cli.main import main
from speechssl.data.corpora.librispeech import prepare_librispeech
from speechssl.data.fix import fix_data_dir
from speechssl.training.summary import summarize_runs
from tests.data.corpora.test_librispeech import make_fake_librispeech

NOT_UTF8 = r"is not valid UTF-8 \(invalid start byte\)"


def test_trials_of_subset_and_copy(data_dir, tmp_path, capsys):
    trials = data_dir.path / "trials"
    trials.write_bytes(b"spk1-utt1 spk2-utt1 nontarget\nspk1-utt1 spk1-utt2 t\xffarget\n")
    for command in (["subset", "--first", "3"], ["copy"]):
        out = tmp_path / command[0]
        assert main(["data", command[0], "--data", str(data_dir.path), "--out", str(out), *command[1:]]) == 1
        err = capsys.readouterr().err
        assert f"{trials}:2: is not valid UTF-8 (invalid start byte)" in err and "\n" == err[-1:]
        assert not out.exists()


def test_rttm_of_fix(data_dir):
    rttm = data_dir.path / "rttm"
    rttm.write_bytes(b"SPEAKER spk1-utt1 1 0.0 0.5 <NA> <NA> sp\xffk1 <NA> <NA>\n")
    with pytest.raises(ValueError, match=f"{rttm}:1: {NOT_UTF8}"):
        fix_data_dir(data_dir.path)


def test_librispeech_transcript_leaves_no_output_dir(tmp_path):
    root = make_fake_librispeech(tmp_path / "LibriSpeech")
    trans = root / "dev-clean" / "84" / "121123" / "84-121123.trans.txt"
    trans.write_bytes(trans.read_bytes() + b"\xff\xfe bad\n")
    with pytest.raises(ValueError, match=f"{trans}:3: {NOT_UTF8}"):
        prepare_librispeech(root, tmp_path / "data", ["dev-clean"])
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "content, found",
    [
        (b"utt1 hello\n", r"not JSON: Expecting value: line 1 column 1"),
        (b"\x80 binary", "not JSON: .utf-8. codec"),
        (b"[1, 2]", "a JSON list, not an object"),
        (b'{"scores": []}', "no 'results' list"),
    ],
)
def test_unit_scores_that_are_not_json_name_the_file(tmp_path, content, found):
    scores = tmp_path / "scores.json"
    scores.write_bytes(content)
    with pytest.raises(ValueError, match=f"{scores}: not the JSON of `speechssl units score` \\({found}"):
        summarize_runs([], [scores])
