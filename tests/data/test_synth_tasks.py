"""The corpus's task subsets (diar, qbe, slots, multilingual): determinism, validity, labels that fit."""

from __future__ import annotations

import filecmp
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import soundfile as sf

from speechssl.data import synth_grammar
from speechssl.data.alignments import SILENCE_PHONE, read_phone_ctm
from speechssl.data.espeak import get_espeak
from speechssl.data.kaldi import read_table
from speechssl.data.rttm import Turn, format_rttm
from speechssl.data.synth import SynthConfig, build_corpus, build_speakers
from speechssl.data.synth_audio import segments_from_events
from speechssl.data.synth_tasks import TASK_PLAN, TASK_SUBSETS, _word_spans
from speechssl.data.validate import validate_data_dir

TINY_HOURS = 0.005  # the per-dir minimums: about 4 minutes of audio over the four subsets
TASK_DIRS = [p.name for p in TASK_PLAN]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth_tasks") / "seed0"
    config = SynthConfig(out_dir=str(out), hours=TINY_HOURS, subsets=TASK_SUBSETS, progress=False)
    return out, build_corpus(config)


def _files(root: Path, rel: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / rel).rglob("*") if p.is_file())


def _same_tree(a: Path, b: Path, rel: str) -> None:
    assert _files(a, rel) == _files(b, rel), rel
    for name in _files(a, rel):
        if name.endswith("wav.scp"):  # absolute paths differ only by the output dir
            text_b = (b / name).read_text().replace(str(b.resolve()), str(a.resolve()))
            assert (a / name).read_text() == text_b, name
        else:
            assert filecmp.cmp(a / name, b / name, shallow=False), name


@pytest.mark.slow
def test_same_seed_is_byte_identical_whatever_nj_and_whatever_else_is_built(corpus, tmp_path):
    root, _ = corpus
    other = tmp_path / "nj2"
    build_corpus(SynthConfig(out_dir=str(other), hours=TINY_HOURS, subsets=TASK_SUBSETS, num_jobs=2,
                             progress=False))  # fmt: skip
    for subset in TASK_SUBSETS:
        _same_tree(root, other, subset)
        _same_tree(root, other, f"wav/{subset}")
    alone = tmp_path / "slots_alone"
    build_corpus(SynthConfig(out_dir=str(alone), hours=TINY_HOURS, subsets=("slots",), progress=False))
    _same_tree(root, alone, "slots")
    _same_tree(root, alone, "wav/slots")
    assert not (alone / "read").exists() and not (alone / "diar").exists()


def test_another_seed_differs(corpus, tmp_path):
    root, _ = corpus
    out = tmp_path / "seed1"
    build_corpus(SynthConfig(out_dir=str(out), hours=TINY_HOURS, seed=1, subsets=("slots",), progress=False))
    assert (root / "slots/train/text").read_text() != (out / "slots/train/text").read_text()


def test_every_task_dir_passes_data_validation(corpus):
    root, summary = corpus
    for d in TASK_DIRS:
        problems = validate_data_dir(root / d)
        assert problems == [], f"{d}: {problems[:3]}"
    assert set(summary["subsets"]) == set(TASK_DIRS)


def _rttm(path: Path) -> list[tuple[str, float, float, str]]:
    rows = []
    for line in path.read_text().splitlines():
        f = line.split()
        assert len(f) == 10 and f[0] == "SPEAKER" and f[2] == "1", line
        assert f[5] == f[6] == f[8] == f[9] == "<NA>", line
        rows.append((f[1], float(f[3]), float(f[4]), f[7]))
    return rows


def test_diar_rttm_turns_lie_inside_their_recordings_and_match_segments(corpus):
    root, _ = corpus
    seen = {s.spk_id for s in build_speakers() if s.seen}
    total_overlaps = 0
    for split in ("train", "dev", "test"):
        d = root / "diar" / split
        reco2dur = {k: float(v) for k, v in read_table(d / "reco2dur").items()}
        wavs = read_table(d / "wav.scp")
        segments = {u: v.split() for u, v in read_table(d / "segments").items()}
        utt2spk = read_table(d / "utt2spk")
        rttm = _rttm(d / "rttm")
        assert set(wavs) == set(reco2dur) == {r for r, *_ in rttm}
        for reco, path in wavs.items():
            info = sf.info(path)
            assert info.samplerate == 16000 and abs(info.duration - reco2dur[reco]) < 1e-6
        for reco, start, dur, _spk in rttm:
            assert start >= 0 and dur > 0 and start + dur <= reco2dur[reco], (reco, start, dur)
        # the RTTM is the segments file seen by speaker
        from_segments = sorted((r, float(s), round(float(e) - float(s), 3), utt2spk[u])
                               for u, (r, s, e) in segments.items())  # fmt: skip
        assert sorted((r, s, round(dur, 3), spk) for r, s, dur, spk in rttm) == from_segments
        for utt, (reco, _s, _e) in segments.items():
            assert utt.startswith(f"{utt2spk[utt]}-{reco}-")  # Kaldi: utterance ids begin with the speaker
        by_reco = defaultdict(list)
        for reco, start, dur, spk in rttm:
            by_reco[reco].append((start, start + dur, spk))
        for reco, turns in by_reco.items():
            assert 2 <= len({spk for *_, spk in turns}) <= 3, reco
            turns.sort()
            total_overlaps += sum(1 for a, b in zip(turns, turns[1:]) if b[0] < a[1])
        speakers = set(utt2spk.values())
        assert speakers <= seen if split == "train" else not speakers & seen, split
    assert total_overlaps > 0


def test_diar_turns_carry_speech_and_pauses_are_quieter(corpus):
    root, _ = corpus
    d = root / "diar" / "train"
    reco, path = next(iter(read_table(d / "wav.scp").items()))
    audio, sr = sf.read(path, dtype="float64")
    turns = sorted((s, s + dur) for r, s, dur, _ in _rttm(d / "rttm") if r == reco)
    speech = [audio[int(s * sr) : int(e * sr)] for s, e in turns]
    covered = set()
    for s, e in turns:
        covered.update(range(int(s * 100), int(e * 100)))
    pauses = [audio[int(t / 100 * sr) : int((t + 1) / 100 * sr)] for t in range(int(len(audio) / sr * 100))
              if t not in covered and t - 1 not in covered and t + 1 not in covered]  # fmt: skip
    speech_power = sum((x**2).sum() for x in speech) / sum(len(x) for x in speech)
    pause_power = sum((x**2).sum() for x in pauses) / max(1, sum(len(x) for x in pauses))
    assert speech_power > 3 * pause_power  # SNR is 5-25 dB


def test_qbe_ground_truth_is_consistent_with_text_and_alignments(corpus):
    root, summary = corpus
    q_text = read_table(root / "qbe/queries/text")
    d_text = read_table(root / "qbe/docs/text")
    d_dur = {k: float(v) for k, v in read_table(root / "qbe/docs/utt2dur").items()}
    ctm = read_phone_ctm(root / "qbe/docs/phone_ctm")
    assert set(q_text.values()) == set(synth_grammar.QBE_TERMS)
    lines = [line.split() for line in (root / "qbe/ground_truth").read_text().splitlines()]
    found = Counter()
    for query, doc, start, end in lines:
        start, end = float(start), float(end)
        assert q_text[query] in d_text[doc].split(), (query, doc)
        assert 0 <= start < end <= d_dur[doc]
        bounds = [s.start for s in ctm[doc]] + [ctm[doc][-1].end]
        # the term starts and ends on phone boundaries (the ground truth has ms precision)
        assert min(abs(b - start) for b in bounds) <= 0.0011 and min(abs(b - end) for b in bounds) <= 0.0011
        inside = [s.phone for s in ctm[doc] if s.start >= start - 0.0011 and s.end <= end + 0.0011]
        assert len(inside) >= 3 and SILENCE_PHONE not in inside, (doc, start, end, inside)
        found[(query, doc)] += 1
    # complete: each query gets every occurrence of its term
    for query, term in q_text.items():
        for doc, words in d_text.items():
            assert found[(query, doc)] == words.split().count(term), (query, doc)
    assert summary["subsets"]["qbe/docs"]["docs_with_terms"] >= len(d_text) // 2
    assert len(lines) == summary["subsets"]["qbe/docs"]["ground_truth_lines"]


def test_slot_annotations_are_snips_style(corpus):
    root, _ = corpus
    pattern = re.compile(r"B-(\S+) (.+?) E-\1")
    for split in ("train", "dev", "test"):
        d = root / "slots" / split
        text, iob = read_table(d / "text"), read_table(d / "utt2iob")
        slot_text, intent = read_table(d / "utt2slot_text"), read_table(d / "intent")
        assert set(text) == set(iob) == set(slot_text) == set(intent)
        for utt, words in text.items():
            tags = iob[utt].split()
            assert len(tags) == len(words.split())
            assert set(tags) <= {"O", *synth_grammar.slot_names()}
            assert intent[utt] in synth_grammar.SLOT_TEMPLATES
            # slot_text without its tags is the transcript; its spans are the tagged words
            assert re.sub(r" ?[BE]-\S+ ?", " ", slot_text[utt]).split() == words.split()
            spans = pattern.findall(slot_text[utt])
            expected = []
            for word, tag in zip(words.split(), tags):
                if tag != "O" and expected and expected[-1][0] == tag:
                    expected[-1] = (tag, expected[-1][1] + " " + word)
                elif tag != "O":
                    expected.append((tag, word))
            assert spans == expected
            assert all(value in synth_grammar.SLOT_VALUES[slot] for slot, value in spans)


def test_slot_text_tags_each_span():
    cmd = synth_grammar.SlotCommand(
        ("wake", "me", "up", "at", "seven", "thirty", "tomorrow"),
        ("O", "O", "O", "O", "time", "time", "date"),
        "SetAlarm",
    )
    assert cmd.slot_text == "wake me up at B-time seven thirty E-time B-date tomorrow E-date"
    assert cmd.iob == "O O O O time time date"


def test_multilingual_phones_languages_and_voices(corpus):
    root, _ = corpus
    assert len(synth_grammar.LANGUAGES) >= 8
    assert len({lang.family.split(" (")[-1] for lang in synth_grammar.LANGUAGES}) >= 8
    inventories = {}
    for lang in synth_grammar.LANGUAGES:
        lines = (root / "multilingual/phones" / f"{lang.iso3}.txt").read_text().splitlines()
        inventories[lang.iso3] = [line.split()[0] for line in lines]
        assert inventories[lang.iso3][0] == SILENCE_PHONE and len(inventories[lang.iso3]) >= 20
    for split in ("train", "dev", "test"):
        d = root / "multilingual" / split
        utt2lang, phones, utt2spk = (
            read_table(d / "utt2lang"),
            read_table(d / "phones"),
            read_table(d / "utt2spk"),
        )
        assert set(utt2lang.values()) == {lang.iso3 for lang in synth_grammar.LANGUAGES}
        ctm = read_phone_ctm(d / "phone_ctm")
        for utt, lang in utt2lang.items():
            sequence = phones[utt].split()
            assert sequence and SILENCE_PHONE not in sequence, utt
            assert set(sequence) <= set(inventories[lang]), (utt, set(sequence) - set(inventories[lang]))
            assert [s.phone for s in ctm[utt] if s.phone != SILENCE_PHONE] == sequence
            assert not any(p.startswith(("(", "_")) for p in sequence)
            assert utt2spk[utt].startswith(lang) and utt.startswith(utt2spk[utt] + "-")
    train = read_table(root / "multilingual/train/utt2spk")
    voices = defaultdict(set)
    for spk in train.values():
        voices[spk[:3]].add(spk)
    assert all(len(v) >= 2 for v in voices.values())


def test_language_switch_markers_are_not_phones():
    segments = segments_from_events([("w", 0), ("(en)", 100), ("z", 120), ("(cmn)", 300), ("_:", 300)], 400)
    assert segments == [("w", 0, 120), ("z", 120, 300), ("sil", 300, 400)]


def test_word_spans_snap_to_phones_and_stop_at_the_next_word_or_a_pause():
    text = "the garden of the window"
    phonemes = [("D", 264), ("@2", 1416), ("g", 2696), ("A@", 4040), ("d", 7304), ("n", 9672),
                ("V", 10952), ("D", 13256), ("w", 15733), ("I", 17653), ("oU", 21167), ("_:", 23843),
                ("_", 25121)]  # fmt: skip
    # 'of the' shares one event (index 2); window's event leads its first phone by 220 samples
    words = [(1, 0), (5, 2696), (12, 9672), (19, 15513)]
    spans = _word_spans(text, phonemes, words, 26000)
    assert spans == {0: (264, 2696), 1: (2696, 9672), 2: (9672, 15733), 4: (15733, 23843)}


def test_espeak_reports_word_events():
    engine = get_espeak()
    engine.set_voice("en-us+m3", rate=175, pitch=50, pitch_range=50)
    result = engine.synthesize("garden window umbrella")
    assert [p for p, _ in result.word_events] == [1, 8, 15]
    samples = [s for _, s in result.word_events]
    assert samples == sorted(samples) and samples[-1] < result.audio.shape[0]


def test_format_rttm_sorts_by_recording_and_start():
    text = format_rttm(
        {"r2": [Turn("spkB", 0.5, 1.25)], "r1": [Turn("spkA", 1.0, 2.0), Turn("spkB", 0.25, 1.5)]}
    )
    assert text.splitlines() == [
        "SPEAKER r1 1 0.250 1.250 <NA> <NA> spkB <NA> <NA>",
        "SPEAKER r1 1 1.000 1.000 <NA> <NA> spkA <NA> <NA>",
        "SPEAKER r2 1 0.500 0.750 <NA> <NA> spkB <NA> <NA>",
    ]


def test_unknown_subset_is_a_clear_error(tmp_path):
    with pytest.raises(
        ValueError, match="subsets must be some of base, diar, qbe, slots, multilingual; found sd"
    ):
        SynthConfig(out_dir=str(tmp_path), subsets=("slots", "sd"))


def test_cli_builds_only_the_chosen_subsets(tmp_path, capsys):
    from speechssl.cli.main import main

    out = tmp_path / "data"
    args = ["synth", "--out", str(out), "--hours", str(TINY_HOURS), "--subsets", "slots", "--no-progress"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "phones.txt", "slots", "speakers.txt", "summary.json", "wav",
    ]  # fmt: skip
    assert '"hours"' in capsys.readouterr().out
