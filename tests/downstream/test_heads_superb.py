"""The downstream heads equal s3prl's SUPERB experts (structure, parameter counts, outputs on the
same perturbed weights), SpecAugment only in training, the ASV crop and short-utterance filter,
the class-balanced KS sampler, and the optimizer (Adam with torch's defaults).

s3prl's modules are built from the installed package with the settings of its configs:
ctc/libriphone.yaml (PR), asr/config.yaml (ASR), sv_voxceleb1/configs/amsoftmax.yaml (ASV),
speech_commands/config.yaml (KS); the expert's own projector / connector is the nn.Linear it
makes in expert.py (ctc: `self.projector`, asr: `self.projector`, sv: `self.connector`,
speech_commands: `self.projector`)."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest
import torch
from torch import nn

from speechssl.data.sampler import DurationBucketSampler
from speechssl.downstream import DownstreamConfig, HeadConfig, build_task
from speechssl.downstream.heads import (
    AdditiveMarginSoftmax,
    BiLSTMCTCHead,
    MeanPoolClassifier,
    ProjectedCTCHead,
    SpecAugment,
    XVectorHead,
)
from speechssl.testing.models import perturb_
from speechssl.training.optim import build_optimizer

D = 77  # an odd upstream width
V = 31  # an odd vocabulary


def _count(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def _shapes(*modules: nn.Module) -> list[int]:
    """Every parameter's size, sorted: the same multiset means the same layers (names differ)."""
    return sorted(p.numel() for m in modules for p in m.parameters())


def _padded(lengths: list[int], dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(len(lengths), max(lengths), dim)
    for b, n in enumerate(lengths):
        x[b, :n] = torch.randn(n, dim, generator=g)
    return x, torch.tensor(lengths)


# ---------------------------------------------------------------- PR


def test_pr_head_is_s3prl_projector_and_framelevel():
    from s3prl.downstream.model import FrameLevel

    ours = ProjectedCTCHead(D, V)  # HeadConfig().hidden_dim = 256
    assert ours.proj.out_features == HeadConfig().hidden_dim == 256
    projector, model = nn.Linear(D, 256), FrameLevel(256, V)  # libriphone.yaml: project_dim 256
    assert _count(ours) == _count(projector, model) == D * 256 + 256 + 256 * V + V
    assert _shapes(ours) == _shapes(projector, model)
    perturb_(ours)
    projector.load_state_dict(ours.proj.state_dict())
    model.linear.load_state_dict(ours.out.state_dict())
    x, lengths = _padded([9, 5], D)
    logits, out_lens = ours(x, lengths)
    ref, _ = model(projector(x), lengths)
    assert torch.equal(out_lens, lengths)
    torch.testing.assert_close(logits, ref, atol=1e-6, rtol=0)


def test_finetune_keeps_the_single_linear_head():
    from speechssl.downstream.finetune import LinearCTCHead

    head = LinearCTCHead(D, V)
    assert [n for n, _ in head.named_parameters()] == ["out.weight", "out.bias"]


# ---------------------------------------------------------------- ASR


def _s3prl_asr(dim: int, vocab: int, cells: int):
    from s3prl.downstream.asr.model import RNNs

    # asr/config.yaml: project_dim 1024; RNNs: LSTM, bidirection, dim [1024, 1024], dropout 0.2,
    # no layer norm, no proj, sample_rate [1, 1], total_rate -1
    projector = nn.Linear(dim, cells)
    rnns = RNNs(
        cells, vocab, upstream_rate=320, module="LSTM", bidirection=True, dim=[cells, cells],
        dropout=[0.2, 0.2], layer_norm=[False, False], proj=[False, False], sample_rate=[1, 1],
        sample_style="concat", total_rate=-1,
    )  # fmt: skip
    return projector, rnns


def test_asr_head_has_s3prl_sizes():
    ours = BiLSTMCTCHead(D, V, hidden_dim=HeadConfig().lstm_dim, num_layers=HeadConfig().lstm_layers)
    projector, rnns = _s3prl_asr(D, V, 1024)
    # Linear(D, 1024); LSTM(1024 -> 2x1024); LSTM(2048 -> 2x1024); Linear(2048, V)
    lstm = lambda i: 2 * (4 * 1024 * (i + 1024) + 2 * 4 * 1024)  # noqa: E731
    expected = (D * 1024 + 1024) + lstm(1024) + lstm(2048) + (2048 * V + V)
    assert _count(ours) == _count(projector, rnns) == expected
    assert _shapes(ours) == _shapes(projector, rnns)


def test_asr_head_equals_s3prl_rnns_on_the_same_weights():
    cells = 12
    ours = perturb_(BiLSTMCTCHead(D, V, hidden_dim=cells, num_layers=2, spec_augment=SpecAugment()))
    projector, rnns = _s3prl_asr(D, V, cells)
    projector.load_state_dict(ours.proj.state_dict())
    state = ours.lstm.state_dict()
    for layer, rnn in enumerate(rnns.rnns):
        rnn.layer.load_state_dict(
            {k.replace(f"_l{layer}", "_l0"): v for k, v in state.items() if f"_l{layer}" in k}
        )
    rnns.linear.load_state_dict(ours.out.state_dict())
    ours.eval(), rnns.eval()
    x, lengths = _padded([11, 7, 4], D)
    logits, _ = ours(x, lengths)
    ref, ref_lens = rnns(projector(x), lengths)
    for b, n in enumerate(lengths.tolist()):  # s3prl's output is as long as the longest
        torch.testing.assert_close(logits[b, :n], ref[b, :n], atol=1e-5, rtol=0)


def test_specaugment_masks_in_training_only():
    torch.manual_seed(0)
    augment = SpecAugment(num_time_masks=2, time_mask_width=5, num_freq_masks=3, freq_mask_width=4)
    x = torch.rand(6, 40, 16) + 1.0  # no zeros of its own
    augment.eval()
    assert torch.equal(augment(x), x)
    augment.train()
    y = augment(x)
    masked = y == 0
    assert masked.any() and torch.equal(y[~masked], x[~masked])
    # each utterance: whole frames (time masks) or whole channels (freq masks), at most 2x4 / 3x3
    for b in range(6):
        frames = masked[b].all(dim=1)
        channels = masked[b].all(dim=0)
        assert torch.equal(masked[b], frames[:, None] | channels[None, :])
        assert int(frames.sum()) <= 2 * 4 and int(channels.sum()) <= 3 * 3
    assert (masked.sum(dim=(1, 2)) > 0).sum() > 1  # drawn per utterance


def test_tasks_build_their_heads_from_the_config(task_data, tmp_path):
    head = HeadConfig(lstm_dim=8, lstm_layers=1, time_mask_width=3, freq_mask_width=2, hidden_dim=6)
    config = DownstreamConfig(head=head)
    asr = build_task("asr", task_data["asr"], tmp_path / "asr", config).build_head(D)
    assert asr.proj.out_features == 8 and asr.lstm.num_layers == 1
    assert asr.spec_augment.time == (2, 3) and asr.spec_augment.freq == (4, 2)
    off = DownstreamConfig(head=HeadConfig(lstm_dim=8, spec_augment=False))
    assert build_task("asr", task_data["asr"], tmp_path / "a2", off).build_head(D).spec_augment is None
    pr = build_task("pr", task_data["pr"], tmp_path / "pr", config).build_head(D)
    assert isinstance(pr, ProjectedCTCHead) and pr.proj.out_features == 6


# ---------------------------------------------------------------- KS / IC / SID


def test_pooled_head_is_s3prl_utterance_level():
    from s3prl.downstream.model import UtteranceLevel

    ours = perturb_(MeanPoolClassifier(D, V))  # speech_commands/config.yaml: projector_dim 256
    projector, model = nn.Linear(D, 256), UtteranceLevel(256, V, pooling="MeanPooling")
    assert _count(ours) == _count(projector, model) == D * 256 + 256 + 256 * V + V
    projector.load_state_dict(ours.proj.state_dict())
    model.post_net.linear.load_state_dict(ours.outs[0].state_dict())
    x, lengths = _padded([8, 3, 5], D)
    ref, _ = model(projector(x), lengths)
    torch.testing.assert_close(ours(x, lengths), ref, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- ASV


def _s3prl_xvector(dim: int, speakers: int, channels: int, agg: int):
    from s3prl.downstream.sv_voxceleb1.model import AMSoftmaxLoss, Model

    # amsoftmax.yaml: input_dim 512, XVector (agg_dim 1500, dropout 0, no batch norm), SP, UtteranceExtractor
    connector = nn.Linear(dim, channels)
    model = Model(
        input_dim=channels, agg_dim=agg, agg_module_name="SP", module_name="XVector",
        utterance_module_name="UtteranceExtractor",
        hparams={"agg_dim": agg, "dropout_p": 0.0, "batch_norm": False},
    )  # fmt: skip
    return connector, model, AMSoftmaxLoss(channels, speakers, s=30.0, m=0.4)


def test_xvector_has_s3prl_sizes():
    h = HeadConfig()
    assert (h.xvector_channels, h.xvector_agg_dim, h.embed_dim, h.xvector_batch_norm) == (
        512,
        1500,
        512,
        False,
    )
    assert (h.am_margin, h.am_scale, h.asv_max_seconds, h.asv_min_seconds) == (0.4, 30.0, 8.0, 2.0)
    ours = XVectorHead(D, channels=512, agg_dim=1500, embed_dim=512)
    loss = AdditiveMarginSoftmax(512, V, margin=0.4, scale=30.0)
    connector, model, ref_loss = _s3prl_xvector(D, V, 512, 1500)
    tdnn = 512 * 5 * 512 + 512 * 3 * 512 + 512 * 3 * 512 + 512 * 512 + 512 * 1500 + 4 * 512 + 1500
    expected = (D * 512 + 512) + tdnn + (3000 * 512 + 512) + (512 * 512 + 512) + 512 * V
    assert _count(ours, loss) == _count(connector, model, ref_loss) == expected
    assert _shapes(ours, loss) == _shapes(connector, model, ref_loss)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in ours.modules())


def _copy_xvector(ours: XVectorHead, connector: nn.Linear, model: nn.Module) -> None:
    connector.load_state_dict(ours.connector.state_dict())
    for layer, tdnn in zip(ours.frames, model.framelevel_feature_extractor.module):
        w = layer.conv.weight  # (out, in, context); s3prl: Linear over (context, in) flattened
        tdnn.kernel.weight.data.copy_(w.permute(0, 2, 1).reshape(w.shape[0], -1))
        tdnn.kernel.bias.data.copy_(layer.conv.bias)
    extractor = model.utterancelevel_feature_extractor
    extractor.linear1.load_state_dict(ours.embed.state_dict())
    extractor.linear2.load_state_dict(ours.train_out.state_dict())


def test_xvector_equals_s3prl_on_the_same_weights():
    ours = perturb_(XVectorHead(D, channels=24, agg_dim=40, embed_dim=24))  # s3prl: embedding = input_dim
    connector, model, _ = _s3prl_xvector(D, V, 24, 40)
    _copy_xvector(ours, connector, model)
    x, lengths = _padded([30, 30], D)  # unpadded: s3prl's SP counts one padded frame
    mask = torch.zeros(2, 30 - 14)  # s3prl: the TDNNs take 14 frames
    torch.testing.assert_close(ours(x, lengths), model(connector(x), mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        ours.embedding(x, lengths), model.inference(connector(x), mask), atol=1e-5, rtol=1e-5
    )


def test_xvector_padding_and_short_inputs():
    head = perturb_(XVectorHead(D, channels=8, agg_dim=12, embed_dim=6)).eval()
    x, lengths = _padded([33, 20, 9], D)
    batched = head.embedding(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        alone = head.embedding(x[b : b + 1, :n], lengths[b : b + 1])
        torch.testing.assert_close(batched[b : b + 1], alone, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(batched).all()  # 9 frames < the 15 of the receptive field: still one


def test_am_softmax_equals_s3prl():
    from s3prl.downstream.sv_voxceleb1.model import AMSoftmaxLoss

    ours = perturb_(AdditiveMarginSoftmax(16, V, margin=0.4, scale=30.0))
    ref = AMSoftmaxLoss(16, V, s=30.0, m=0.4)
    ref.W.data.copy_(ours.weight.T)
    emb, labels = torch.randn(5, 16), torch.tensor([0, 3, 30, 7, 3])
    loss, _ = ours(emb, labels)
    torch.testing.assert_close(loss, ref(emb, labels), atol=1e-5, rtol=1e-5)


def _asv_data(root, seconds: list[float]):
    from speechssl.data.datadir import write_data_dir
    from speechssl.testing.datadirs import write_tone

    wav, spk, dur = {}, {}, {}
    for k, s in enumerate(seconds):
        utt = f"spk{k % 2}-u{k}"
        wav[utt] = write_tone(root / "audio" / f"{utt}.wav", s)
        spk[utt], dur[utt] = f"spk{k % 2}", s
    write_data_dir(root / "train", dict(sorted(wav.items())), utt2spk=spk, utt2dur=dur)


def test_asv_training_drops_short_utterances_and_crops(tmp_path, caplog):
    _asv_data(tmp_path, [0.5, 1.2, 2.0, 3.5, 9.0, 1.9])
    config = DownstreamConfig(head=HeadConfig(asv_max_seconds=3.0, asv_min_seconds=1.5))
    task = build_task("asv", tmp_path, tmp_path / "exp", config)
    with caplog.at_level(logging.INFO, logger="speechssl.downstream.tasks"):
        train = task.dataset("train", train=True)
    assert sorted(train.full_durations) == [1.9, 2.0, 3.5, 9.0]
    assert sorted(train.durations) == [1.9, 2.0, 3.0, 3.0]
    assert "2 of 6 training utterances are shorter than asv_min_seconds=1.5" in caplog.text
    item = train[train.full_durations.index(9.0)]
    assert item["wav"].shape[0] == 3 * 16000  # cropped when read
    # evaluation keeps everything, whole
    assert sorted(task.dataset("train", train=False).durations) == [0.5, 1.2, 1.9, 2.0, 3.5, 9.0]
    # a run-wide max_seconds shorter than the ASV crop wins
    short = build_task("asv", tmp_path, tmp_path / "e2", DownstreamConfig(max_seconds=2.5, head=config.head))
    assert max(short.dataset("train", train=True).durations) == 2.5
    # every utterance too short: one clear error
    none_left = DownstreamConfig(head=HeadConfig(asv_min_seconds=9.5, asv_max_seconds=None))
    with pytest.raises(
        ValueError, match="every utterance of .*train is shorter than head.asv_min_seconds=9.5"
    ):
        build_task("asv", tmp_path, tmp_path / "e3", none_left).dataset("train", train=True)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"asv_min_seconds": 9.0}, r"asv_min_seconds \(9.0\) exceeds asv_max_seconds \(8.0\)"),
        ({"am_margin": 1.5}, r"am_margin must be in \[0, 1\)"),
        ({"lstm_dim": 0}, "lstm_dim must be > 0"),
        ({"freq_mask_width": -1}, "freq_mask_width must be >= 0"),
    ],
)
def test_head_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HeadConfig(**kwargs)


# ---------------------------------------------------------------- KS sampler


def _skewed(counts: list[int]) -> tuple[list[float], list[int]]:
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    rng = np.random.default_rng(0)
    return [float(d) for d in rng.uniform(0.5, 1.0, len(labels))], labels


def test_weighted_sampler_draws_classes_uniformly_and_is_seeded():
    durations, labels = _skewed([200, 40, 10, 5])
    counts = Counter(labels)
    weights = [len(labels) / counts[c] for c in labels]
    drawn: Counter = Counter()
    sampler = DurationBucketSampler(durations, 8.0, seed=3, weights=weights)
    for epoch in range(20):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sum(len(b) for b in batches) == len(labels)  # len(train) draws per epoch
        drawn.update(labels[i] for b in batches for i in b)
    share = np.array([drawn[c] for c in range(4)]) / sum(drawn.values())
    assert np.abs(share - 0.25).max() < 0.03, share  # unbalanced: 0.78 / 0.16 / 0.04 / 0.02
    again = DurationBucketSampler(durations, 8.0, seed=3, weights=weights)
    again.set_epoch(19)
    sampler.set_epoch(19)
    assert list(again) == list(sampler)
    other = DurationBucketSampler(durations, 8.0, seed=4, weights=weights)
    other.set_epoch(19)
    assert list(other) != list(sampler)


def test_weighted_sampler_resumes_mid_epoch():
    durations, labels = _skewed([30, 6, 3])
    weights = [1.0 / Counter(labels)[c] for c in labels]
    full = DurationBucketSampler(durations, 4.0, seed=1, weights=weights)
    full.set_epoch(2)
    batches = list(full)
    head = DurationBucketSampler(durations, 4.0, seed=1, weights=weights)
    head.set_epoch(2)
    it = iter(head)
    first = [next(it) for _ in range(3)]
    state = head.state_dict(batches_consumed=3)
    resumed = DurationBucketSampler(durations, 4.0, seed=1, weights=weights)
    resumed.load_state_dict(state)
    assert first + list(resumed) == batches
    plain = DurationBucketSampler(durations, 4.0, seed=1)
    with pytest.raises(ValueError, match="cannot resume sampler"):
        plain.load_state_dict(state)


def test_weighted_sampler_errors():
    with pytest.raises(ValueError, match="weights has 2 entries for 3 durations"):
        DurationBucketSampler([1.0, 1.0, 1.0], 4.0, weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="weights must be finite, >= 0 and not all 0"):
        DurationBucketSampler([1.0, 1.0], 4.0, weights=[0.0, 0.0])


def test_ks_train_loader_balances_classes(task_data, tmp_path):
    task = build_task("ks", task_data["ks"], tmp_path / "exp", DownstreamConfig())
    loader = task.train_loader(DownstreamConfig().batching(), seed=1)
    sampler = loader.batch_sampler
    assert sampler.weights is not None
    table = loader.dataset.targets["label"]
    labels = [table[u] for u in loader.dataset.utt_ids()]
    counts = Counter(labels)
    assert sampler.weights == [len(labels) / counts[x] for x in labels]
    batch = next(iter(loader))
    assert batch.targets["label"].numel() == len(next(iter(sampler)))
    sid = build_task("sid", task_data["sid"], tmp_path / "sid", DownstreamConfig())
    assert sid.train_loader(DownstreamConfig().batching(), seed=1).batch_sampler.weights is None


# ---------------------------------------------------------------- optimizer


def test_adam_is_torch_adam_with_its_defaults():
    config = DownstreamConfig()
    assert config.optimizer == "adam"
    trainer = config.trainer()
    assert (trainer.betas, trainer.eps, trainer.weight_decay) == ((0.9, 0.999), 1e-8, 0.0)
    torch.manual_seed(0)
    ours = perturb_(MeanPoolClassifier(D, V, hidden_dim=9))
    ref = MeanPoolClassifier(D, V, hidden_dim=9)
    ref.load_state_dict(ours.state_dict())
    opt = build_optimizer(ours, trainer)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=trainer.lr)  # torch's defaults
    x, lengths = _padded([6, 4], D)
    labels = torch.tensor([1, 30])
    for _ in range(5):
        for model, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            nn.functional.cross_entropy(model(x, lengths), labels).backward()
            o.step()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6, msg=name)


def test_optimizer_choices():
    w = DownstreamConfig(optimizer="adamw", weight_decay=0.01).trainer()
    assert (w.betas, w.eps, w.weight_decay) == ((0.9, 0.98), 1e-6, 0.01)
    assert DownstreamConfig(eps=1e-5).trainer().eps == 1e-5
    with pytest.raises(ValueError, match="weight_decay \\(0.01\\) needs optimizer: adamw"):
        DownstreamConfig(weight_decay=0.01)
    from speechssl.downstream.config import finetune_defaults

    ft = finetune_defaults().trainer()
    assert (ft.betas, ft.eps, ft.weight_decay) == ((0.9, 0.98), 1e-8, 0.0)  # fairseq base_10h
