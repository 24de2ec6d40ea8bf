"""Static batch shapes (`data.static_shapes`): every training batch has one of N (batch, length)
shapes, so CUDA graphs recorded for a shape replay on every later batch of it."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechssl.data.batching import BatchingConfig, build_loader
from speechssl.data.datadir import write_data_dir
from speechssl.data.dataset import AudioDataset
from speechssl.data.sampler import _EPS, DurationBucketSampler, shape_grid
from speechssl.testing.datadirs import frame_units_dataset, make_data_dir, write_tone

cases = st.fixed_dictionaries(
    {
        "durations": st.lists(st.floats(0.1, 20.0, allow_nan=False), min_size=0, max_size=120),
        "max_batch_seconds": st.floats(8.0, 40.0),
        "long_utterances": st.sampled_from(["drop", "crop"]),
        "num_replicas": st.integers(1, 4),
        "max_batch_size": st.one_of(st.none(), st.integers(1, 8)),
        "seed": st.integers(0, 2**16),
        "epoch": st.integers(0, 50),
        "static_shapes": st.integers(1, 10),
        "drop_last": st.booleans(),
        "weighted": st.booleans(),
    }
)
FAST = settings(max_examples=60, deadline=None, derandomize=True)  # CI runs the same examples every time


def all_ranks(case: dict) -> list[DurationBucketSampler]:
    weighted = case["weighted"] and case["durations"]
    weights = [1.0 + (i % 3) for i in range(len(case["durations"]))] if weighted else None
    samplers = []
    for rank in range(case["num_replicas"]):
        s = DurationBucketSampler(
            case["durations"], case["max_batch_seconds"], max_batch_size=case["max_batch_size"],
            num_replicas=case["num_replicas"], rank=rank, seed=case["seed"], drop_last=case["drop_last"],
            static_shapes=case["static_shapes"], weights=weights, long_utterances=case["long_utterances"],
        )  # fmt: skip
        s.set_epoch(case["epoch"])
        samplers.append(s)
    return samplers


@FAST
@given(cases)
def test_every_batch_has_one_of_the_static_shapes_and_every_utterance_is_used(case):
    samplers = all_ranks(case)
    s0 = samplers[0]
    shapes = set(zip(s0.shape_sizes, s0.shape_seconds))
    assert len(shapes) <= case["static_shapes"]
    per_rank = [list(s) for s in samplers]
    assert len({len(b) for b in per_rank}) == 1  # DDP: every rank the same number of batches
    for batches in per_rank:
        for b in batches:
            length = s0.padded_seconds(b)
            assert (len(b), length) in shapes
            assert all(min(case["durations"][i], case["max_batch_seconds"]) <= length + _EPS for i in b)
            assert len(b) * length <= case["max_batch_seconds"] + 1e-6 or len(b) == 1
    used = Counter(i for batches in per_rank for b in batches for i in b)
    if not case["weighted"] and not case["drop_last"]:
        assert set(used) == set(range(len(case["durations"]))) - set(s0.dropped)
        # repeats: the last batch's fill (size - 1) and whole batches for the ranks (R - 1)
        largest = max(s0.shape_sizes, default=1)
        assert sum(used.values()) - len(used) <= largest - 1 + (case["num_replicas"] - 1) * largest


def test_the_grid_is_equal_count_groups_rounded_up_to_10_ms_with_the_sizes_the_cap_allows():
    durations = [1.0 + 0.5 * k + 0.003 for k in range(20)]  # 1.003 ... 10.503 s
    lengths, sizes = shape_grid(durations, 4, 30.0)
    assert lengths == [3.01, 5.51, 8.01, 10.51]  # the 5th, 10th, 15th and 20th
    assert sizes == [9, 5, 3, 2]  # floor(30 / length)
    assert shape_grid(durations, 4, 30.0, max_batch_size=3)[1] == [3, 3, 3, 2]
    assert shape_grid([2.0, 2.0, 2.0], 3, 5.0) == ([2.0], [2])  # equal lengths collapse
    # utterances cropped to half the cap go two to a batch: a margin past 8.0 would make it one
    assert shape_grid([3.0, 8.0, 8.0, 8.0], 2, 16.0) == ([8.0], [2])
    assert shape_grid([7.0], 2, 6.0) == ([6.0], [1])  # never past the cap (a cropped utterance)


def test_a_duration_just_past_a_10_ms_step_gets_a_length_that_holds_it():
    sampler = DurationBucketSampler([1.0, 1.230000003], 16.0, static_shapes=1)
    assert sampler.shape_seconds[-1] >= 1.230000003 and len(list(sampler)) == 1


def test_static_batches_are_deterministic_and_resume_mid_epoch():
    durations = [0.5 + (7 * k % 11) for k in range(50)]
    make = lambda: DurationBucketSampler(durations, 24.0, seed=3, static_shapes=4)  # noqa: E731
    first, second = make(), make()
    first.set_epoch(2)
    second.set_epoch(2)
    assert list(first) == list(second)
    interrupted = make()
    interrupted.set_epoch(2)
    it = iter(interrupted)
    head = [next(it) for _ in range(3)]
    resumed = make()
    resumed.load_state_dict(interrupted.state_dict())
    assert head + list(resumed) == list(first)
    other = DurationBucketSampler(durations, 24.0, seed=3, static_shapes=5)
    with pytest.raises(ValueError, match="static_shapes was 4 when saved, is 5 now"):
        other.load_state_dict(interrupted.state_dict())
    before = {k: v for k, v in DurationBucketSampler(durations, 24.0, seed=3).state_dict().items()
              if k != "static_shapes"}  # fmt: skip  # saved before the key existed: static shapes were off
    with pytest.raises(ValueError, match="static_shapes was 0 when saved, is 4 now"):
        make().load_state_dict(before)


def test_static_shapes_cost_some_padding_and_more_shapes_cost_less():
    durations = [1.0 + (k * 0.37) % 14.6 for k in range(400)]
    plain = DurationBucketSampler(durations, 87.5, seed=0).padding_efficiency()
    coarse = DurationBucketSampler(durations, 87.5, seed=0, static_shapes=4).padding_efficiency()
    fine = DurationBucketSampler(durations, 87.5, seed=0, static_shapes=16).padding_efficiency()
    assert coarse < fine < plain


def test_bad_static_shapes_are_refused():
    with pytest.raises(ValueError, match="static_shapes must be >= 0"):
        BatchingConfig(static_shapes=-1)
    with pytest.raises(ValueError, match="static_shapes must be >= 0"):
        DurationBucketSampler([1.0], 2.0, static_shapes=-2)


@pytest.fixture
def units_dataset(tmp_path):
    return frame_units_dataset(tmp_path)


def test_the_loader_pads_audio_and_frame_labels_to_the_static_shapes(units_dataset):
    config = BatchingConfig(max_batch_seconds=4.0, max_seconds=1.0, static_shapes=3)
    loader = build_loader(units_dataset, config, train=True, seed=1)
    sampler = loader.batch_sampler
    shapes = {
        (size, round(length * 16000)) for size, length in zip(sampler.shape_sizes, sampler.shape_seconds)
    }
    seen = set()
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for batch in loader:
            B, S = batch.wavs.shape
            assert (B, S) in shapes
            seen.add((B, S))
            units, lens = batch.targets["units"], batch.target_lens["units"]
            assert units.shape == (B, math.ceil(S * 50 / 16000) + 1)  # static too: frames + 1
            assert all((units[b, n:] == -100).all() and (units[b, :n] >= 0).all() for b, n in enumerate(lens))
            assert all((batch.wavs[b, n:] == 0).all() for b, n in enumerate(batch.wav_lens))
    assert len(seen) > 1
    # evaluation batches are not padded past their longest utterance
    valid = next(iter(build_loader(units_dataset, config, train=False, seed=1)))
    assert valid.wavs.shape[1] == int(valid.wav_lens.max())


def test_a_static_batch_holds_the_plain_batchs_audio_and_labels(units_dataset):
    plain = build_loader(
        units_dataset, BatchingConfig(max_batch_seconds=4.0, max_seconds=1.0), train=False, seed=0
    )
    batch = next(iter(plain))
    items = [units_dataset[i] for i in plain.batch_sampler.rank_batches()[0]]
    config = BatchingConfig(max_batch_seconds=4.0, max_seconds=1.0, static_shapes=2)
    static = build_loader(units_dataset, config, train=True, seed=0).collate_fn(items)
    S, L = batch.wavs.shape[1], batch.targets["units"].shape[1]
    assert static.wavs.shape[1] >= S and torch.equal(static.wavs[:, :S], batch.wavs)
    assert torch.equal(static.wav_lens, batch.wav_lens) and static.utt_ids == batch.utt_ids
    assert torch.equal(static.targets["units"][:, :L], batch.targets["units"])


def _rounded_utt2dur_dataset(root, stale: str | None = None) -> AudioDataset:
    """60 tones of 0.5-4 s whose utt2dur is rounded to 10 ms (some data preps write it so): half
    understate their audio by up to 5 ms. `stale`: one utterance whose utt2dur says 1 s less."""
    rng = random.Random(1)
    wav, utt2spk, utt2dur = {}, {}, {}
    for k in range(60):
        seconds = rng.randint(8000, 64000) / 16000
        utt = f"spk{k % 3}-u{k:03d}"
        wav[utt], utt2spk[utt] = write_tone(root / "audio" / f"{utt}.wav", seconds), f"spk{k % 3}"
        utt2dur[utt] = round(seconds, 2) - (1.0 if utt == stale else 0.0)
    return AudioDataset(write_data_dir(root / "data", wav, utt2spk=utt2spk, utt2dur=utt2dur).path)


def test_audio_a_rounded_utt2dur_understates_keeps_its_batch_on_the_grid_and_under_the_cap(tmp_path):
    dataset = _rounded_utt2dur_dataset(tmp_path)
    loader = build_loader(
        dataset, BatchingConfig(max_batch_seconds=12.0, static_shapes=4), train=True, seed=0
    )
    sampler = loader.batch_sampler
    grid = {(b, round(s * 16000)) for b, s in zip(sampler.shape_sizes, sampler.shape_seconds)}
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for batch in loader:
            assert tuple(batch.wavs.shape) in grid  # the understated audio is cut by at most 5 ms
            assert batch.wavs.shape[0] * batch.wavs.shape[1] <= 12 * 16000


def test_audio_far_longer_than_its_utt2dur_is_kept_whole(tmp_path):
    """A stale utt2dur (1 s short) is not a rounding: the audio is not cut, its batch gets a shape
    of its own, as it would without static shapes."""
    dataset = _rounded_utt2dur_dataset(tmp_path, stale="spk1-u010")
    stale = dataset.utt_ids().index("spk1-u010")
    samples = len(dataset[stale]["wav"])
    loader = build_loader(
        dataset, BatchingConfig(max_batch_seconds=12.0, static_shapes=4), train=True, seed=0
    )
    batch = next(b for b in loader if "spk1-u010" in b.utt_ids)
    assert int(batch.wav_lens[batch.utt_ids.index("spk1-u010")]) == samples


def test_validation_batches_are_not_padded_to_the_training_shapes(tmp_path, monkeypatch):
    """train_on_loaders hands the trainer the validation loader's own collate."""
    from speechssl.training import trainer

    train = AudioDataset(make_data_dir(tmp_path, num_speakers=3, utts_per_speaker=4, name="train").path)
    dev = AudioDataset(make_data_dir(tmp_path, num_speakers=2, utts_per_speaker=2, name="dev").path)
    config = BatchingConfig(max_batch_seconds=4.0, static_shapes=2)
    seen = {}
    monkeypatch.setattr(trainer, "train", lambda *args, **kwargs: seen.update(kwargs))
    train_loader = build_loader(train, config, train=True, seed=0)
    trainer.train_on_loaders(
        None, train_loader, None, tmp_path, valid_loader=build_loader(dev, config, train=False, seed=0)
    )
    item = dev[0]
    assert seen["valid_collate"]([item]).wavs.shape[1] == len(item["wav"])
    assert train_loader.collate_fn([item]).wavs.shape[1] > len(item["wav"])  # the training collate pads
