"""The one batching path: BatchingConfig + build_loader (training and evaluation loaders)."""

from __future__ import annotations

import pytest
import torch

from speechssl.data.batching import BatchingConfig, build_loader
from speechssl.data.dataset import AudioDataset, Batch
from speechssl.data.sampler import DurationBucketSampler
from speechssl.testing.datadirs import make_data_dir


@pytest.fixture
def dataset(tmp_path):
    data = make_data_dir(tmp_path, num_speakers=3, utts_per_speaker=4, base_seconds=0.5)
    return AudioDataset(data.path)


def test_training_loader_is_the_bucket_sampler_sharded_and_seeded(dataset):
    config = BatchingConfig(max_batch_seconds=2.0, num_buckets=2)
    for rank in range(2):
        loader = build_loader(dataset, config, train=True, seed=5, rank=rank, world_size=2)
        expected = DurationBucketSampler(
            dataset.durations, 2.0, num_replicas=2, rank=rank, seed=5, num_buckets=2
        )
        for epoch in range(2):
            loader.batch_sampler.set_epoch(epoch)
            expected.set_epoch(epoch)
            assert list(loader.batch_sampler) == list(expected)


def test_training_drops_long_utterances_unless_they_are_cropped(dataset):
    cap = sorted(dataset.durations)[-3]  # two utterances are longer
    dropping = build_loader(dataset, BatchingConfig(max_batch_seconds=cap), train=True, seed=0)
    assert dropping.batch_sampler.num_dropped == 2
    cropping = build_loader(
        dataset, BatchingConfig(max_batch_seconds=cap, max_seconds=cap), train=True, seed=0
    )
    assert cropping.batch_sampler.num_dropped == 0 and len(cropping.batch_sampler.crops) == 2


def test_evaluation_grows_the_cap_keeps_order_and_every_utterance(dataset):
    config = BatchingConfig(max_batch_seconds=0.1)  # shorter than every utterance
    loader = build_loader(dataset, config, train=False, seed=0, world_size=1)
    assert loader.batch_sampler.max_batch_seconds == pytest.approx(max(dataset.durations))
    assert not loader.batch_sampler.shuffle and loader.batch_sampler.num_dropped == 0
    batches = list(loader)
    assert all(isinstance(b, Batch) for b in batches)
    ids = [u for b in batches for u in b.utt_ids]
    assert sorted(ids) == sorted(dataset.utt_ids())
    assert [b.utt_ids for b in batches] == [
        b.utt_ids for b in build_loader(dataset, config, train=False, seed=9)
    ]


def test_target_padding_of_the_collate(dataset):
    ids = dataset.utt_ids()
    ds = AudioDataset(
        dataset.data_dir,
        targets={"units": {u: "1 " * (k + 1) for k, u in enumerate(ids)}},
        target_transforms={"units": lambda v: torch.tensor([int(t) for t in v.split()])},
    )
    batch = next(
        iter(
            build_loader(
                ds, BatchingConfig(max_batch_seconds=100.0), train=False, seed=0, target_pad_value=-1
            )
        )
    )
    assert (batch.targets["units"] == -1).any()
    assert batch.targets["units"].ne(-1).sum(1).tolist() == batch.target_lens["units"].tolist()
    assert not hasattr(batch, "__getitem__")  # targets are read by attribute: one batch layout


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_seconds": 0.0}, "max_batch_seconds must be a finite number > 0"),
        ({"max_batch_seconds": float("inf")}, "max_batch_seconds must be a finite number > 0"),
        ({"max_seconds": -1.0}, "max_seconds must be a finite number > 0"),
        ({"max_batch_size": 0}, "max_batch_size must be >= 1"),
        ({"num_buckets": 0}, "num_buckets must be >= 1"),
        ({"crop": "middle"}, "crop must be 'random' or 'start'"),
    ],
)
def test_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchingConfig(**kwargs)


def test_a_crop_longer_than_the_batch_cap_is_refused_for_every_command():
    with pytest.raises(ValueError, match=r"max_seconds \(30.0\) exceeds max_batch_seconds \(20.0\)"):
        BatchingConfig(max_batch_seconds=20.0, max_seconds=30.0)
