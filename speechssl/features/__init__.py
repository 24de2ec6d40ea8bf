"""Frame-level features for clustering: MFCC (iteration 0) and upstream layers, sharded dumps."""

from speechssl.features.dump import (
    FeatureExtractor,
    FeatureReader,
    build_extractor,
    dump_features,
    shard_range,
    write_shard,
)
from speechssl.features.mfcc import MfccConfig, MfccExtractor, mfcc_features

__all__ = [
    "FeatureExtractor",
    "FeatureReader",
    "MfccConfig",
    "MfccExtractor",
    "build_extractor",
    "dump_features",
    "mfcc_features",
    "shard_range",
    "write_shard",
]
