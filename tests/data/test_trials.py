"""ASV trial lists: `make_trials` (every pair, a sample of pairs, N partners per utterance) and
`speechssl data trials`."""

from __future__ import annotations

import pytest

from speechssl.cli.main import main
from speechssl.data.trials import make_trials, write_trials
from speechssl.testing.datadirs import make_data_dir

UTT2SPK = {"b-2": "b", "a-1": "a", "a-2": "a", "a-3": "a", "b-1": "b", "c-1": "c"}


def test_every_pair_in_c_order_labelled_by_speaker():
    trials = make_trials({"b-1": "b", "a-2": "a", "a-1": "a"})
    assert trials == [("a-1", "a-2", "target"), ("a-1", "b-1", "nontarget"), ("a-2", "b-1", "nontarget")]


def test_max_trials_keeps_a_seeded_sample_in_order():
    every = make_trials(UTT2SPK)
    sample = make_trials(UTT2SPK, max_trials=5, seed=3)
    assert len(sample) == 5 and sample == [t for t in every if t in sample]
    assert sample == make_trials(UTT2SPK, max_trials=5, seed=3)
    assert make_trials(UTT2SPK, max_trials=100) == every


def test_per_utterance_draws_distinct_partners_of_each_kind():
    trials = make_trials(UTT2SPK, per_utterance=2, seed=0)
    assert trials == make_trials(UTT2SPK, per_utterance=2, seed=0)  # seeded
    for utt in UTT2SPK:
        mine = [(b, kind) for a, b, kind in trials if a == utt]
        assert len(set(mine)) == len(mine)
        targets = [b for b, kind in mine if kind == "target"]
        nontargets = [b for b, kind in mine if kind == "nontarget"]
        own = [u for u, s in UTT2SPK.items() if s == UTT2SPK[utt] and u != utt]
        assert len(targets) == min(2, len(own)) and set(targets) <= set(own)
        assert len(nontargets) == 2 and all(UTT2SPK[b] != UTT2SPK[utt] for b in nontargets)


@pytest.mark.parametrize(("options", "message"), [
    ({"per_utterance": 0}, "per_utterance must be at least 1"),
    ({"max_trials": 0}, "max_trials must be at least 1"),
    ({"per_utterance": 1, "max_trials": 5}, "does not combine with per_utterance"),
])  # fmt: skip
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        make_trials(UTT2SPK, **options)


def test_cli_writes_dir_trials_and_rewrites_its_own(tmp_path, capsys):
    data = make_data_dir(tmp_path, num_speakers=2, utts_per_speaker=2)
    assert main(["data", "trials", str(data.path)]) == 0
    assert capsys.readouterr().out.strip() == f"{data.path}/trials: 6 trials (2 target, 4 nontarget)"
    lines = (data.path / "trials").read_text().splitlines()
    assert lines[0] == "spk1-utt1 spk1-utt2 target" and len(lines) == 6
    # a re-run replaces its own file; a file this command did not write is never replaced there
    assert main(["data", "trials", str(data.path), "--per-utterance", "1", "--seed", "1"]) == 0
    assert len((data.path / "trials").read_text().splitlines()) == 8  # one partner of each kind per utterance
    (data.path / "trials").write_text("mine\n")
    assert main(["data", "trials", str(data.path), "--overwrite"]) == 1
    assert "already exists inside" in capsys.readouterr().err
    assert (data.path / "trials").read_text() == "mine\n"


def test_one_speaker_gives_no_nontarget_trials_and_is_refused(tmp_path):
    data = make_data_dir(tmp_path, num_speakers=1, utts_per_speaker=2)
    with pytest.raises(ValueError, match="no nontarget trials .*2 utterances of 1 speakers"):
        write_trials(data.path)
    assert not (data.path / "trials").exists()
