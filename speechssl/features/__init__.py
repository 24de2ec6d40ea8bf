"""Frame-level features for clustering: MFCC (iteration 0) and upstream layers, sharded dumps."""

from speechssl.features.dump import (
    DamagedShardError,
    FeatureExtractor,
    FeatureReader,
    NonFiniteFeaturesError,
    build_extractor,
    dump_features,
    shard_range,
    write_shard,
)
from speechssl.features.mfcc import MfccConfig, MfccExtractor, iter_mfcc, mfcc_features

__all__ = [
    "DamagedShardError",
    "FeatureExtractor",
    "FeatureReader",
    "MfccConfig",
    "MfccExtractor",
    "NonFiniteFeaturesError",
    "build_extractor",
    "dump_features",
    "iter_mfcc",
    "mfcc_features",
    "shard_range",
    "write_shard",
]
