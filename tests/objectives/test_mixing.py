"""WavLM's utterance mixing: seeded semantics, SNR, regions, labels, and the WavLM objective."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from speechssl.objectives import (
    MixingConfig,
    NoiseBank,
    PretrainModelConfig,
    build_pretrain_model,
    get_pretrain_preset,
    mix_batch,
)

LENGTHS = [8000, 5311, 6999, 4001, 7777]


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded random speech-like rows (distinct per row so the partner is identifiable)."""
    gen = torch.Generator().manual_seed(seed)
    wavs = torch.zeros(len(LENGTHS), max(LENGTHS))
    for i, n in enumerate(LENGTHS):
        wavs[i, :n] = (0.1 + 0.05 * i) * torch.randn(n, generator=gen)
    return wavs, torch.tensor(LENGTHS)


def noise_bank() -> NoiseBank:
    gen = torch.Generator().manual_seed(9)
    return NoiseBank.from_list([torch.randn(3000, generator=gen), 0.3 * torch.randn(12000, generator=gen)])


def realised_snr(primary: torch.Tensor, added: torch.Tensor) -> float:
    return 10 * torch.log10(primary.double().pow(2).mean() / added.double().pow(2).mean()).item()


def test_every_mix_follows_the_documented_semantics():
    """Seeded: the region lies inside both signals' valid samples, at most half the primary; the
    partner is another row taken before mixing; the realised SNR is the drawn one; padding stays 0."""
    wavs, lens = batch()
    cfg = MixingConfig(mix_prob=1.0, noise_prob=0.4, max_mixed_fraction=0.5)
    bank = noise_bank()
    seen_noise = seen_utt = 0
    for seed in range(40):
        out, info = mix_batch(wavs, lens, cfg, noise=bank, generator=torch.Generator().manual_seed(seed))
        for i, n in enumerate(LENGTHS):
            assert not out[i, n:].any()  # padding untouched
            if not info.mixed[i]:
                assert torch.equal(out[i], wavs[i])
                continue
            s, k, c = int(info.start[i]), int(info.length[i]), int(info.source_start[i])
            assert 1 <= k <= n // 2 and 0 <= s and s + k <= n
            added = out[i] - wavs[i]
            assert not added[:s].any() and not added[s + k :].any()
            if info.noise[i]:
                seen_noise += 1
                clip = int(info.clip[i])
                source = bank.clips[clip, : int(bank.lengths[clip])]
                lo, hi = cfg.noise_snr
            else:
                seen_utt += 1
                p = int(info.partner[i])
                assert p != i  # never itself
                source = wavs[p, : LENGTHS[p]]  # the partner as it was before any mixing
                lo, hi = cfg.utterance_snr
            assert c + k <= source.shape[0]
            expected = info.scale[i] * source[c : c + k]
            assert torch.allclose(added[s : s + k], expected, atol=1e-6)
            snr = float(info.snr_db[i])
            assert lo <= snr <= hi
            assert abs(realised_snr(wavs[i, s : s + k], added[s : s + k]) - snr) < 0.1
    assert seen_noise > 20 and seen_utt > 20


def test_mixed_in_utterances_are_taken_before_they_were_mixed():
    """Order independence: permuting the batch permutes the result (the original mixes in place)."""
    wavs, lens = batch(1)
    cfg = MixingConfig(mix_prob=1.0)
    out, info = mix_batch(wavs, lens, cfg, generator=torch.Generator().manual_seed(5))
    assert bool(info.mixed.all())
    partners_mixed = [int(info.partner[i]) for i in range(len(LENGTHS))]
    # a partner that was itself mixed contributes its clean samples: the added signal is a scaled
    # slice of the clean row, not of the mixed one
    for i, p in enumerate(partners_mixed):
        s, k, c = int(info.start[i]), int(info.length[i]), int(info.source_start[i])
        clean = info.scale[i] * wavs[p, c : c + k]
        assert torch.allclose(out[i, s : s + k] - wavs[i, s : s + k], clean, atol=1e-6)


def test_seeded_draws_are_reproducible_and_rates_follow_the_config():
    wavs, lens = batch(2)
    cfg = MixingConfig(mix_prob=0.2)
    a, ia = mix_batch(wavs, lens, cfg, generator=torch.Generator().manual_seed(3))
    b, ib = mix_batch(wavs, lens, cfg, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(ia, ib))
    gen = torch.Generator().manual_seed(0)
    rate = (
        sum(float(mix_batch(wavs, lens, cfg, generator=gen)[1].mixed.float().mean()) for _ in range(300))
        / 300
    )
    assert 0.15 < rate < 0.25
    none, info = mix_batch(wavs, lens, MixingConfig(mix_prob=0.0), generator=gen)
    assert torch.equal(none, wavs) and not info.mixed.any()


def test_one_utterance_is_mixed_with_noise_or_not_at_all():
    wavs, lens = batch()
    one, n = wavs[:1], lens[:1]
    out, info = mix_batch(one, n, MixingConfig(mix_prob=1.0), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, one) and not info.mixed.any()
    cfg = MixingConfig(mix_prob=1.0, noise_prob=0.1)
    out, info = mix_batch(one, n, cfg, noise=noise_bank(), generator=torch.Generator().manual_seed(0))
    assert bool(info.mixed.all() and info.noise.all())


def test_a_silent_region_mixes_nothing():
    wavs, lens = batch()
    wavs[1] = 0.0  # a silent partner or primary: no finite gain gives the drawn SNR
    cfg = MixingConfig(mix_prob=1.0)
    for seed in range(10):
        out, info = mix_batch(wavs, lens, cfg, generator=torch.Generator().manual_seed(seed))
        assert torch.isfinite(out).all()
        assert not info.mixed[1]
        for i in range(len(LENGTHS)):
            if int(info.partner[i]) == 1:
                assert not info.mixed[i] and torch.equal(out[i], wavs[i])


def test_config_errors():
    with pytest.raises(ValueError, match="mix_prob must be in \\[0, 1\\], found 1.5"):
        MixingConfig(mix_prob=1.5)
    with pytest.raises(ValueError, match="noise_snr must be \\[low, high\\] in dB with low <= high"):
        MixingConfig(noise_snr=[20.0, -5.0])
    with pytest.raises(ValueError, match="max_mixed_fraction must be in \\(0, 1\\], found 0"):
        MixingConfig(max_mixed_fraction=0.0)
    with pytest.raises(ValueError, match="a noise bank needs at least one clip"):
        NoiseBank.from_list([])


def test_wavlm_objective_keeps_the_primary_labels_and_reports_the_mix_rate():
    preset = get_pretrain_preset("wavlm_tiny")
    objective = dataclasses.replace(preset.wavlm, mixing=MixingConfig(mix_prob=1.0))
    model = build_pretrain_model(dataclasses.replace(preset, wavlm=objective)).train()
    assert model.backbone is model.wavlm and "wavlm.encoder.layers.0.attention.rel_attn_embed.weight" in (
        model.state_dict()
    )
    wavs, lens = batch()
    targets = torch.randint(0, 50, (len(LENGTHS), 25))
    mask = torch.zeros(len(LENGTHS), 24, dtype=torch.bool)
    mask[:, 3:13] = True
    seen = {}
    predict = model.predict

    def spy(w, n, t, **kwargs):
        seen.update(wavs=w, targets=t)
        return predict(w, n, t, **kwargs)

    model.predict = spy
    loss, metrics = model(
        wavs, lens, targets, mask_time_indices=mask, generator=torch.Generator().manual_seed(1)
    )
    assert float(metrics["mix_rate"]) == 1.0 and float(metrics["noise_mix_rate"]) == 0.0
    # the network sees the mixture, the labels are the primary utterances' own
    assert not torch.equal(seen["wavs"], wavs) and seen["targets"] is targets
    mixed, _ = mix_batch(wavs, lens, objective.mixing, generator=torch.Generator().manual_seed(1))
    assert torch.equal(seen["wavs"], mixed)  # mixing draws first from the step's generator
    model.eval()
    _, clean = model(wavs, lens, targets, mask_time_indices=mask)
    assert "mix_rate" not in clean and torch.equal(seen["wavs"], wavs)  # evaluation: the clean task
    loss.backward()
    assert model.wavlm.encoder.layers[0].attention.rel_attn_embed.weight.grad is not None
    with pytest.raises(ValueError, match="section 'data2vec' does not apply to a model of family 'wavlm'"):
        PretrainModelConfig(model=preset.model, data2vec=get_pretrain_preset("data2vec_tiny").data2vec)
