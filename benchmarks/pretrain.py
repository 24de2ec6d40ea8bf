"""Row groups 2 and 3: one pretraining step (forward, backward, AdamW step).

2. our HuBERT vs torchaudio's HuBERTPretrainModel, our wav2vec 2.0 vs transformers'
   Wav2Vec2ForPreTraining: the same architecture, weights and batch; each draws its masks
   (and distractors) the way its own training code does, inside the step. Twice: with each
   toolkit's own optimizer (what a user of it gets) and with the same torch AdamW (the
   models alone).
3. the Fast-HuBERT trade: our HuBERT with the fbank frontend vs with the conv frontend,
   equal transformer size, throughput in audio seconds per second of training.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import model_config, padded_batch, waves
from benchmarks.harness import Case, Row, Settings, Spec, Step, run_cases
from speechssl.models.config import FbankFrontendConfig
from speechssl.objectives import MaskConfig, PretrainModelConfig, build_pretrain_model, get_pretrain_preset
from speechssl.testing.references import (
    to_torchaudio_pretrain_state,
    torchaudio_hubert_pretrain,
    transformers_pretrain,
)
from speechssl.training import TrainerConfig
from speechssl.training.optim import build_optimizer

GROUP = "pretrain"
FRONTEND_GROUP = "frontends"


def pretrain_config(
    family: str, preset: str, num_layers: int | None, frontend: str = "conv", frame_rate: int = 50,
    narrow: bool = False,
) -> PretrainModelConfig:  # fmt: skip
    """The pretraining preset of `preset` (e.g. "hubert_base"), LayerDrop off, optionally fewer layers
    or the fbank frontend (subsampler as wide as the conv frontend's output). `narrow`: every width
    32 or less (the preset's depth, heads of 8 dims), so that a step's time is its dispatch."""
    config = get_pretrain_preset(preset)
    model = model_config(preset, num_layers)
    if frontend == "fbank":
        fe = FbankFrontendConfig(subsampler_dim=model.frontend.output_dim, frame_rate=frame_rate)  # type: ignore[arg-type]
        model = replace(model, frontend=fe)
    assert model.family == family
    if narrow:
        if frontend != "conv":
            raise ValueError("narrow widths are for the conv frontend")
        frontend_config = replace(model.frontend, conv_dim=[32] * len(model.frontend.conv_dim))  # type: ignore[arg-type]
        encoder = replace(model.encoder, embed_dim=32, num_heads=4, ffn_dim=64)
        model = replace(model, frontend=frontend_config, encoder=encoder)
        if config.hubert is not None:
            config = replace(config, hubert=replace(config.hubert, final_dim=16, num_classes=[50]))
        if config.wav2vec2 is not None:
            quantizer = replace(config.wav2vec2.quantizer, codevector_dim=16)
            config = replace(config, wav2vec2=replace(config.wav2vec2, final_dim=16, quantizer=quantizer))
    return replace(config, model=model)


OPTIMIZERS = ("recipe", "recipe_foreach", "torch")


def _optimizer(model: torch.nn.Module, optimizer: str, ours: bool) -> torch.optim.Optimizer:
    """ "recipe": what each toolkit's own pretraining uses: speechssl's trainer builds fused AdamW
    (build_optimizer), torchaudio's HuBERT and transformers' wav2vec 2.0 recipes torch's default
    AdamW. "recipe_foreach": the same, the references' AdamW in its multi-tensor form, which torch
    picks by default on CUDA (on a CPU it loops over the parameters): what their step issues on a
    GPU. "torch": torch's default AdamW for every contender (the model alone compared)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{optimizer}'; valid: {', '.join(OPTIMIZERS)}")
    if optimizer != "torch" and ours:
        return build_optimizer(model, TrainerConfig(lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01))
    foreach = True if optimizer == "recipe_foreach" else None
    return torch.optim.AdamW(
        model.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01, foreach=foreach
    )


def _train_step(
    model: torch.nn.Module,
    loss_fn,
    optimizer: str = "recipe",
    ours: bool = True,
    amp: torch.dtype | None = None,
) -> Step:
    optimizer = _optimizer(model.train(), optimizer, ours)
    device = next(model.parameters()).device.type

    def step() -> None:
        with torch.autocast(device, dtype=amp, enabled=amp is not None):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def pretrain_step(
    contender: str, family: str, preset: str, seconds: list[float], num_layers: int | None = None,
    frontend: str = "conv", frame_rate: int = 50, optimizer: str = "recipe", device: str = "cpu",
    amp: torch.dtype | None = None, compile: bool | str = False, padding_free: bool = False,
    narrow: bool = False,
) -> Step:  # fmt: skip
    """One optimizer step of `contender` ("ours" | "torchaudio" | "transformers") on a padded batch
    (`optimizer`: see `_optimizer`) on `device`, under autocast to `amp` if given. Ours gets the
    lengths on the host, as the trainer's loader gives them (the model reads them without a device
    sync); the references get them on the device, as their recipes do. `compile`: ours through
    torch.compile (a string: its mode, e.g. "reduce-overhead" for CUDA graphs); `padding_free`:
    ours with data.padding_free; `narrow`: see `pretrain_config`."""
    config = pretrain_config(family, preset, num_layers, frontend, frame_rate, narrow)
    torch.manual_seed(0)
    ours = build_pretrain_model(config)
    host_wavs, lengths = waves(seconds)
    wavs, device_lengths = host_wavs.to(device), lengths.to(device)
    frames = ours.hubert.feature_extractor.output_lengths(lengths) if family == "hubert" else None
    # on an accelerator the trainer's way: masks from the global RNGs (seeded above); an explicit
    # generator would have to live where each draw happens (host masks, device distractors)
    generator = torch.Generator().manual_seed(1) if device == "cpu" else None
    if contender == "ours":
        getattr(ours, family).padding_free = padding_free
        model = ours.to(device)
        mode = compile if isinstance(compile, str) else None
        forward = torch.compile(model, mode=mode) if compile else model
    if family == "hubert":
        T = int(frames.max())
        labels = torch.randint(0, config.hubert.num_classes[0], (len(seconds), T),
                               generator=torch.Generator().manual_seed(1)).to(device)  # fmt: skip
        if contender == "ours":
            loss = lambda: forward(wavs, lengths, labels, generator=generator)[0]  # noqa: E731
            return _train_step(model, loss, optimizer, amp=amp)
        if contender != "torchaudio":
            raise ValueError(f"unknown HuBERT contender '{contender}'; valid: ours, torchaudio")
        ref = torchaudio_hubert_pretrain(config)
        ref.load_state_dict(to_torchaudio_pretrain_state(ours.state_dict()))
        ref = ref.to(device)
        weight = config.hubert.feature_penalty_weight

        def ta_loss() -> torch.Tensor:
            # torchaudio's recipe (examples/hubert/loss): CE over (positive, classes) logits, summed
            logit_m, _, penalty = ref(wavs, labels, device_lengths)
            target = torch.zeros(logit_m.shape[0], dtype=torch.long, device=device)
            return (
                F.cross_entropy(logit_m.float(), target, reduction="sum") / logit_m.shape[0]
                + weight * penalty
            )

        return _train_step(ref, ta_loss, optimizer, ours=False, amp=amp)
    if contender == "ours":
        return _train_step(model, lambda: forward(wavs, lengths, generator=generator)[0], optimizer, amp=amp)
    if contender != "transformers":
        raise ValueError(f"unknown wav2vec 2.0 contender '{contender}'; valid: ours, transformers")
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    ref = transformers_pretrain(config)
    ref.load_state_dict(ours.state_dict())
    ref = ref.to(device)
    hf_frames = ours.wav2vec2.feature_extractor.output_lengths(lengths)
    T = int(hf_frames.max())
    sample_mask = (torch.arange(wavs.shape[1])[None, :] < lengths[:, None]).long().to(device)
    frame_mask = (torch.arange(T)[None, :] < hf_frames[:, None]).long()
    mask_cfg: MaskConfig = config.mask
    num_negatives = config.wav2vec2.num_negatives
    np.random.seed(0)

    def hf_loss() -> torch.Tensor:
        # as transformers' run_wav2vec2_pretraining_no_trainer collator: numpy masks and distractors per batch
        mask = _compute_mask_indices((len(seconds), T), mask_cfg.mask_prob, mask_cfg.mask_length,
                                     attention_mask=frame_mask, min_masks=2)  # fmt: skip
        negatives = _sample_negative_indices((len(seconds), T), num_negatives, mask_time_indices=mask)
        out = ref(wavs, attention_mask=sample_mask, mask_time_indices=torch.from_numpy(mask).to(device),
                  sampled_negative_indices=torch.from_numpy(negatives).long().to(device))  # fmt: skip
        return out.loss / max(int(mask.sum()), 1)

    return _train_step(ref, hf_loss, optimizer, ours=False, amp=amp)


def _sizes(settings: Settings) -> tuple[str, str, int | None, list[float]]:
    if settings.tiny:
        return "hubert_tiny", "wav2vec2_tiny", None, [0.5, 0.45]
    if settings.quick:
        return "hubert_base", "wav2vec2_base", 2, padded_batch(1.5, 2)
    return "hubert_base", "wav2vec2_base", None, padded_batch(4.0, 4)


def _label(preset: str, num_layers: int | None, seconds: list[float]) -> str:
    layers = "" if num_layers is None else f" ({num_layers} layers)"
    return f"{preset}{layers} step, batch {len(seconds)} x <= {max(seconds):g} s"


def run(settings: Settings) -> list[Row]:
    hubert, w2v, layers, secs = _sizes(settings)

    def spec(contender: str, family: str, preset: str, optimizer: str) -> Spec:
        kwargs = {"contender": contender, "family": family, "preset": preset, "seconds": secs,
                  "num_layers": layers, "optimizer": optimizer}  # fmt: skip
        return Spec(module=__name__, factory="pretrain_step", kwargs=kwargs)

    rows: list[Row] = []
    for optimizer, note in (("recipe", "each toolkit's own optimizer: ours fused AdamW, theirs torch AdamW"),
                            ("torch", "torch AdamW for both: the models alone")):  # fmt: skip
        suffix = "" if optimizer == "recipe" else " (same optimizer)"
        cases = [
            Case(name=_label(hubert, layers, secs) + suffix, work=sum(secs), unit="audio-s/s",
                 contenders={"ours": spec("ours", "hubert", hubert, optimizer),
                             "torchaudio": spec("torchaudio", "hubert", hubert, optimizer)}),
            Case(name=_label(w2v, layers, secs) + suffix, work=sum(secs), unit="audio-s/s",
                 contenders={"ours": spec("ours", "wav2vec2", w2v, optimizer),
                             "transformers": spec("transformers", "wav2vec2", w2v, optimizer)}),
        ]  # fmt: skip
        rows += run_cases(GROUP, cases, settings, note=f"fwd+bwd+AdamW, LayerDrop off, fp32; {note}")
    return rows


def run_frontends(settings: Settings) -> list[Row]:
    hubert, _, layers, secs = _sizes(settings)
    rows: list[Row] = []
    for rate in (50, 25):
        kwargs = {"family": "hubert", "preset": hubert, "seconds": secs, "num_layers": layers}
        contenders = {
            "ours": Spec(module=__name__, factory="pretrain_step",
                         kwargs={**kwargs, "contender": "ours", "frontend": "fbank", "frame_rate": rate}),
            "conv frontend": Spec(module=__name__, factory="pretrain_step",
                                  kwargs={**kwargs, "contender": "ours"}),
        }  # fmt: skip
        name = f"fbank@{rate} Hz vs conv@50 Hz, {_label(hubert, layers, secs)}"
        rows += run_cases(
            FRONTEND_GROUP, [Case(name=name, work=sum(secs), unit="audio-s/s", contenders=contenders)],
            settings, note="same encoder and head; unit quality: benchmarks/frontend_quality.sh",
        )  # fmt: skip
    return rows
