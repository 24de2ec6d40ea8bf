"""`speechssl analyze rankme|cka|layers`: load the upstream(s), one pass over the data, JSON + PNG.

Outputs (one dir per command, built aside and swapped in whole: speechssl.outputs):
- rankme: `rankme.json`, `rankme.png` (RankMe per layer on frames and on utterance means);
- cka: `cka.json`, `cka.png` (layers x layers of one model, or model 1 rows x model 2 columns);
- layers: `layers.json`, `layers.png` (PNMI, phone and cluster purity per layer) and each layer's
  k-means model and labels in `layer<L>/` (two models: `<name>/layer<L>/`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from speechssl.analysis.cka import cka_matrix
from speechssl.analysis.collect import CollectConfig, LayerFeatures, collect
from speechssl.analysis.layers import layer_unit_quality, read_frame_phones
from speechssl.analysis.plots import plot_heatmap, plot_layer_lines
from speechssl.analysis.rankme import rankme
from speechssl.data.audio import SAMPLE_RATE
from speechssl.io import atomic_write_json
from speechssl.outputs import check_output, output_directory

logger = logging.getLogger(__name__)

KINDS = ("rankme", "cka", "layers")


def command(kind: str) -> str:
    return f"analyze {kind}"


def _names(sources: Sequence[str | Path]) -> list[str]:
    from speechssl.interop.upstream import upstream_name

    names = [upstream_name(s) for s in sources]
    if len(set(names)) < len(names):
        names = [f"{n}_{i + 1}" for i, n in enumerate(names)]
    return names


def check_request(
    kind: str,
    sources: Sequence[str | Path],
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    alignments: str | Path | None = None,
    overwrite: bool = False,
) -> Path | None:
    """Everything that can be refused before a model is loaded; returns the alignments (layers)."""
    if kind not in KINDS:
        raise ValueError(f"unknown analysis '{kind}'; valid: {', '.join(KINDS)}")
    if not 1 <= len(sources) <= 2:
        raise ValueError(f"analyze {kind} takes one or two --upstream, found {len(sources)}")
    if not Path(data_dir).is_dir():
        raise FileNotFoundError(f"--data {data_dir} is not a directory")
    ctm = None
    if kind == "layers":
        ctm = Path(alignments) if alignments is not None else Path(data_dir) / "phone_ctm"
        if not ctm.is_file():
            raise FileNotFoundError(
                f"{ctm} does not exist: analyze layers scores units against phone alignments "
                "(a phone_ctm in the data dir, or --alignments FILE)"
            )
    inputs = tuple(p for p in (*sources, data_dir, ctm) if p is not None and Path(p).exists())
    check_output(out_dir, command(kind), overwrite=overwrite, inputs=inputs)
    return ctm


def _upstream_info(features: LayerFeatures, source: str | Path, num_layers: int) -> dict:
    return {
        "name": features.name,
        "source": str(source),
        "num_layers": num_layers,
        "hidden_dim": features.hidden_dim,
        "frame_rate": features.frame_rate,
        "layers": features.layers,
    }


def analyze(
    kind: str,
    sources: Sequence[str | Path],
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    config: CollectConfig | None = None,
    alignments: str | Path | None = None,
    num_clusters: int = 100,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Run analysis `kind` and write its outputs in `out_dir`; returns the JSON document."""
    import speechssl

    config = config or CollectConfig()
    if num_clusters < 2:
        raise ValueError(f"--num-clusters must be >= 2, found {num_clusters}")
    ctm = check_request(kind, sources, data_dir, out_dir, alignments=alignments, overwrite=overwrite)
    names = _names(sources)
    upstreams = [(name, speechssl.load_upstream(src)) for name, src in zip(names, sources)]
    phones = None
    if ctm is not None:  # read before the models run: a bad CTM costs seconds, not the whole pass
        phones = read_frame_phones(ctm, SAMPLE_RATE / float(upstreams[0][1].downsample_rate))
    features = collect(upstreams, data_dir, config, keep_utterances=kind == "layers", progress=progress)
    doc: dict = {
        "command": command(kind),
        "data": str(data_dir),
        "upstreams": [
            _upstream_info(f, src, int(up.num_layers))
            for f, src, (_, up) in zip(features, sources, upstreams)
        ],
        "settings": asdict(config) | ({"num_clusters": num_clusters, "alignments": str(ctm)} if ctm else {}),
        "num_utts": features[0].num_utts,
        "num_frames_seen": features[0].num_frames_seen,
        "num_frames": int(len(features[0].frames[0])),
    }
    with output_directory(out_dir, command(kind), overwrite=overwrite) as tmp:
        if kind == "rankme":
            doc["results"] = _rankme(features, tmp)
        elif kind == "cka":
            doc["results"] = _cka(features, tmp)
        else:
            assert phones is not None  # both models have the same frame rate (collect checks)
            doc["results"] = _layers(features, tmp, phones, num_clusters=num_clusters, seed=config.seed)
        atomic_write_json(tmp / f"{kind}.json", doc)
    logger.info("analyze %s: wrote %s/%s.json and %s.png", kind, out_dir, kind, kind)
    return doc


def _rankme(features: list[LayerFeatures], tmp: Path) -> dict:
    results, series = {}, {}
    for f in features:
        frames = [rankme(x) for x in f.frames]
        means = [rankme(x) for x in f.utterance_means]
        results[f.name] = {"layers": f.layers, "rankme_frames": frames, "rankme_utterance_means": means}
        for layer, value in zip(f.layers, frames):
            logger.info("%s layer %d: RankMe %.2f on %d frames", f.name, layer, value, len(f.frames[0]))
        series[f"{f.name}: frames"] = (f.layers, frames)
        series[f"{f.name}: utterance means"] = (f.layers, means)
    dims = ", ".join(str(f.hidden_dim) for f in features)
    plot_layer_lines(
        series,
        tmp / "rankme.png",
        title=f"RankMe per layer ({len(features[0].frames[0])} frames, "
        f"{len(features[0].utterance_means[0])} utterances; dim {dims})",
        ylabel="RankMe (effective rank)",
    )
    return results


def _cka(features: list[LayerFeatures], tmp: Path) -> dict:
    first, second = features[0], features[-1]
    matrix = cka_matrix(first.frames, None if len(features) == 1 else second.frames)
    plot_heatmap(
        matrix,
        tmp / "cka.png",
        row_layers=first.layers,
        col_layers=second.layers,
        row_name=first.name,
        col_name=second.name,
        title=f"linear CKA on {len(first.frames[0])} frames",
    )
    return {
        "rows": {"upstream": first.name, "layers": first.layers},
        "columns": {"upstream": second.name, "layers": second.layers},
        "cka": [[None if v != v else float(v) for v in row] for row in matrix],  # NaN: a constant layer
    }


def _layers(
    features: list[LayerFeatures], tmp: Path, phones: dict[str, list[str]], *, num_clusters: int, seed: int
) -> dict:
    results, series = {}, {}
    for f in features:
        layer_dir = tmp if len(features) == 1 else tmp / f.name
        layer_dir.mkdir(exist_ok=True)
        scores = layer_unit_quality(f, phones, layer_dir, num_clusters=num_clusters, seed=seed)
        results[f.name] = {"layers": f.layers, "scores": [scores[layer].to_dict() for layer in f.layers]}
        prefix = f"{f.name}: " if len(features) > 1 else ""
        for key, label in (
            ("pnmi", "PNMI"),
            ("phone_purity", "phone purity"),
            ("cluster_purity", "cluster purity"),
        ):
            series[prefix + label] = (f.layers, [getattr(scores[layer], key) for layer in f.layers])
    plot_layer_lines(
        series,
        tmp / "layers.png",
        title=f"Unit quality per layer (k-means K={num_clusters}, {features[0].num_utts} utterances)",
        ylabel="score",
        ylim=(0.0, 1.0),
    )
    return results
