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

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from speechssl.downstream.metrics import max_term_weighted_value
from speechssl.errors import SpeechSSLError

log = logging.getLogger(__name__)


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


# --- the evaluation: every layer of an upstream on a QbE data dir --------------------------
QBE_COMMAND = "downstream qbe"
GROUND_TRUTH = "ground_truth"


class QbEDataError(SpeechSSLError, ValueError):
    """A QbE data dir that cannot be scored (file and line named)."""


def read_ground_truth(path: Path, queries: set[str], docs: set[str]) -> set[tuple[str, str]]:
    """(query, document) pairs of `query_uttid doc_uttid start end` lines (the synthetic corpus's
    qbe/ground_truth); every id must be an utterance of queries/ or docs/."""
    pairs = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 4:
            raise QbEDataError(
                f"{path}:{number}: expected 'query_uttid doc_uttid start end', found {line.strip()!r}"
            )
        query, doc = fields[:2]
        if query not in queries:
            raise QbEDataError(f"{path}:{number}: query '{query}' is not an utterance of queries/")
        if doc not in docs:
            raise QbEDataError(f"{path}:{number}: document '{doc}' is not an utterance of docs/")
        pairs.add((query, doc))
    if not pairs:
        raise QbEDataError(f"{path}: no ground-truth lines")
    return pairs


def evaluate_qbe(
    upstream: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    layers: Sequence[int] | None = None,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Score every layer (or `layers`) of `upstream` on `data_dir` (queries/, docs/, ground_truth)
    and write OUT/qbe.json, OUT/results_test.json (= results.json, the row `downstream report`
    reads: the best layer's MTWV) and OUT/mtwv_per_layer.png. The best layer is chosen on the same
    queries it is reported on (the corpus has no dev queries): an optimistic figure, as
    SUPERB's layer scan on QUESST's dev set is for its dev set."""
    from speechssl.analysis.collect import CollectConfig, collect
    from speechssl.analysis.plots import plot_layer_lines
    from speechssl.data.datadir import DataDir
    from speechssl.downstream.runner import resolve_upstream, results_file
    from speechssl.interop.upstream import load_upstream, upstream_name
    from speechssl.io import atomic_write_json
    from speechssl.outputs import check_output, output_directory

    data_dir = Path(data_dir)
    for sub, is_dir in (("queries", True), ("docs", True), (GROUND_TRUTH, False)):
        if not ((data_dir / sub).is_dir() if is_dir else (data_dir / sub).is_file()):
            kind = "data dir" if is_dir else "file"
            raise QbEDataError(
                f"QbE data dir {data_dir} has no {sub} {kind} (expected queries/, docs/, ground_truth)"
            )
    check_output(out_dir, QBE_COMMAND, overwrite=overwrite, inputs=(data_dir, upstream))
    query_dir, doc_dir = DataDir.load(data_dir / "queries"), DataDir.load(data_dir / "docs")
    query_ids = [u.utt_id for u in query_dir.utterances()]
    doc_ids = [u.utt_id for u in doc_dir.utterances()]
    shared = sorted(set(query_ids) & set(doc_ids))
    if shared:
        raise QbEDataError(f"{data_dir}: '{shared[0]}' is a query and a document ({len(shared)} such ids)")
    truth = read_ground_truth(data_dir / GROUND_TRUTH, set(query_ids), set(doc_ids))
    targets = np.array([[(q, d) in truth for d in doc_ids] for q in query_ids])
    model = load_upstream(upstream)
    name = name or upstream_name(upstream)
    config = CollectConfig(layers=tuple(layers) if layers else None, max_frames=2**62, device=device)
    feats = {}
    for data in (query_dir, doc_dir):
        (collected,) = collect(
            [(name, model)], data, config, keep_utterances=True, concatenate=False, progress=progress
        )
        feats.update(collected.utterances)
    per_layer = {}
    for k, layer in enumerate(collected.layers):
        scores = qbe_scores([feats[q][k] for q in query_ids], [feats[d][k] for d in doc_ids])
        mtwv, threshold = max_term_weighted_value(scores, targets)
        per_layer[layer] = {"mtwv": mtwv, "threshold": threshold}
        log.info("qbe %s layer %d: MTWV %.4f", name, layer, mtwv)
    best = max(per_layer, key=lambda layer: (per_layer[layer]["mtwv"], -layer))
    metrics = {"mtwv": per_layer[best]["mtwv"], "best_layer": best}
    metrics |= {f"mtwv_layer{layer}": v["mtwv"] for layer, v in per_layer.items()}
    results = {
        "task": "qbe", "metric": "mtwv", "value": per_layer[best]["mtwv"], "split": "test",
        "upstream": name, "upstream_source": resolve_upstream(upstream), "metrics": metrics,
        "trainable_params": 0, "total_params": sum(p.numel() for p in model.parameters()),
    }  # fmt: skip
    doc = {
        "command": QBE_COMMAND, "data": str(data_dir), "upstream": results["upstream_source"], "name": name,
        "num_queries": len(query_ids), "num_docs": len(doc_ids), "num_targets": int(targets.sum()),
        "scoring": "subsequence DTW (s3prl quesst14_dtw); MTWV, p_target 0.0008, c_miss 100, c_fa 1",
        "best_layer": best, "layers": {str(k): v for k, v in per_layer.items()},
    }  # fmt: skip
    with output_directory(out_dir, QBE_COMMAND, overwrite=overwrite) as tmp:
        atomic_write_json(tmp / "qbe.json", doc)
        atomic_write_json(tmp / results_file("test"), results)
        atomic_write_json(tmp / "results.json", results)
        layers_run = list(per_layer)
        plot_layer_lines(
            {name: (layers_run, [per_layer[layer]["mtwv"] for layer in layers_run])},
            tmp / "mtwv_per_layer.png", title=f"QbE MTWV per layer ({data_dir.name})", ylabel="MTWV",
        )  # fmt: skip
    return results
