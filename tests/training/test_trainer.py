import math

import pytest
import torch

from speechssl.testing.training import ToyBatchSampler, ToyDataset, ToyModel, toy_collate
from speechssl.training import BadStepsError, TrainerConfig, load_checkpoint, train


def _run(tmp_path, *, nan_items=(), valid=False, dropout_free=False, **trainer):
    torch.manual_seed(0)
    data = ToyDataset(16, nan_items=nan_items)
    model = ToyModel(dropout=0.0 if dropout_free else 0.1)
    cfg = TrainerConfig(**{"max_steps": 8, "save_every": 4, "log_every": 2, "lr": 0.01, **trainer})
    kwargs = {}
    if valid:
        kwargs = {
            "valid_dataset": ToyDataset(8, seed=5),
            "valid_sampler": ToyBatchSampler(8, 4, shuffle=False),
        }
    result = train(model, data, toy_collate, ToyBatchSampler(16, 4, shuffle=False), cfg, tmp_path, **kwargs)
    return model, result


def test_nan_steps_are_skipped_and_counted(tmp_path):
    model, result = _run(tmp_path, nan_items=(0,))  # batch 0 of each epoch (4 batches) is NaN
    assert result.skipped_steps == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    _, state = load_checkpoint(tmp_path / "checkpoints" / "last")
    assert state["skipped_steps"] == 2
    steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {6}  # 8 updates, 2 skipped inside the fused kernel


def test_consecutive_bad_steps_stop_with_advice(tmp_path):
    with pytest.raises(
        BadStepsError,
        match=r"3 consecutive updates had a NaN/inf loss or gradient .*"
        r"Try: a lower lr .*fp32 or bf16 instead of fp16.*check the data",
    ):
        _run(tmp_path, nan_items=tuple(range(16)), max_bad_steps=3, log_every=10)


def test_keep_last_best_and_tensorboard_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, result = _run(tmp_path, valid=True, save_every=2, keep_last=2, accum_steps=2, clip_norm=1.0)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert result.best_checkpoint is not None and result.best_checkpoint.name in ckpts
    assert {"step_6", "step_8"} <= set(ckpts) and len(ckpts) <= 3
    assert result.best_valid_loss is not None and math.isfinite(result.best_valid_loss)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {
        "train/loss",
        "train/mae",
        "train/pred_mean",
        "train/lr",
        "train/grad_norm",
        "train/audio_seconds_per_second",
        "train/padding_efficiency",
        "train/skipped_steps",
        "memory/max_rss_gib",
        "valid/loss",
        "valid/mae",
    }
    assert expected <= tags, expected - tags
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4, 6, 8]
    eff = acc.Scalars("train/padding_efficiency")[0].value
    assert 0 < eff <= 1


def test_resume_true_without_checkpoint_starts_fresh_and_bad_resume_path(tmp_path):
    result = train(
        ToyModel(),
        ToyDataset(8),
        toy_collate,
        ToyBatchSampler(8, 4),
        TrainerConfig(max_steps=2),
        tmp_path,
        resume=True,
    )
    assert result.step == 2 and result.last_checkpoint.name == "step_2"
    with pytest.raises(FileNotFoundError, match="resume checkpoint .*nope does not exist"):
        train(
            ToyModel(),
            ToyDataset(8),
            toy_collate,
            ToyBatchSampler(8, 4),
            TrainerConfig(max_steps=1),
            tmp_path / "x",
            resume=tmp_path / "nope",
        )


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_and_scaler_state_is_saved(tmp_path, precision):
    model, result = _run(tmp_path, precision=precision, max_steps=4, save_every=4, log_every=4)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    _, state = load_checkpoint(tmp_path / "checkpoints" / "last")
    if precision == "fp16":  # the first update overflows at scale 2**16: skipped, scale halved
        assert result.skipped_steps == 1 and state["scaler"]["scale"] == 2.0**15
    else:
        assert result.skipped_steps == 0 and state["scaler"] == {}


def _bucket_sampler(data):
    from speechssl.data.sampler import DurationBucketSampler

    return DurationBucketSampler([float(n) for n in data.lengths], 30.0, seed=3, num_buckets=2)


@pytest.mark.parametrize("kind", ["toy", "duration_bucket"])
def test_resume_from_mid_epoch_checkpoint_is_bit_exact(tmp_path, kind):
    """Samplers that track their position (DurationBucketSampler) and ones that do not
    (ToyBatchSampler: the trainer skips consumed batches) both resume exactly."""

    def fresh():
        torch.manual_seed(0)
        data = ToyDataset(24)
        sampler = ToyBatchSampler(24, 3, seed=3) if kind == "toy" else _bucket_sampler(data)
        return ToyModel(dropout=0.3), data, sampler

    cfg = TrainerConfig(max_steps=10, save_every=5, keep_last=5, log_every=5, lr=0.01, warmup_steps=2)
    model, data, sampler = fresh()
    assert 5 % len(sampler) != 0  # the checkpoint at step 5 is mid-epoch
    train(model, data, toy_collate, sampler, cfg, tmp_path / "a")
    resumed, data, sampler = fresh()
    result = train(
        resumed,
        data,
        toy_collate,
        sampler,
        cfg,
        tmp_path / "b",
        resume=tmp_path / "a" / "checkpoints" / "step_5",
    )
    assert result.step == 10
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_batch_helpers_understand_the_dataset_batch():
    from speechssl.data.dataset import collate_audio
    from speechssl.training.trainer import default_batch_lengths, to_device

    batch = collate_audio(
        [{"utt_id": "a", "wav": torch.zeros(16000)}, {"utt_id": "b", "wav": torch.zeros(8000)}]
    )
    assert default_batch_lengths(batch).tolist() == [16000, 8000]
    moved = to_device(batch, torch.device("cpu"))
    assert moved.wavs.shape == (2, 16000)
    # no key guessing: a batch without `wav_lens` gives no lengths (pass batch_lengths= instead)
    assert default_batch_lengths({"lengths": torch.tensor([3, 4])}) is None
    assert default_batch_lengths(
        toy_collate(
            [
                {"x": torch.zeros(3, 4), "y": torch.tensor(0.0)},
                {"x": torch.zeros(4, 4), "y": torch.tensor(0.0)},
            ]
        )
    ).tolist() == [3, 4]
    assert default_batch_lengths((torch.zeros(2),)) is None


def test_compiled_training_matches_eager(tmp_path):
    """trainer.compile=true trains the same model (same losses, same final weights) and its
    checkpoints hold the plain module's keys, loadable without torch.compile."""
    from torch._dynamo.utils import counters

    eager, _ = _run(tmp_path / "eager", dropout_free=True, accum_steps=2)
    counters.clear()
    compiled, _ = _run(tmp_path / "compiled", dropout_free=True, accum_steps=2, compile=True)
    assert counters["stats"]["unique_graphs"] >= 1  # the forward really went through dynamo
    for (name, a), (_, b) in zip(eager.state_dict().items(), compiled.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    model_state, _ = load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last")
    assert set(model_state) == set(eager.state_dict())


@pytest.mark.parametrize("num_workers", [0, 1])
def test_each_epoch_draws_new_random_crops_and_a_restart_draws_them_again(data_dir, num_workers):
    """The stream tells the dataset its epoch, so crop='random' windows change per epoch (the
    workers copy the dataset after that), and depend on (seed, epoch, index) only: a stream
    reopened at epoch 1, as after a resume, gets epoch 1's windows."""
    from speechssl.data.dataset import AudioDataset, collate_audio
    from speechssl.training.distributed import DistInfo
    from speechssl.training.trainer import MicroBatchStream

    dataset = AudioDataset(data_dir.path, max_seconds=0.1, crop="random", seed=3)
    batches = [[0, 1], [2, 3]]
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    config = TrainerConfig(num_workers=num_workers)

    def epochs(start: int, count: int) -> list[torch.Tensor]:
        stream = MicroBatchStream(dataset, collate_audio, batches, config, info, epoch=start)
        return [torch.cat([stream.next().wavs for _ in batches]) for _ in range(count)]

    first, second = epochs(0, 2)
    assert first.shape == second.shape and not torch.equal(first, second)
    assert torch.equal(epochs(1, 1)[0], second)
