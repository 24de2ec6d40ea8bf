"""The pretraining RankMe monitor: logged at validation, and a collapsed model is a warning."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from speechssl.analysis.monitor import RankMeMonitor, RankMeMonitorConfig
from speechssl.config import from_dict
from speechssl.testing.datadirs import make_data_dir
from speechssl.training.pretrain import BatchObjective, build_data, load_pretrain_config
from speechssl.training.trainer import train_on_loaders

CONF = Path(__file__).resolve().parents[2] / "egs" / "mini_synth" / "ssl1" / "conf"
TINY = [
    "model.encoder.embed_dim=32", "model.encoder.num_layers=2", "model.encoder.ffn_dim=64",
    "model.encoder.pos_conv_kernel=8", "trainer.log_every=1", "trainer.num_workers=0",
    "trainer.max_steps=2", "trainer.save_every=2", "trainer.warmup_steps=0", "trainer.lr=1e-9",
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for name, speakers in (("train", 2), ("dev", 2)):
        make_data_dir(root, num_speakers=speakers, utts_per_speaker=2, base_seconds=1.0, name=name)
    return root


def pretrain_with_monitor(corpus, out, monitor_config, *, collapse: bool):
    """Two updates of a tiny wav2vec 2.0 with a validation at the end; `collapse` makes the last
    layer's output one constant vector (its final LayerNorm: weight 0, bias a fixed vector)."""
    from speechssl.objectives.pretraining import build_pretrain_model

    config = load_pretrain_config(CONF / "pretrain_wav2vec2_tiny.yaml", TINY)
    torch.manual_seed(0)
    model = build_pretrain_model(config.network())
    backbone = model.wav2vec2
    if collapse:
        norm = backbone.encoder.layers[-1].final_layer_norm
        with torch.no_grad():
            norm.weight.zero_()
            norm.bias.copy_(torch.linspace(-1, 1, norm.bias.numel()))
    loaders = build_data(config, backbone, corpus / "train", corpus / "dev")
    monitor = RankMeMonitor(monitor_config, backbone, normalize=config.model.normalize_waveform)
    result = train_on_loaders(
        BatchObjective(model, ()), loaders.train, config.trainer, out, valid_loader=loaders.valid,
        valid_monitor=monitor,
    )  # fmt: skip
    return result


def tensorboard_scalars(out: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return set(events.Tags()["scalars"])


def test_a_collapsed_model_is_flagged_in_the_log_and_the_summary(corpus, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="speechssl.training")
    config = RankMeMonitorConfig(layers=(1, 2), max_frames=200, min_rankme=4.0)
    result = pretrain_with_monitor(corpus, tmp_path / "collapsed", config, collapse=True)
    assert len(result.warnings) == 1 and "RankMe of layer 2 is 1.00" in result.warnings[0]
    assert "first at step 2" in result.warnings[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step 2: RankMe of layer 2 is 1.00, below monitor.min_rankme 4" in w for w in warnings)
    summary = next(r.getMessage() for r in caplog.records if "training summary" in r.getMessage())
    assert "warning 1" in summary and "RankMe of layer 2" in summary
    valid = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("valid at step 2"))
    assert "rankme_layer1" in valid and "rankme_layer2 1" in valid
    assert {"valid/rankme_layer1", "valid/rankme_layer2"} <= tensorboard_scalars(tmp_path / "collapsed")


def test_a_healthy_model_logs_rankme_without_a_warning(corpus, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="speechssl.training")
    result = pretrain_with_monitor(
        corpus, tmp_path / "ok", RankMeMonitorConfig(max_frames=200), collapse=False
    )
    assert result.warnings == ()
    valid = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("valid at step 2"))
    value = float(valid.split("rankme_layer2 ")[1].split(",")[0])  # the last layer by default
    assert value > 4.0
    assert "valid/rankme_layer2" in tensorboard_scalars(tmp_path / "ok")


def test_monitor_keeps_a_bounded_seeded_sample_of_valid_frames():
    from speechssl.data.dataset import Batch
    from speechssl.models.model import build_model
    from speechssl.testing.models import perturb_, random_waves, tiny_config

    backbone = perturb_(build_model(tiny_config(mode="layer_norm"))).eval()
    wavs, lengths = random_waves([16000, 9000, 12000])
    batch = Batch(utt_ids=["a", "b", "c"], wavs=wavs, wav_lens=lengths)
    monitor = RankMeMonitor(RankMeMonitorConfig(layers=(0, 2), max_frames=60), backbone)
    monitor.update(batch)
    monitor.update(batch)  # already full: ignored
    assert monitor.count == 60 and [torch.cat(f).shape for f in monitor.frames] == [(60, 32)] * 2
    first = monitor.compute()
    monitor.reset()
    monitor.update(batch)
    assert monitor.compute() == first  # the same frames each validation
    assert set(first) == {"rankme_layer0", "rankme_layer2"} and all(1 < v <= 32 for v in first.values())
    assert monitor.check({"valid/rankme_layer2": 3.0}).keys() == {"rankme_layer2"}
    assert monitor.check({"valid/rankme_layer2": 30.0}) == {}
    off = RankMeMonitor(RankMeMonitorConfig(enabled=False), backbone)
    off.update(batch)
    assert off.compute() == {}


def test_monitor_config_is_validated():
    with pytest.raises(ValueError, match="max_frames must be >= 2"):
        RankMeMonitorConfig(max_frames=1)
    with pytest.raises(ValueError, match="min_rankme must be a finite number >= 0"):
        RankMeMonitorConfig(min_rankme=float("nan"))
    with pytest.raises(ValueError, match="distinct layer numbers"):
        from_dict(RankMeMonitorConfig, {"layers": [1, 1]})
    with pytest.raises(ValueError, match="unknown key"):
        from_dict(RankMeMonitorConfig, {"min_rank": 3})
    from speechssl.models.model import build_model
    from speechssl.testing.models import tiny_config

    with pytest.raises(ValueError, match=r"monitor.layers \[3\]: the model has layers 0..2"):
        RankMeMonitor(RankMeMonitorConfig(layers=(0, 3)), build_model(tiny_config()))
    assert replace(RankMeMonitorConfig(), layers=(0,)).layers == (0,)
