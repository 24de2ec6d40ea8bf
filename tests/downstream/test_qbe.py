"""QbE by subsequence DTW: the alignment cost worked out by hand, and a query cut from a document
finds that document."""

import numpy as np
import pytest

from speechssl.downstream.metrics import max_term_weighted_value
from speechssl.downstream.qbe import frame_distances, qbe_scores, subsequence_dtw_cost


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
