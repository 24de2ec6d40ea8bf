"""Span masking: fairseq compute_mask_indices semantics, vectorised and reproducible."""

import pytest
import torch

from speechssl.objectives.masking import (
    MaskConfig,
    compute_channel_mask,
    compute_mask_indices,
    compute_time_mask,
)


def _mask(lengths, num_frames, seed=0, **kw):
    kw.setdefault("mask_prob", 0.65)
    kw.setdefault("mask_length", 10)
    kw.setdefault("min_masks", 2)
    return compute_mask_indices(
        torch.tensor(lengths), num_frames, generator=torch.Generator().manual_seed(seed), **kw
    )


def test_never_in_padding_and_same_count_per_utterance():
    lengths = [400, 250, 120, 399, 61]
    for seed in range(20):
        mask = _mask(lengths, 400, seed=seed)
        assert mask.shape == (5, 400)
        for b, n in enumerate(lengths):
            assert not mask[b, n:].any()
            assert not mask[b, n - 1]  # the last valid frame stays visible (fairseq's start range)
        counts = mask.sum(dim=1)
        assert (counts == counts[0]).all() and counts[0] > 0


def test_expected_fraction_without_trimming():
    # Overlapping spans merge: E[fraction] ~ 1 - exp(-mask_prob) for long utterances.
    lengths = [1000] * 64
    mask = _mask(lengths, 1000, require_same_masks=False, mask_prob=0.65)
    fraction = mask.float().mean().item()
    assert abs(fraction - (1 - torch.exp(torch.tensor(-0.65)).item())) < 0.02
    # with no_overlap the spans are disjoint: fraction ~ mask_prob (span count rounds down)
    mask = _mask(lengths, 1000, require_same_masks=False, mask_prob=0.3, no_overlap=True, min_space=1)
    assert abs(mask.float().mean().item() - 0.3) < 0.01


def test_span_count_follows_fairseq_rounding():
    # num_mask = floor(p * L / span + u): with no_overlap every span shows, so count / span is exact.
    mask = _mask([200] * 500, 200, mask_prob=0.23, no_overlap=True, min_space=0, require_same_masks=False)
    spans = mask.sum(dim=1) / 10
    assert set(spans.tolist()) <= {4.0, 5.0}  # 0.23 * 200 / 10 = 4.6
    assert abs(spans.mean().item() - 4.6) < 0.08


def test_no_overlap_keeps_min_space_between_spans():
    mask = _mask([300] * 16, 300, mask_prob=0.4, no_overlap=True, min_space=3, require_same_masks=False)
    for row in mask:
        padded = torch.cat([torch.tensor([False]), row, torch.tensor([False])]).int()
        starts = (padded.diff() == 1).nonzero().flatten()
        ends = (padded.diff() == -1).nonzero().flatten()
        assert ((ends - starts) == 10).all()  # whole spans, never merged
        assert ((starts[1:] - ends[:-1]) >= 3).all()


def test_min_masks_respected_for_short_utterances():
    # 0.01 * 50 / 5 rounds to 0 or 1 span; min_masks=2 forces two (disjoint here) spans.
    mask = _mask([50] * 32, 50, mask_prob=0.01, mask_length=5, min_masks=2, no_overlap=True, min_space=0)
    assert (mask.sum(dim=1) == 10).all()


def test_tiny_utterance_is_never_fully_masked():
    mask = _mask([3, 1, 12], 12, mask_length=10, min_masks=2, require_same_masks=False)
    assert not mask[0, 2] and not mask[1].any() and not mask[2, 11]


def test_reproducible_with_seed_and_differs_across_seeds():
    a = _mask([300, 200], 300, seed=7)
    b = _mask([300, 200], 300, seed=7)
    c = _mask([300, 200], 300, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_channel_mask_and_config_helpers():
    cfg = MaskConfig(mask_prob=0.8, channel_prob=0.5, channel_length=4)
    g = torch.Generator().manual_seed(0)
    time = compute_time_mask(torch.tensor([100, 80]), 100, cfg, generator=g)
    assert not time[1, 80:].any() and time.sum(1)[0] == time.sum(1)[1]
    channels = compute_channel_mask(3, 64, cfg, generator=g)
    assert channels.shape == (3, 64) and channels.any()
    assert compute_channel_mask(3, 64, MaskConfig(), generator=g) is None


def test_config_validation():
    with pytest.raises(ValueError, match="mask_prob must be in"):
        MaskConfig(mask_prob=1.5)
    with pytest.raises(ValueError, match="mask_length must be >= 1"):
        MaskConfig(mask_length=0)
    with pytest.raises(ValueError, match="mask_type must be 'static'"):
        MaskConfig(mask_type="poisson")
    with pytest.raises(ValueError, match=r"lengths must have shape \(batch,\)"):
        compute_mask_indices(torch.ones(2, 2), 5, mask_prob=0.5, mask_length=2)


def test_masks_compile_with_dynamic_shapes_and_no_generator():
    """trainer.compile compiles with dynamic=True and passes no generator: the draws must trace."""
    from speechssl.objectives.masking import MaskConfig, compute_time_mask

    config = MaskConfig(mask_prob=0.5, mask_length=3)
    compiled = torch.compile(lambda lengths, T: compute_time_mask(lengths, T, config), dynamic=True)
    for lengths, T in ((torch.tensor([40, 31, 25]), 40), (torch.tensor([57, 50, 44, 19, 33]), 57)):
        mask = compiled(lengths, T)
        assert mask.shape == (len(lengths), T) and mask.any()
        assert not (mask & (torch.arange(T)[None, :] >= lengths[:, None])).any()  # never on padding
