"""Pretraining models: presets, strict configs, backward, reproducible steps."""

import pytest
import torch

from speechssl.config import ConfigError, from_dict, to_dict
from speechssl.objectives import (
    PretrainModelConfig,
    build_pretrain_model,
    get_pretrain_preset,
)


@pytest.mark.parametrize("name", ["hubert_tiny", "hubert_tiny_fbank", "wav2vec2_tiny"])
def test_tiny_presets_train_step(name):
    torch.manual_seed(0)
    model = build_pretrain_model(get_pretrain_preset(name)).train()
    wavs = torch.randn(2, 8000)
    lengths = torch.tensor([8000, 6000])
    targets = None if name.startswith("wav2vec2") else torch.randint(0, 50, (2, 25))
    loss, metrics = model(wavs, lengths, targets, generator=torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in metrics.values())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_same_generator_seed_same_step():
    model = build_pretrain_model(get_pretrain_preset("wav2vec2_tiny")).train()
    wavs, lengths = torch.randn(2, 8000), torch.tensor([8000, 7000])
    model.wav2vec2.config  # noqa: B018 - the backbone is reachable under transformers' name
    torch.manual_seed(1)  # dropout draws from the global generator
    a = model(wavs, lengths, generator=torch.Generator().manual_seed(3))[0]
    torch.manual_seed(1)
    b = model(wavs, lengths, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(a, b)


def test_temperature_follows_updates():
    model = build_pretrain_model(get_pretrain_preset("wav2vec2_tiny"))
    model.set_num_updates(100_000)
    assert model.quantizer.temperature == max(2.0 * 0.999995**100_000, 0.5)


def test_presets_mirror_fairseq_defaults():
    hub, w2v = get_pretrain_preset("hubert_base"), get_pretrain_preset("wav2vec2_base")
    assert (hub.mask.mask_prob, hub.mask.mask_length, hub.mask.min_masks) == (0.8, 10, 2)
    assert (hub.hubert.final_dim, hub.hubert.logit_temp, hub.hubert.pred_nomask_weight) == (256, 0.1, 0.0)
    assert (w2v.mask.mask_prob, w2v.wav2vec2.num_negatives, w2v.wav2vec2.diversity_weight) == (0.65, 100, 0.1)
    q = w2v.wav2vec2.quantizer
    assert (q.num_groups, q.num_vars, q.max_temp, q.min_temp, q.temp_decay) == (2, 320, 2.0, 0.5, 0.999995)


def test_every_model_preset_is_a_pretraining_preset():
    from speechssl.models import PRESETS, get_preset
    from speechssl.objectives.pretraining import OBJECTIVE_SECTIONS

    for name in PRESETS:  # one table of names: the model presets
        if get_preset(name).family in OBJECTIVE_SECTIONS:  # UniSpeech-SAT: no objective
            assert get_pretrain_preset(name).model == get_preset(name), name


def test_config_round_trip_and_errors():
    cfg = get_pretrain_preset("hubert_tiny")
    assert from_dict(PretrainModelConfig, to_dict(cfg)) == cfg
    data = to_dict(cfg)
    data["mask"]["mask_prb"] = 0.5
    with pytest.raises(ConfigError, match="unknown key 'mask_prb'.*did you mean 'mask_prob'"):
        from_dict(PretrainModelConfig, data, source="conf/x.yaml")
    data = to_dict(cfg)
    data["wav2vec2"] = {}
    with pytest.raises(ConfigError, match="section 'wav2vec2' does not apply to a model of family 'hubert'"):
        from_dict(PretrainModelConfig, data)
    with pytest.raises(
        ValueError, match="unknown pretraining preset 'hubert_huge'; valid presets: hubert_base"
    ):
        get_pretrain_preset("hubert_huge")
    with pytest.raises(ValueError, match="takes no labels"):
        build_pretrain_model(get_pretrain_preset("wav2vec2_tiny"))(
            torch.randn(1, 4000), None, torch.zeros(1, 12)
        )


def test_hubert_loss_is_per_predicted_frame_masked_and_unmasked():
    """fairseq's hubert_criterion divides by the count of every predicted frame kind."""
    import torch

    from speechssl.objectives.hubert import HubertObjectiveConfig
    from speechssl.objectives.pretraining import build_pretrain_model, get_pretrain_preset

    config = get_pretrain_preset("hubert_tiny")
    model = build_pretrain_model(
        type(config)(model=config.model, mask=config.mask,
                     hubert=HubertObjectiveConfig(num_classes=[5], pred_nomask_weight=1.0))
    ).eval()  # fmt: skip
    wavs = torch.randn(2, 8000)
    lengths = torch.tensor([8000, 6400])
    labels = torch.randint(0, 5, (2, 25))
    _, metrics = model(wavs, lengths, labels, generator=torch.Generator().manual_seed(0))
    frames = int(model.hubert.feature_extractor.output_lengths(lengths).sum())
    assert int(metrics["sample_size"]) == frames  # masked + unmasked valid frames
