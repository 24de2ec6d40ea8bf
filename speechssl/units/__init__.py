"""Discrete units: k-means fit/label over dumped features, unit-quality metrics.

`fit_kmeans` / `label` turn features (speechssl.features) into `labels` files
(`uttid u1 u2 ...` at the feature frame rate); `unit_quality` scores them
against phone alignments (PNMI, phone purity, cluster purity, HuBERT paper);
`check_label_lengths` is the trainer's guard against label/frame mismatches.
"""

from speechssl.units.kmeans import KMeansConfig, KMeansModel, fit_kmeans, label
from speechssl.units.labels import (
    LabelLengthError,
    check_label_lengths,
    check_unit_ids,
    parse_units,
    read_labels,
)
from speechssl.units.metrics import UnitQuality, align_frames, joint_counts, quality_from_counts, unit_quality

__all__ = [
    "KMeansConfig",
    "KMeansModel",
    "LabelLengthError",
    "UnitQuality",
    "align_frames",
    "check_label_lengths",
    "check_unit_ids",
    "fit_kmeans",
    "joint_counts",
    "label",
    "parse_units",
    "quality_from_counts",
    "read_labels",
    "unit_quality",
]
