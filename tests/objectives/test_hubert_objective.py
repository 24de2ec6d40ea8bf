"""HuBERT objective: encoder outputs and masked-prediction logits equal torchaudio's HuBERTPretrainModel."""

import pytest
import torch
import torchaudio.models.wav2vec2.components as ta_components
from torchaudio.models import hubert_pretrain_model

from speechssl.models.config import ConvFrontendConfig, EncoderConfig, ModelConfig
from speechssl.objectives.hubert import HubertObjectiveConfig, build_label_head, masked_prediction_loss
from speechssl.objectives.masking import compute_mask_indices
from speechssl.objectives.pretraining import PretrainModelConfig, build_pretrain_model
from speechssl.objectives.wav2vec2 import feature_penalty
from speechssl.testing.references import to_torchaudio_pretrain_state

CONV = [(32, 10, 5), (32, 3, 2), (32, 3, 2), (32, 3, 2), (32, 3, 2), (64, 2, 2), (64, 2, 2)]
NUM_CLASSES = 20


def _ours(objective: HubertObjectiveConfig, layer_norm_first=False):
    model = ModelConfig(
        family="hubert",
        frontend=ConvFrontendConfig(
            conv_dim=[c for c, _, _ in CONV], conv_kernel=[k for _, k, _ in CONV],
            conv_stride=[s for _, _, s in CONV], mode="layer_norm" if layer_norm_first else "group_norm",
            conv_bias=layer_norm_first,
        ),
        encoder=EncoderConfig(
            embed_dim=64, num_layers=2, num_heads=4, ffn_dim=128, pos_conv_kernel=16, pos_conv_groups=4,
            layer_norm_first=layer_norm_first, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
            feature_proj_dropout=0.0, layerdrop=0.0,
        ),
    )  # fmt: skip
    torch.manual_seed(0)
    ours = build_pretrain_model(PretrainModelConfig(model=model, hubert=objective))
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))  # perturb every parameter away from its init
    return ours.eval()


def _torchaudio(layer_norm_first=False):
    return hubert_pretrain_model(
        extractor_mode="layer_norm" if layer_norm_first else "group_norm", extractor_conv_layer_config=CONV,
        extractor_conv_bias=layer_norm_first, encoder_embed_dim=64, encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4, encoder_num_layers=2, encoder_num_heads=4,
        encoder_attention_dropout=0.0, encoder_ff_interm_features=128, encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0, encoder_layer_norm_first=layer_norm_first, encoder_layer_drop=0.0, mask_prob=0.8,
        mask_selection="static", mask_other=0.0, mask_length=10, no_mask_overlap=False, mask_min_space=1,
        mask_channel_prob=0.0, mask_channel_selection="static", mask_channel_other=0.0,
        mask_channel_length=10, no_mask_channel_overlap=False, mask_channel_min_space=1, skip_masked=False,
        skip_nomask=False,
        num_classes=NUM_CLASSES, final_dim=32, feature_grad_mult=None,
    ).eval()  # fmt: skip


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_encoder_and_logits_equal_torchaudio(monkeypatch, layer_norm_first):
    ours = _ours(HubertObjectiveConfig(num_classes=[NUM_CLASSES], final_dim=32, pred_nomask_weight=1.0),
                 layer_norm_first)  # fmt: skip
    ref = _torchaudio(layer_norm_first)
    ref.load_state_dict(to_torchaudio_pretrain_state(ours.state_dict()))

    g = torch.Generator().manual_seed(0)
    wavs = torch.randn(3, 8000, generator=g)
    lengths = torch.tensor([8000, 6000, 4500])
    frames = ours.hubert.feature_extractor.output_lengths(lengths)
    T = int(frames.max())
    mask = compute_mask_indices(frames, T, mask_prob=0.8, mask_length=5, min_masks=2, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (3, T), generator=g)

    # torchaudio draws its own mask: hand it ours
    monkeypatch.setattr(ta_components, "_compute_mask_indices", lambda *a, **k: mask.clone())
    captured = {}
    ref.wav2vec2.encoder.transformer.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    with torch.no_grad():
        ref_m, ref_u, ref_pen = ref(wavs, labels, lengths)
        p = ours.predict(wavs, lengths, labels, mask_time_indices=mask)
        _, metrics = ours(wavs, lengths, labels, mask_time_indices=mask)

    valid = ~p.encoder.padding_mask
    enc_err = (p.encoder.last_hidden_state - captured["x"])[valid].abs().max()
    assert enc_err < 1e-4, enc_err
    # torchaudio: (M, 1 + classes), column 0 the positive and the label's column -inf;
    # ours: (M, classes). Rebuild theirs from ours and compare.
    for (logits, lab), theirs in ((p.selected("masked"), ref_m), (p.selected("unmasked"), ref_u)):
        rebuilt = torch.cat(
            [logits.gather(1, lab[:, None]), logits.scatter(1, lab[:, None], float("-inf"))], 1
        )
        assert rebuilt.shape == theirs.shape
        finite = torch.isfinite(theirs)
        assert torch.equal(finite, torch.isfinite(rebuilt))
        assert (rebuilt[finite] - theirs[finite]).abs().max() < 1e-4
        # and the fairseq loss over theirs equals our cross-entropy over classes
        ref_loss = torch.nn.functional.cross_entropy(
            theirs, torch.zeros(len(theirs), dtype=torch.long), reduction="sum"
        )
        assert torch.allclose(masked_prediction_loss(logits, lab)[0], ref_loss, rtol=1e-5)
    assert 0.0 <= metrics["masked_accuracy"] <= 1.0 and "unmasked_accuracy" in metrics
    # torchaudio's penalty averages over padding too; ours over valid frames: equal on the full-length row
    assert torch.allclose(p.encoder.features_unnormed[0].pow(2).mean(), ref.wav2vec2.feature_extractor(
        wavs[:1], None)[0].pow(2).mean(), rtol=1e-5)  # fmt: skip
    assert ref_pen > 0


def test_linear_head_and_several_label_sets():
    objective = HubertObjectiveConfig(num_classes=[7, 11], head="linear", pred_nomask_weight=0.5)
    ours = _ours(objective).train()
    wavs = torch.randn(2, 6000)
    lengths = torch.tensor([6000, 5000])
    frames = int(ours.hubert.feature_extractor.output_lengths(lengths).max())
    targets = [
        torch.randint(0, 7, (2, frames)),
        torch.randint(0, 11, (2, frames - 1)),
    ]  # shorter: padded -100
    targets[0][1, -3:] = -100
    loss, metrics = ours(wavs, lengths, targets, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert {"masked_accuracy", "masked_accuracy_1", "unmasked_accuracy", "unmasked_accuracy_1"} <= set(
        metrics
    )
    no_grad = [n for n, p in ours.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == [], no_grad
    p = ours.predict(wavs, lengths, targets, generator=torch.Generator().manual_seed(0))
    assert [lg.shape for lg in p.logits] == [(2 * frames, 7), (2 * frames, 11)]


def test_cosine_head_untied_projection_shapes():
    head = build_label_head(
        64, HubertObjectiveConfig(num_classes=[5, 9], final_dim=16, untie_final_proj=True)
    )
    out = head(torch.randn(4, 64))
    assert [o.shape for o in out] == [(4, 5), (4, 9)]
    assert head.final_proj.out_features == 32 and head.label_embs_concat.shape == (14, 16)
    assert all((o.abs() <= 10.0 + 1e-5).all() for o in out)  # cosine / 0.1


def test_label_errors():
    ours = _ours(HubertObjectiveConfig(num_classes=[NUM_CLASSES]))
    wavs = torch.randn(2, 4000)
    with pytest.raises(ValueError, match=r"expected 1 label set\(s\)"):
        ours(wavs, None, [torch.zeros(2, 12, dtype=torch.long)] * 2)
    with pytest.raises(ValueError, match=r"label set 0 must have shape \(batch=2, frames\)"):
        ours(wavs, None, torch.zeros(3, 12, dtype=torch.long))
    with pytest.raises(ValueError, match="integer unit ids"):
        ours(wavs, None, torch.zeros(2, 12))
    with pytest.raises(ValueError, match="both 0: nothing to learn"):
        HubertObjectiveConfig(pred_masked_weight=0.0, pred_nomask_weight=0.0)


def _training_batch(objective: HubertObjectiveConfig, padding_free: bool):
    """(our model in train mode, padded or padding-free; a generator; wavs of 3 lengths; their
    lengths; their frame counts)."""
    ours = _ours(objective).train()
    ours.hubert.padding_free = padding_free
    g = torch.Generator().manual_seed(0)
    wavs = torch.randn(3, 8000, generator=g)
    lengths = torch.tensor([8000, 6001, 4533])
    return ours, g, wavs, lengths, ours.hubert.num_frames(lengths)


@pytest.mark.parametrize("padding_free", [False, True])
def test_no_shape_in_a_training_step_depends_on_the_mask(padding_free):
    """CUDA graphs recorded for one batch shape replay only if every op of the step has the same
    shapes whatever frames the mask picks: the loss runs over every frame and ignores the others."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Shapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            flat = out if isinstance(out, (tuple, list)) else (out,)
            tensors = [t for t in flat if isinstance(t, torch.Tensor)]  # nested: sized by the lengths alone
            self.seen.append((str(func), ["nested" if t.is_nested else tuple(t.shape) for t in tensors]))
            return out

    objective = HubertObjectiveConfig(num_classes=[NUM_CLASSES], final_dim=32, pred_nomask_weight=0.5)
    ours, g, wavs, lengths, frames = _training_batch(objective, padding_free)
    T = int(frames.max())
    labels = torch.randint(0, NUM_CLASSES, (3, T), generator=g)
    steps = []
    for mask_prob in (0.5, 0.3, 0.8):  # a warm-up, then two masks of different sizes
        mask = compute_mask_indices(frames, T, mask_prob=mask_prob, mask_length=3, min_masks=1, generator=g)
        ours.zero_grad(set_to_none=True)
        with Shapes() as shapes:
            loss, _ = ours(wavs, lengths, labels, mask_time_indices=mask)
            loss.backward()
        steps.append((int(mask.sum()), shapes.seen))
    assert steps[1][0] != steps[2][0]
    assert steps[1][1] == steps[2][1]


@pytest.mark.parametrize("padding_free", [False, True])
def test_the_loss_over_every_frame_is_fairseqs_over_the_predicted_ones(padding_free):
    """The loss ignores the frames it does not predict: weighted cross-entropy summed over the
    masked (and unmasked) frames of every label set, divided by their count (fairseq's
    hubert_criterion with sample_size), gradients included."""
    objective = HubertObjectiveConfig(num_classes=[7, 11], head="linear", pred_nomask_weight=0.5)
    ours, g, wavs, lengths, frames = _training_batch(objective, padding_free)
    T = int(frames.max())
    mask = compute_mask_indices(frames, T, mask_prob=0.5, mask_length=3, min_masks=1, generator=g)
    targets = [torch.randint(0, 7, (3, T), generator=g), torch.randint(0, 11, (3, T - 2), generator=g)]
    targets[0][0, :4] = -100  # frames without a label
    torch.manual_seed(1)  # dropout: the same draws for both
    loss, metrics = ours(wavs, lengths, targets, mask_time_indices=mask)
    grads = torch.autograd.grad(loss, list(ours.parameters()), allow_unused=True)
    torch.manual_seed(1)
    p = ours.predict(wavs, lengths, targets, mask_time_indices=mask)
    total = sum(
        weight * torch.nn.functional.cross_entropy(*p.selected(kind, i), ignore_index=-100, reduction="sum")
        for kind, weight in (("masked", 1.0), ("unmasked", 0.5))
        for i in range(2)
    )
    count = p.frames("masked").sum() + p.frames("unmasked").sum()
    penalty = feature_penalty(p.encoder.features_unnormed, p.encoder.padding_mask)
    expected = total / count + objective.feature_penalty_weight * penalty
    assert int(metrics["sample_size"]) == int(count)
    assert torch.allclose(loss, expected, rtol=1e-6)
    for got, want in zip(grads, torch.autograd.grad(expected, list(ours.parameters()), allow_unused=True)):
        assert (got is None) == (want is None)
        if got is not None:
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("padding_free", [False, True])
def test_a_batch_padded_to_a_static_shape_gives_the_same_loss_and_gradients(padding_free):
    """data.static_shapes pads a batch past its longest utterance (audio with zeros, labels with
    -100): with a layer-norm frontend (a group-norm one normalises over the padding, as fairseq's
    does) the loss and gradients are those of the batch padded to its longest utterance."""
    objective = HubertObjectiveConfig(num_classes=[NUM_CLASSES], final_dim=32, pred_nomask_weight=0.5)
    ours = _ours(objective, layer_norm_first=True).train()
    ours.hubert.padding_free = padding_free
    g = torch.Generator().manual_seed(0)
    wavs, lengths = torch.randn(3, 8000, generator=g), torch.tensor([8000, 6001, 4533])
    wavs[1, 6001:] = wavs[2, 4533:] = 0.0
    frames = ours.hubert.num_frames(lengths)
    T = int(frames.max())
    mask = compute_mask_indices(frames, T, mask_prob=0.5, mask_length=3, min_masks=1, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (3, T), generator=g)
    extra = 3 * 1280 + 17  # samples past the longest utterance
    T2 = int(ours.hubert.num_frames(torch.tensor([8000 + extra])))
    static = {
        "wavs": torch.nn.functional.pad(wavs, (0, extra)),
        "targets": torch.nn.functional.pad(labels, (0, T2 + 1 - T), value=-100),
        "mask_time_indices": torch.nn.functional.pad(mask, (0, T2 - T)),
    }
    results = []
    for batch in ({"wavs": wavs, "targets": labels, "mask_time_indices": mask}, static):
        loss, metrics = ours(
            batch["wavs"], lengths, batch["targets"], mask_time_indices=batch["mask_time_indices"]
        )
        results.append((loss, metrics, torch.autograd.grad(loss, list(ours.parameters()))))
    (loss, metrics, grads), (loss2, metrics2, grads2) = results
    assert torch.allclose(loss, loss2, rtol=1e-5) and int(metrics["sample_size"]) == int(
        metrics2["sample_size"]
    )
    for name, got, want in zip([n for n, _ in ours.named_parameters()], grads2, grads):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6), name
