"""QbE by subsequence DTW: the alignment cost worked out by hand, a query cut from a document finds
that document, and `speechssl downstream qbe` end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechssl.cli.main import main
from speechssl.data.kaldi import write_table
from speechssl.downstream.metrics import max_term_weighted_value
from speechssl.downstream.qbe import (
    QbEDataError,
    evaluate_qbe,
    frame_distances,
    qbe_scores,
    subsequence_dtw_cost,
)
from speechssl.downstream.report import load_results


def test_subsequence_dtw_cost_by_hand():
    # steps (1,0), (1,1), (1,2) per query frame, any start and end column:
    # row 0 costs [4, 1, 3, 0]; row 1: [4+2, min(4,1)+5, min(3,1,4)+0, min(0,3,1)+9] = [6, 6, 1, 9];
    # row 2: [6+7, min(6,6)+7, min(1,6,6)+8, min(9,1,6)+1] = [13, 13, 9, 2] -> 2 / 3 query frames.
    # dtw-python 1.9 (step_pattern="asymmetric", open_begin, open_end) gives the same on random
    # matrices (checked by hand: 0.0520693088 vs ours for a 5 x 17 one).
    dist = np.array([[4.0, 1, 3, 0], [2, 5, 0, 9], [7, 7, 8, 1]])
    assert subsequence_dtw_cost(dist) == pytest.approx(2 / 3)
    # a document shorter than the query is matched by staying on a frame (step (1, 0))
    assert subsequence_dtw_cost(np.array([[1.0], [2.0], [3.0]])) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        subsequence_dtw_cost(np.zeros((0, 3)))


def test_frame_distances_are_row_normalised_cosine_exp():
    q = np.array([[1.0, 0.0], [1.0, 1.0]])
    d = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    dist = frame_distances(q, d)
    # row 0: exp([0, 1, 2]) - 1 -> min-max [0, (e-1)/(e^2-1), 1]
    np.testing.assert_allclose(dist[0], [0, (np.e - 1) / (np.e**2 - 1), 1])
    assert dist.min(axis=1).tolist() == [0, 0] and dist.max(axis=1).tolist() == [1, 1]


def test_query_cut_from_a_document_finds_it():
    rng = np.random.default_rng(3)
    docs = [rng.normal(size=(60 + 7 * k, 8)) for k in range(6)]
    queries = [docs[2][20:32] + 0.05 * rng.normal(size=(12, 8)), docs[4][5:15], docs[0][:3]]
    scores = qbe_scores(queries, docs)
    assert scores.shape == (3, 6)
    assert scores[0].argmax() == 2 and scores[1].argmax() == 4
    assert (scores[2] == 0).all()  # under 5 frames: not searched
    np.testing.assert_allclose(scores[:2].mean(axis=1), 0, atol=1e-12)  # standardised per query
    targets = np.zeros((3, 6), dtype=bool)
    targets[0, 2] = targets[1, 4] = targets[2, 0] = True
    mtwv, _ = max_term_weighted_value(scores, targets)
    assert mtwv == pytest.approx(2 / 3)  # two of three queries found without a false alarm


def _qbe_dir(root: Path) -> Path:
    """Documents of chirps at random pitches; each query is the audio of a stretch of one document."""
    rng = np.random.default_rng(0)
    sr = 16000
    docs, lines = {}, []
    for k in range(6):
        pitches = rng.uniform(150, 1200, size=8)
        t = np.arange(int(0.25 * sr)) / sr
        docs[f"d{k}"] = np.concatenate([0.1 * np.sin(2 * np.pi * f * t) for f in pitches]).astype(np.float32)
    queries = {"q0": ("d1", 0.5, 1.25), "q1": ("d4", 1.0, 1.75), "q2": ("d2", 0.25, 1.0)}
    for sub, items in (
        ("docs", docs),
        ("queries", {q: docs[d][int(a * sr) : int(b * sr)] for q, (d, a, b) in queries.items()}),
    ):
        d = root / "qbe" / sub
        d.mkdir(parents=True)
        scp = {}
        for utt, audio in items.items():
            path = root / "wav" / f"{utt}.wav"
            path.parent.mkdir(exist_ok=True)
            sf.write(path, audio, sr, subtype="PCM_16")
            scp[f"spk1-{utt}"] = str(path)
        write_table(d / "wav.scp", scp)
        write_table(d / "utt2spk", {u: "spk1" for u in scp})
        write_table(d / "spk2utt", {"spk1": sorted(scp)})
    lines = [f"spk1-{q} spk1-{d} {a} {b}\n" for q, (d, a, b) in queries.items()]
    (root / "qbe" / "ground_truth").write_text("".join(lines))
    return root / "qbe"


def test_qbe_cli_scans_layers_and_writes_a_report_row(tmp_path, capsys):
    data = _qbe_dir(tmp_path)
    assert (
        main(
            [
                "downstream",
                "qbe",
                "--upstream",
                "fbank_no_cmvn",
                "--data",
                str(data),
                "--out",
                str(tmp_path / "exp"),
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert f"MTWV {results['value']:.4f} at layer 0" in capsys.readouterr().out
    assert results["task"] == "qbe" and results["metric"] == "mtwv" and results["metrics"]["best_layer"] == 0
    assert 0 < results["value"] <= 1  # the cut-out queries are found (not all: plain fbank, 6 documents)
    assert (tmp_path / "exp" / "mtwv_per_layer.png").is_file()
    rows = load_results([tmp_path / "exp"])
    assert rows[0]["upstream"] == "fbank_no_cmvn" and rows[0]["value"] == results["value"]


def test_qbe_ground_truth_errors_name_the_line(tmp_path):
    data = _qbe_dir(tmp_path)
    (data / "ground_truth").write_text("spk1-q0 spk1-d1 0.5 1.25\nspk1-q9 spk1-d1 0 1\n")
    with pytest.raises(QbEDataError, match=r"ground_truth:2: query 'spk1-q9'"):
        evaluate_qbe("fbank_no_cmvn", data, tmp_path / "exp")
    assert not (tmp_path / "exp").exists()  # checked before anything is written


def test_qbe_refuses_ids_shared_by_queries_and_docs_and_a_ground_truth_dir(tmp_path):
    data = _qbe_dir(tmp_path)
    scp = (data / "queries" / "wav.scp").read_text().replace("spk1-q0", "spk1-d0")
    (data / "queries" / "wav.scp").write_text(scp)
    for name in ("utt2spk", "spk2utt"):
        (data / "queries" / name).write_text(
            (data / "queries" / name).read_text().replace("spk1-q0", "spk1-d0")
        )
    with pytest.raises(QbEDataError, match=r"'spk1-d0' is a query and a document"):
        evaluate_qbe("fbank_no_cmvn", data, tmp_path / "exp")
    (data / "ground_truth").unlink()
    (data / "ground_truth").mkdir()
    with pytest.raises(QbEDataError, match=r"has no ground_truth file"):
        evaluate_qbe("fbank_no_cmvn", data, tmp_path / "exp")
