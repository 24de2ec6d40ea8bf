"""Query-by-example spoken term detection by DTW over frozen features (SUPERB's QbE protocol).

No training: each query's features are matched against each document's with subsequence DTW, as
s3prl's quesst14_dtw expert does it by default. Features are standardised per dimension over all
queries and documents; the frame distance is exp(cosine distance) - 1, min-max normalised per query
frame over the document; the alignment uses the asymmetric step pattern (every query frame is used
once, the document advances 0, 1 or 2 frames per query frame) with an open beginning and end in the
document, and its cost is divided by the query length. A (query, document) score is the negated
cost, standardised over the documents of its query; queries under `min_query_frames` frames score
0 everywhere. The scores go to `metrics.max_term_weighted_value`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def frame_distances(query: np.ndarray, doc: np.ndarray) -> np.ndarray:
    """(Nq, Nd) exp(cosine distance) - 1, each row min-max normalised to [0, 1]."""
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    d = doc / np.maximum(np.linalg.norm(doc, axis=1, keepdims=True), 1e-12)
    dist = np.expm1(1.0 - q @ d.T)
    low, high = dist.min(axis=1, keepdims=True), dist.max(axis=1, keepdims=True)
    return (dist - low) / np.maximum(high - low, 1e-9)


def subsequence_dtw_cost(dist: np.ndarray) -> float:
    """Cheapest alignment of every query frame (rows) to a stretch of the document (columns), with
    steps (1, 0), (1, 1), (1, 2), per query frame."""
    if dist.ndim != 2 or not dist.size:
        raise ValueError(f"DTW needs a non-empty (query, document) distance matrix, found {dist.shape}")
    cost = dist[0].astype(np.float64)  # open beginning: any document frame can start the match
    for row in dist[1:]:
        prev = cost
        best = prev.copy()
        best[1:] = np.minimum(best[1:], prev[:-1])
        best[2:] = np.minimum(best[2:], prev[:-2])
        cost = best + row
    return float(cost.min() / dist.shape[0])  # open end, normalised by the query length


def qbe_scores(
    queries: Sequence[np.ndarray], docs: Sequence[np.ndarray], *, min_query_frames: int = 5
) -> np.ndarray:
    """(num_queries, num_docs) detection scores of (frames, dim) feature arrays."""
    if not queries or not docs:
        raise ValueError(f"QbE needs queries and documents, found {len(queries)} and {len(docs)}")
    frames = np.concatenate([*queries, *docs]).astype(np.float64)
    mean, std = frames.mean(axis=0), np.maximum(frames.std(axis=0, ddof=1), 1e-9)
    docs_n = [(np.asarray(d, dtype=np.float64) - mean) / std for d in docs]
    scores = np.zeros((len(queries), len(docs)))
    for i, query in enumerate(queries):
        if len(query) < min_query_frames:
            continue
        query_n = (np.asarray(query, dtype=np.float64) - mean) / std
        raw = np.array([-subsequence_dtw_cost(frame_distances(query_n, doc)) for doc in docs_n])
        scores[i] = (raw - raw.mean()) / max(raw.std(), 1e-9)
    return scores
