"""Unit quality per layer: k-means on each layer's frames, scored against phone alignments.

This is how the HuBERT authors chose the layer whose units train the next iteration (Hsu et al.
2021, fig. 2: PNMI per layer). Each layer goes through the same code as `speechssl kmeans fit` /
`kmeans label` (a one-shard feature dump of the layer, `fit_kmeans`, `label`) and the same scores
as `speechssl units score` (`unit_quality`: PNMI, phone purity, cluster purity).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from speechssl.analysis.collect import LayerFeatures
from speechssl.features.dump import FeatureReader, write_shard
from speechssl.units.kmeans import fit_kmeans, label
from speechssl.units.metrics import UnitQuality, unit_quality

logger = logging.getLogger(__name__)


def read_frame_phones(ctm_path: str | Path, frame_rate: float) -> dict[str, list[str]]:
    """utt -> the phone at the centre of each frame, at `frame_rate` frames per second."""
    from speechssl.data.alignments import ctm_to_frame_labels, read_phone_ctm

    return ctm_to_frame_labels(read_phone_ctm(ctm_path), 1.0 / frame_rate)


def layer_unit_quality(
    features: LayerFeatures,
    phones: dict[str, list[str]],
    out_dir: str | Path,
    *,
    num_clusters: int,
    seed: int = 0,
    **kmeans_options: object,
) -> dict[int, UnitQuality]:
    """{layer: UnitQuality} of K-means units of every layer of `features` (whole utterances);
    each layer's k-means model and labels are left in `out_dir/layer<L>/` (centroids.npy,
    kmeans.json, labels, dict.txt), as `speechssl kmeans fit|label` write them."""
    if not features.utterances:
        raise ValueError(f"upstream '{features.name}': no whole utterances kept to cluster")
    missing = [u for u in features.utterances if u not in phones]
    if len(missing) == len(features.utterances):
        raise ValueError(
            f"none of the {len(missing)} analysed utterances is in the phone alignments "
            f"(e.g. '{missing[0]}'); are they of this data dir?"
        )
    num_frames = sum(len(feats[0]) for feats in features.utterances.values())
    if num_frames < num_clusters:
        raise ValueError(
            f"{num_frames} frames kept, fewer than --num-clusters {num_clusters}: raise --max-frames "
            "or lower --num-clusters"
        )
    out_dir = Path(out_dir)
    results = {}
    with tempfile.TemporaryDirectory(prefix=".feats_", dir=out_dir) as scratch:
        for k, layer in enumerate(features.layers):
            dump = Path(scratch) / f"layer{layer}"
            write_shard(
                dump,
                {utt: feats[k] for utt, feats in features.utterances.items()},
                feature=f"{features.name}:layer{layer}",
                frame_rate=features.frame_rate,
            )
            reader = FeatureReader(dump)
            layer_dir = out_dir / f"layer{layer}"
            model = fit_kmeans(reader, num_clusters, seed=seed, out_dir=layer_dir, **kmeans_options)
            labels = label(reader, model, layer_dir, progress=False)
            try:
                results[layer] = unit_quality(phones, labels)
            except ValueError as err:
                raise ValueError(
                    f"upstream '{features.name}' layer {layer} vs the phone alignments: {err}"
                ) from None
            shutil.rmtree(dump)
            q = results[layer]
            logger.info(
                "%s layer %d: PNMI %.4f, phone purity %.4f, cluster purity %.4f (%d units, %d frames)",
                features.name, layer, q.pnmi, q.phone_purity, q.cluster_purity, q.num_units, q.num_frames,
            )  # fmt: skip
    return results
