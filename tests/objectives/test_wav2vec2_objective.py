"""wav2vec 2.0 objective: negatives, logits, and loss parity with transformers' Wav2Vec2ForPreTraining."""

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

from speechssl.models.config import ConvFrontendConfig, EncoderConfig, ModelConfig
from speechssl.models.quantizer import QuantizerConfig
from speechssl.objectives.masking import compute_mask_indices
from speechssl.objectives.pretraining import PretrainModelConfig, build_pretrain_model
from speechssl.objectives.wav2vec2 import (
    Wav2Vec2ObjectiveConfig,
    contrastive_logits,
    contrastive_loss,
    diversity_loss,
    sample_negatives,
)

CONV_DIM = [32, 32, 32, 32, 32, 64, 64]


def _mask(lengths, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return compute_mask_indices(
        torch.tensor(lengths), T, mask_prob=0.5, mask_length=4, min_masks=2, generator=g
    )


def test_negatives_same_utterance_masked_never_positive():
    lengths = [60, 45, 30]
    mask = _mask(lengths, 60)
    neg = sample_negatives(mask, 20, generator=torch.Generator().manual_seed(1))
    assert neg.shape == (3, 60, 20)
    flat_mask = mask.reshape(-1)
    for b in range(3):
        for t in mask[b].nonzero().flatten().tolist():
            idx = neg[b, t]
            assert ((idx // 60) == b).all()  # same utterance
            assert (idx != b * 60 + t).all()  # never the positive
            assert flat_mask[idx].all()  # drawn among masked frames, hence never padding


def test_negatives_cover_pool_uniformly():
    mask = torch.zeros(1, 50, dtype=torch.bool)
    mask[0, [3, 10, 11, 20, 40]] = True
    neg = sample_negatives(mask, 4000, generator=torch.Generator().manual_seed(0))
    drawn = neg[0, 10]
    counts = torch.bincount(drawn, minlength=50)[[3, 11, 20, 40]].float()
    assert counts.sum() == 4000 and (counts / 1000 - 1).abs().max() < 0.1


def test_negatives_from_everywhere_and_cross_sample():
    lengths = torch.tensor([40, 25])
    mask = _mask([40, 25], 40)
    g = torch.Generator().manual_seed(3)
    neg = sample_negatives(
        mask, 8, cross_sample_negatives=6, lengths=lengths, from_everywhere=True, generator=g
    )
    assert neg.shape == (2, 40, 14)
    for b in range(2):
        for t in mask[b].nonzero().flatten().tolist():
            own, cross = neg[b, t, :8], neg[b, t, 8:]
            assert ((own // 40) == b).all() and ((own % 40) < lengths[b]).all() and (own != b * 40 + t).all()
            assert mask.reshape(-1)[cross].all() and (cross != b * 40 + t).all()
    with pytest.raises(ValueError, match="needs lengths"):
        sample_negatives(mask, 4, from_everywhere=True)


def test_identical_negative_gets_minus_inf_and_accuracy():
    pos = torch.randn(4, 8)
    negatives = torch.randn(4, 3, 8)
    negatives[1, 2] = pos[1]
    pred = pos.clone()
    logits = contrastive_logits(pred, pos, negatives, 0.1)
    assert logits.shape == (4, 4) and torch.isinf(logits[1, 3]) and logits.isinf().sum() == 1
    assert torch.allclose(logits[:, 0], torch.full((4,), 10.0))
    loss, correct = contrastive_loss(logits)
    assert correct == 4 and loss > 0
    assert diversity_loss(torch.tensor(16.0), 16) == 0


def _tiny_pair(seed=0):
    """Our Wav2Vec2PretrainModel and transformers' Wav2Vec2ForPreTraining with the same perturbed weights."""
    hf_cfg = Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        conv_dim=CONV_DIM, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
        conv_bias=False, feat_extract_norm="group", num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, do_stable_layer_norm=False, hidden_dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0,
        feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0, feat_quantizer_dropout=0.0,
        num_codevector_groups=2, num_codevectors_per_group=16, codevector_dim=32, proj_codevector_dim=24,
        num_negatives=10, contrastive_logits_temperature=0.1, diversity_loss_weight=0.1,
        mask_time_prob=0.05, mask_feature_prob=0.0,  # > 0 so transformers creates masked_spec_embed
    )  # fmt: skip
    torch.manual_seed(seed)
    hf = Wav2Vec2ForPreTraining(hf_cfg)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))  # a missed mapping cannot hide behind the init
    model_cfg = ModelConfig(
        family="wav2vec2",
        frontend=ConvFrontendConfig(conv_dim=CONV_DIM, mode="group_norm", conv_bias=False),
        encoder=EncoderConfig(
            embed_dim=64, num_layers=2, num_heads=4, ffn_dim=128, pos_conv_kernel=16, pos_conv_groups=4,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feature_proj_dropout=0.0,
            layerdrop=0.0,
        ),
    )  # fmt: skip
    objective = Wav2Vec2ObjectiveConfig(
        quantizer=QuantizerConfig(num_groups=2, num_vars=16, codevector_dim=32), final_dim=24,
        num_negatives=10, dropout_features=0.0, diversity_perplexity="code", feature_penalty_weight=0.0,
    )  # fmt: skip
    ours = build_pretrain_model(PretrainModelConfig(model=model_cfg, wav2vec2=objective))
    ours.load_state_dict(hf.state_dict())
    return ours, hf


def _batch():
    g = torch.Generator().manual_seed(5)
    wavs = torch.randn(3, 8000, generator=g)
    lengths = torch.tensor([8000, 6400, 5000])
    for b, n in enumerate(lengths.tolist()):
        wavs[b, n:] = 0.0
    return wavs, lengths


def test_loss_parity_with_transformers_eval_mode():
    ours, hf = _tiny_pair()
    ours.eval()
    hf.eval()
    wavs, lengths = _batch()
    frames = ours.wav2vec2.feature_extractor.output_lengths(lengths)  # (3,)
    T = int(frames.max())
    np.random.seed(0)
    attn = (torch.arange(T)[None] < frames[:, None]).long()
    mask_np = _compute_mask_indices((3, T), mask_prob=0.5, mask_length=3, attention_mask=attn, min_masks=2)
    neg_np = _sample_negative_indices((3, T), 10, mask_time_indices=mask_np)
    mask = torch.from_numpy(mask_np)
    negatives = torch.from_numpy(neg_np).long()
    sample_attention = (torch.arange(8000)[None] < lengths[:, None]).long()
    with torch.no_grad():
        ref = hf(
            wavs, attention_mask=sample_attention, mask_time_indices=mask, sampled_negative_indices=negatives
        )
        loss, metrics = ours(wavs, lengths, mask_time_indices=mask, negative_indices=negatives)
        p = ours.predict(wavs, lengths, mask_time_indices=mask, negative_indices=negatives)
    n = metrics["sample_size"].float()
    assert n == mask.sum()
    ours_sum = loss * n  # transformers sums over masked frames
    rel = ((ours_sum - ref.loss).abs() / ref.loss.abs()).item()
    assert rel < 1e-4, rel
    assert torch.allclose(metrics["contrastive_loss"] * n, ref.contrastive_loss, rtol=1e-4)
    assert torch.allclose(metrics["code_perplexity"], ref.codevector_perplexity, rtol=1e-5)
    assert torch.allclose(metrics["diversity_loss"] * n, ref.diversity_loss, rtol=1e-4)
    # projected states at every valid frame, not only the loss
    valid = attn.bool()
    ours_pred = ours.project_hid(p.encoder.last_hidden_state)
    assert torch.allclose(ours_pred[valid], ref.projected_states[valid], atol=1e-4)


def test_prob_perplexity_parity_with_transformers_train_mode():
    # In training, transformers' perplexity is the mean-softmax one (no Gumbel noise in it).
    ours, hf = _tiny_pair(seed=1)
    ours.train()
    hf.train()
    wavs, lengths = _batch()
    frames = ours.wav2vec2.feature_extractor.output_lengths(lengths)
    mask = _mask(frames.tolist(), int(frames.max()))
    with torch.no_grad():
        ref = hf(
            wavs, attention_mask=(torch.arange(8000)[None] < lengths[:, None]).long(), mask_time_indices=mask
        )
        p = ours.predict(wavs, lengths, mask_time_indices=mask, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(p.prob_perplexity, ref.codevector_perplexity, rtol=1e-5)


def test_training_step_backward_reaches_every_parameter():
    ours, _ = _tiny_pair()
    ours.train()
    wavs, lengths = _batch()
    loss, metrics = ours(wavs, lengths, generator=torch.Generator().manual_seed(0))
    loss.backward()
    missing = [
        n
        for n, p in ours.named_parameters()
        if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    # masked_spec_embed gets gradient; a code entry may go unused in one tiny batch,
    # so check the book as a whole
    assert missing == [], missing
    assert set(metrics) >= {"loss", "contrastive_loss", "diversity_loss", "accuracy", "code_perplexity",
                            "prob_perplexity", "temperature", "sample_size"}  # fmt: skip
    assert all(isinstance(v, torch.Tensor) for v in metrics.values())


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
    torch.use_deterministic_algorithms(False)


def test_gradient_does_not_depend_on_thread_scheduling(two_threads):
    # Distractors repeat frames, so their gradients are summed; with parallel atomic adds the
    # order (and rounding) follows the threads and exact resume breaks (issue 12 item 11).
    # torch's deterministic algorithms sum in index order: a step must match them bit for bit.
    ours, _ = _tiny_pair()
    ours.train()
    g = torch.Generator().manual_seed(7)
    wavs, lengths = torch.randn(3, 64000, generator=g), torch.tensor([64000, 55000, 47000])

    def grads(deterministic: bool) -> dict[str, torch.Tensor]:
        torch.use_deterministic_algorithms(deterministic)
        ours.zero_grad(set_to_none=True)
        loss, metrics = ours(wavs, lengths, generator=torch.Generator().manual_seed(0))
        loss.backward()
        assert metrics["sample_size"] * 10 * 24 > 32768  # the gather is big enough to run in parallel
        return {n: p.grad.clone() for n, p in ours.named_parameters() if p.grad is not None}

    reference = grads(True)
    for _ in range(2):
        got = grads(False)
        differ = [n for n in reference if not torch.equal(reference[n], got[n])]
        assert differ == [], differ


def test_negatives_of_a_row_with_one_or_no_masked_frame_stay_in_range():
    """A masked frame with no other masked frame points at itself (its logits are hidden);
    unmasked frames before the first masked one (rank -1) must not index out of range."""
    from speechssl.objectives.wav2vec2 import sample_negatives

    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 2] = True  # one masked frame, after two unmasked ones; row 1 has none
    generator = torch.Generator().manual_seed(0)
    negatives = sample_negatives(mask, 3, cross_sample_negatives=2, generator=generator)
    assert negatives.shape == (2, 6, 5)
    assert ((negatives >= 0) & (negatives < 12)).all()
    assert (negatives[0, 2] == 2).all()  # only itself to point at
