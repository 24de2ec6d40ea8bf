"""The ML-SUPERB and slot-filling tasks: slot tags as CTC tokens, per-language scores, and each
task trained and evaluated end to end on a tiny tone corpus of the synthetic corpus's layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speechssl.data.kaldi import write_table
from speechssl.downstream import DownstreamConfig, HeadConfig, build_task
from speechssl.downstream.runner import evaluate_downstream, train_downstream
from speechssl.testing.datadirs import write_tone

SMALL = DownstreamConfig(
    head=HeadConfig(hidden_dim=16, lstm_dim=16, lstm_layers=1),
    max_batch_seconds=8.0, eval_every=2, log_every=2, lr=1e-2,
)  # fmt: skip
SLOT_TEXTS = [
    "set an alarm for B-time seven E-time",
    "play B-music_genre jazz E-music_genre in the B-room kitchen E-room",
    "set an alarm for B-time nine E-time",
    "play B-music_genre rock E-music_genre",
]
LANGS = ["eng", "spa", "fin"]
PHONES = {"eng": "a b c", "spa": "a e o b", "fin": "y a c"}


def _tiny(root: Path, kind: str) -> Path:
    """kind 'slots' (utt2slot_text) or 'multilingual' (phones, utt2lang, phones/<lang>.txt)."""
    for split, count in (("train", 6), ("dev", 3), ("test", 3)):
        tables: dict[str, dict[str, str]] = {
            n: {} for n in ("wav.scp", "utt2spk", "utt2slot_text", "phones", "utt2lang")
        }
        for k in range(count):
            spk = f"spk{k % 2 + 1}"
            utt = f"{spk}-{kind}-{split}-{k:03d}"
            label = k % 3
            tables["wav.scp"][utt] = write_tone(
                root / "wav" / f"{utt}.wav", 0.8 + 0.1 * label, freq=200.0 + 150 * label
            )
            tables["utt2spk"][utt] = spk
            tables["utt2slot_text"][utt] = SLOT_TEXTS[k % 4]
            tables["utt2lang"][utt] = LANGS[label]
            tables["phones"][utt] = PHONES[LANGS[label]]
        d = root / kind / split
        d.mkdir(parents=True)
        keep = ("utt2slot_text",) if kind == "slots" else ("phones", "utt2lang")
        for name in ("wav.scp", "utt2spk", *keep):
            write_table(d / name, tables[name])
        spk2utt: dict[str, list[str]] = {}
        for utt, spk in sorted(tables["utt2spk"].items()):
            spk2utt.setdefault(spk, []).append(utt)
        write_table(d / "spk2utt", spk2utt)
    if kind == "multilingual":
        (root / kind / "phones").mkdir()
        (root / kind / "phones" / "eng.txt").write_text("sil 0\na 1\nb 2\nc 3\nz 4\n")  # z: never spoken
    return root / kind


def test_slot_tags_are_single_ctc_tokens_and_decode_back(tmp_path):
    task = build_task("sf", _tiny(tmp_path, "slots"), tmp_path / "exp", SMALL)
    symbols = task.tokens.symbols
    assert {"B-time", "E-time", "B-room", "E-room", "B-music_genre"} <= set(symbols)
    assert not any(s in symbols for s in ("B", "-"))  # tag characters are not separate tokens
    ids = task._encode(SLOT_TEXTS[1])
    assert task.tokens.decode(ids.tolist())[:3] == ["p", "l", "a"]
    assert task._decode(ids.tolist()) == SLOT_TEXTS[1]
    scores = task.scores(SLOT_TEXTS[:2], ["set an alarm for B-time seven E-time", "play jazz in the kitchen"])
    assert scores["slot_type_f1"] == pytest.approx(0.5)  # utterance 2 has no slot predicted
    # values: "seven" right (0 of 5), "jazz" and "kitchen" missing (4 + 7 deletions): 11 / 16
    assert scores["wer"] == 0.0 and scores["slot_value_cer"] == pytest.approx(11 / 16)


def test_mlpr_tokens_take_the_declared_inventories_and_score_per_language(tmp_path):
    task = build_task("mlpr", _tiny(tmp_path, "multilingual"), tmp_path / "exp", SMALL)
    assert "z" in task.tokens.symbols and "sil" not in task.tokens.symbols
    a, b, c = (task.tokens.index[p] for p in "abc")
    refs = [("eng", [a, b, c]), ("fin", [a, c])]
    scores = task.scores(refs, [[a, b, c], [a]])
    assert scores == {"per": pytest.approx(1 / 5), "per_eng": 0.0, "per_fin": pytest.approx(0.5)}


@pytest.mark.parametrize(
    ("task", "kind"), [("sf", "slots"), ("mlpr", "multilingual"), ("lid", "multilingual")]
)
def test_task_trains_and_evaluates(task, kind, tmp_path):
    out = tmp_path / "exp"
    train_downstream(task, "fbank_no_cmvn", _tiny(tmp_path, kind), out, SMALL, max_steps=4)
    results = evaluate_downstream(out)
    assert json.loads((out / "results.json").read_text()) == results and results["task"] == task
    metrics = results["metrics"]
    if task == "sf":
        assert {"slot_type_f1", "slot_value_cer", "wer", "cer"} <= set(metrics)
        assert 0 <= metrics["slot_type_f1"] <= 1
    elif task == "mlpr":
        assert results["metric"] == "per" and {f"per_{lang}" for lang in LANGS} <= set(metrics)
    else:
        assert results["metric"] == "accuracy" and {f"accuracy_{lang}" for lang in LANGS} <= set(metrics)
