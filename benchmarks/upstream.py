"""Row group 1: upstream inference, ours vs torchaudio's Wav2Vec2Model vs transformers' HubertModel.

The same weights in all three (ours mapped by key), eval mode, inference_mode, batch 1
and a padded batch of 4 at each length; throughput in audio seconds per second (padding
not counted as audio).
"""

from __future__ import annotations

import functools

import torch

from benchmarks.common import model_config, padded_batch, seeded_model, waves
from benchmarks.harness import Case, Row, Settings, Spec, Step, make_row, run_cases
from speechssl.testing.models import build_hf_model
from speechssl.testing.references import to_torchaudio_model_state, torchaudio_model

GROUP = "upstream"
CONTENDERS = ("ours", "torchaudio", "transformers")


@functools.lru_cache(maxsize=3)
def build(contender: str, preset: str, num_layers: int | None = None) -> torch.nn.Module:
    """Our model (seed 0) or a reference loaded with exactly its weights, in eval mode
    (cached: every length and batch of a run reuses the three models)."""
    config = model_config(preset, num_layers)
    ours = seeded_model(config).eval()
    if contender == "ours":
        return ours
    if contender == "torchaudio":
        ref = torchaudio_model(config)
        ref.load_state_dict(to_torchaudio_model_state(ours.state_dict()))
    elif contender == "transformers":
        ref = build_hf_model(config)  # attn_implementation="sdpa"
        ref.load_state_dict(ours.state_dict())
    else:
        raise ValueError(f"unknown contender '{contender}'; valid: {', '.join(CONTENDERS)}")
    return ref.eval()


def runner(contender: str, model: torch.nn.Module, seconds: list[float], device: str = "cpu"):
    """One forward of `contender` on a padded batch of `seconds`, inputs on `device` as each
    toolkit takes them (ours: lengths on the host, read there without a device sync)."""
    host_wavs, lengths = waves(seconds)
    wavs = host_wavs.to(device)
    padded = bool((lengths < wavs.shape[1]).any())
    if contender == "ours":
        return lambda: model(wavs, lengths).last_hidden_state
    if contender == "torchaudio":
        device_lengths = lengths.to(device) if padded else None
        return lambda: model(wavs, device_lengths)[0]
    attention_mask = None
    if padded:
        attention_mask = (torch.arange(wavs.shape[1])[None, :] < lengths[:, None]).long().to(device)
    return lambda: model(wavs, attention_mask=attention_mask).last_hidden_state


def inference_step(contender: str, preset: str, seconds: list[float], num_layers: int | None = None) -> Step:
    run = runner(contender, build(contender, preset, num_layers), seconds)

    def step() -> None:
        with torch.inference_mode():
            run()

    return step


def parity(preset: str, seconds: list[float], num_layers: int | None = None) -> dict[str, float]:
    """Max |ours - reference| of the last hidden state over valid frames, per reference."""
    wavs, lengths = waves(seconds)
    out = {}
    models = {name: build(name, preset, num_layers) for name in CONTENDERS}  # built as users build them
    with torch.inference_mode():
        mine = models["ours"](wavs, lengths)
        valid = ~mine.padding_mask
        for name in CONTENDERS[1:]:
            theirs = runner(name, models[name], seconds)()
            out[name] = float((mine.last_hidden_state - theirs)[valid].abs().max())
    return out


def _case(preset: str, name: str, secs: list[float]) -> Case:
    specs = {
        contender: Spec(module=__name__, factory="inference_step",
                        kwargs={"contender": contender, "preset": preset, "seconds": secs})
        for contender in CONTENDERS
    }  # fmt: skip
    return Case(name=f"{preset} {name}", work=sum(secs), unit="audio-s/s", contenders=specs)


def cases(settings: Settings) -> tuple[str, list[float], list[Case]]:
    if settings.tiny:
        preset, lengths, batches = "hubert_tiny", [0.5], [1, 2]
    elif settings.quick:
        preset, lengths, batches = "hubert_base", [2.0, 5.0], [1, 4]  # 5 s x4 left out (time budget)
    else:
        preset, lengths, batches = "hubert_base", [2.0, 5.0, 10.0, 20.0], [1, 4]
    out = []
    for seconds in lengths:
        for batch in batches:
            if settings.quick and seconds > lengths[0] and batch > 1:
                continue
            out.append(_case(preset, f"{seconds:g} s x{batch}", padded_batch(seconds, batch)))
    if not (settings.tiny or settings.quick):
        # the padded batch's size without padding: tells a cost of padding from one of batching
        # (at 4 x 2 s the first conv activations pass glibc's 32 MB mmap threshold, for everyone)
        seconds, batch = lengths[0], batches[-1]
        out.append(_case(preset, f"{seconds:g} s x{batch} unpadded", [seconds] * batch))
    return preset, padded_batch(lengths[0], batches[-1]), out


def run(settings: Settings) -> list[Row]:
    preset, parity_secs, all_cases = cases(settings)
    errors = parity(preset, parity_secs)
    rows = [
        make_row(
            GROUP,
            f"{preset} parity: max abs diff of last hidden state vs {name}",
            err,
            None,
            "abs",
            note=f"same weights, padded batch {parity_secs} s",
        )  # fmt: skip
        for name, err in errors.items()
    ]
    return rows + run_cases(GROUP, all_cases, settings, note="eval, inference_mode")
