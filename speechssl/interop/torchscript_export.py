"""TorchScript export: an Upstream as one traced graph, `forward(wavs, wav_lens) -> (hidden_states, lengths)`.

`ExportableUpstream` is the graph-friendly twin of `Upstream`, shared with the
ONNX exporter (which traces the same module): no data-dependent Python
control flow (the too-short check, the "nothing padded" shortcut), no
`.item()`/`.tolist()`, weight norm folded into plain weights, no custom
autograd functions, and the fbank's FFT replaced by a DFT matmul (ONNX has
no rfft in the TorchScript-based exporter). All sizes derive from tensor
shapes, so a trace at one shape runs at any batch size and length: WavLM's
relative position buckets come from `arange(T)` in the graph, a pruned WavLM's
kept-head indices are constants of the graph, and data2vec-audio's positional
conv stack has no weight norm to fold (plain convs and non-affine LayerNorms).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from speechssl.config import to_dict
from speechssl.data.audio import SAMPLE_RATE
from speechssl.interop.upstream import Upstream, normalize_waveform
from speechssl.io import atomic_file
from speechssl.models.frontends import FbankFrontend, KaldiFbank, lengths_to_padding_mask
from speechssl.models.model import SSLModel

logger = logging.getLogger(__name__)

# Shapes used to trace; the checks after export use different ones (dynamic axes proven, not assumed).
TRACE_LENGTHS = (8000, 5600)
CHECK_LENGTHS = (4800, 9600, 3200)
TOLERANCE = 1e-4
EXTRA_FILE = "speechssl.json"


class TraceableKaldiFbank(nn.Module):
    """KaldiFbank with the same numbers, written in ops every exporter knows.

    Frames come from a strided conv with an identity kernel (exact copies of the
    samples) and the 512-point power spectrum from cos/sin matmuls over the 400
    windowed samples (the zero padding to n_fft contributes nothing).
    """

    def __init__(self, fbank: KaldiFbank) -> None:
        super().__init__()
        self.win_length = fbank.win_length
        self.hop_length = fbank.hop_length
        self.preemphasis = fbank.preemphasis
        self.waveform_scale = fbank.waveform_scale
        W, bins = fbank.win_length, fbank.n_fft // 2 + 1
        self.register_buffer("frame_kernel", torch.eye(W)[:, None, :], persistent=False)  # (W, 1, W)
        n, k = torch.arange(W, dtype=torch.float64), torch.arange(bins, dtype=torch.float64)
        angle = 2 * math.pi * torch.outer(n, k) / fbank.n_fft  # (W, bins)
        self.register_buffer("dft_cos", torch.cos(angle).float(), persistent=False)
        self.register_buffer("dft_sin", torch.sin(angle).float(), persistent=False)
        self.register_buffer("mel_banks", fbank.mel_banks.clone(), persistent=False)  # (M, bins)
        self.register_buffer("window", fbank.window.clone(), persistent=False)  # (W,)

    def num_frames(self, lengths: Tensor) -> Tensor:
        frames = torch.div(lengths - self.win_length, self.hop_length, rounding_mode="floor") + 1
        return frames.clamp(min=0)

    def forward(self, wavs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """wavs: (B, S) with S >= 400 -> (B, T, num_mel_bins) log-mel, frames per utterance."""
        scaled = (wavs.float() * self.waveform_scale)[:, None, :]  # (B, 1, S)
        frames = nn.functional.conv1d(scaled, self.frame_kernel, stride=self.hop_length)  # (B, W, T)
        frames = frames.transpose(1, 2)  # (B, T, W)
        frames = frames - frames.mean(dim=-1, keepdim=True)  # remove_dc_offset
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # replicate-pad by one sample
        frames = (frames - self.preemphasis * previous) * self.window
        spectrum = (frames @ self.dft_cos).pow(2) + (frames @ self.dft_sin).pow(2)  # (B, T, bins)
        mel = spectrum @ self.mel_banks.T  # (B, T, M)
        return mel.clamp(min=torch.finfo(mel.dtype).eps).log(), self.num_frames(lengths)


def _plain_conv(conv: nn.Conv1d) -> nn.Conv1d:
    """A plain Conv1d holding the current (e.g. weight-normed) weight of `conv`."""
    plain = nn.Conv1d(
        conv.in_channels, conv.out_channels, conv.kernel_size[0], stride=conv.stride[0],
        padding=conv.padding[0], dilation=conv.dilation[0], groups=conv.groups, bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )  # fmt: skip
    with torch.no_grad():
        plain.weight.copy_(conv.weight)
        if conv.bias is not None:
            plain.bias.copy_(conv.bias)
    return plain


def _fold_weight_norm(model: nn.Module) -> None:
    """Replace every parametrized conv by a plain one with the folded weight.

    (Not remove_parametrizations on a deepcopy: the copy shares the injected
    Parametrized* class with the original, and removing it breaks the original.)
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if parametrize.is_parametrized(child):
                if not isinstance(child, nn.Conv1d):
                    raise TypeError(
                        f"cannot fold the parametrization of {type(child).__name__} '{name}' for export"
                    )
                setattr(parent, name, _plain_conv(child))


class ExportableUpstream(nn.Module):
    """`Upstream` in exportable form: forward(wavs, wav_lens) -> (hidden_states stacked, lengths).

    wavs: (B, S) float32 at 16 kHz, S at least one receptive field (400 samples);
    wav_lens: (B,) int64 valid samples. Returns (num_layers + 1, B, T, D) and (B,) int64
    valid frames. A row whose wav_lens is below 400 has 0 frames and NaN features
    (the eager Upstream raises instead; a graph cannot).
    """

    def __init__(self, upstream: Upstream) -> None:
        super().__init__()
        model: SSLModel = copy.deepcopy(upstream.model).eval().float()
        _fold_weight_norm(model)
        frontend = model.feature_extractor
        frontend.feature_grad_mult = 1.0  # GradMultiply is identity forward; keep it out of the graph
        if isinstance(frontend, FbankFrontend):
            frontend.fbank = TraceableKaldiFbank(frontend.fbank)
        self.frontend = frontend
        self.feature_projection = model.feature_projection
        self.encoder = model.encoder
        self.normalize_waveform = upstream.config.normalize_waveform
        self.num_layers = len(model.encoder.layers)
        self.downsample_rate = upstream.downsample_rate
        self.hidden_dim = upstream.hidden_dim

    def forward(self, wavs: Tensor, wav_lens: Tensor) -> tuple[Tensor, Tensor]:
        if self.normalize_waveform:
            wavs = normalize_waveform(wavs, wav_lens)
        feats, lengths = self.frontend(wavs, wav_lens)  # (B, T, C), (B,)
        padding_mask = lengths_to_padding_mask(lengths, feats.shape[1])  # (B, T) True = pad
        x, _ = self.feature_projection(feats)  # (B, T, D)
        # Always mask (the eager encoder skips the mask when nothing is padded: same numbers).
        x = x.masked_fill(padding_mask[..., None], 0.0)
        encoder = self.encoder
        x = x + encoder.pos_conv_embed(x)
        if not encoder.layer_norm_first:
            x = encoder.layer_norm(x)
        # WavLM: the ungated relative position bias, its buckets computed from T with tensor ops
        # (any length after tracing); None for the other families
        position_bias = encoder.position_bias(x)  # (1, H, T, T) or None
        hidden_states = [x]
        for layer in encoder.layers:
            x = layer(x, padding_mask, position_bias)
            hidden_states.append(x)
        return torch.stack(hidden_states), lengths  # (L + 1, B, T, D), (B,)


def example_inputs(lengths: tuple[int, ...], *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A right-padded (B, max(lengths)) float32 batch of noise and its int64 lengths."""
    generator = torch.Generator().manual_seed(seed)
    wavs = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        wavs[i, :n] = 0.1 * torch.randn(n, generator=generator)
    return wavs, torch.tensor(lengths, dtype=torch.long)


@torch.no_grad()
def reference_outputs(upstream: Upstream, wavs: Tensor, wav_lens: Tensor) -> tuple[Tensor, Tensor]:
    """The eager Upstream's (hidden states stacked (L + 1, B, T, D), lengths (B,))."""
    out = upstream(wavs, wav_lens)
    return torch.stack(out.hidden_states), out.lengths


def max_valid_error(expected: tuple[Tensor, Tensor], found: tuple[Tensor, Tensor]) -> float:
    """Largest |difference| over valid frames; raises if shapes or lengths differ."""
    (ref, ref_lens), (got, got_lens) = expected, found
    if tuple(got.shape) != tuple(ref.shape) or not torch.equal(torch.as_tensor(got_lens), ref_lens):
        raise ValueError(
            f"exported model gives hidden states {tuple(got.shape)} / lengths {list(got_lens)}, "
            f"expected {tuple(ref.shape)} / {ref_lens.tolist()}"
        )
    valid = ~lengths_to_padding_mask(ref_lens, ref.shape[2])  # (B, T)
    diff = (torch.as_tensor(got) - ref).abs()[:, valid]  # (L + 1, valid frames, D)
    return float(diff.max()) if diff.numel() else 0.0


def check_parity(
    upstream: Upstream, run: Any, *, what: str, lengths: tuple[int, ...] = CHECK_LENGTHS
) -> float:
    """Run `run(wavs, wav_lens) -> (hidden, lengths)` on a batch unlike the trace batch; error if off."""
    wavs, wav_lens = example_inputs(lengths, seed=1)
    expected = reference_outputs(upstream, wavs, wav_lens)
    error = max_valid_error(expected, run(wavs, wav_lens))
    # float32 rounding grows with the activations: a trained model's hidden states reach tens,
    # so the bound is TOLERANCE per unit of the largest |hidden state| (and never below TOLERANCE)
    bound = TOLERANCE * max(1.0, float(expected[0].abs().max()))
    if not error <= bound:
        raise RuntimeError(
            f"{what} differs from the PyTorch model by {error:.2e} (> {bound:.2e}) on lengths {lengths}"
        )
    return error


def export_metadata(upstream: Upstream) -> dict[str, Any]:
    """What a consumer of a bare graph needs to know (also stored inside the file)."""
    return {
        "library": "speechssl",
        "family": upstream.config.family,
        "num_layers": upstream.num_layers,
        "hidden_dim": upstream.hidden_dim,
        "downsample_rate": upstream.downsample_rate,
        "sample_rate": SAMPLE_RATE,
        "min_samples": int(getattr(upstream.model.feature_extractor, "receptive_field", 400)),
        # the network the graph computes (load_upstream exposes it as `config`: e.g. whether padding
        # changes a group-norm frontend's output)
        "model_config": to_dict(upstream.config),
        "inputs": {"wavs": "float32 (batch, samples)", "wav_lens": "int64 (batch,)"},
        "outputs": {
            "hidden_states": "float32 (num_layers + 1, batch, frames, dim)",
            "lengths": "int64 (batch,)",
        },
    }


@contextlib.contextmanager
def quiet_jit_deprecation() -> Iterator[None]:
    """torch.jit is deprecated upstream but it is what TorchScript consumers load: hide that notice only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
        yield


def trace_upstream(upstream: Upstream) -> torch.jit.ScriptModule:
    """Trace ExportableUpstream on a padded batch of TRACE_LENGTHS (checked at other shapes later)."""
    wrapper = ExportableUpstream(upstream).eval()
    with torch.no_grad(), quiet_jit_deprecation():
        # F.group_norm's Python-side "more than 1 value per channel" check reads sizes; it is not
        # part of the graph, so its TracerWarning is noise. Warnings from any other code still show.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\.nn\.functional")
        return torch.jit.trace(wrapper, example_inputs(TRACE_LENGTHS), check_trace=False)


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """torch.jit.load on CPU, in eval mode (the deprecation notice hidden)."""
    with quiet_jit_deprecation():
        return torch.jit.load(str(path), map_location="cpu").eval()


def export_torchscript(upstream: Upstream, out: str | Path, *, verify: bool = True) -> Path:
    """Write `upstream` as a TorchScript file (torch.jit.load-able, metadata in `speechssl.json`).

    With `verify`, the saved file is loaded back and compared with the eager model
    on a batch with other sizes than the trace batch (max error <= 1e-4).
    """
    out = Path(out)
    start = time.perf_counter()
    traced = trace_upstream(upstream)
    buffer = io.BytesIO()  # torch.jit.save(path) aborts the process on a full disk; Python's write raises
    with quiet_jit_deprecation():
        torch.jit.save(traced, buffer, _extra_files={EXTRA_FILE: json.dumps(export_metadata(upstream))})
    with atomic_file(out) as tmp:
        tmp.write_bytes(buffer.getvalue())
        if verify:
            loaded = load_torchscript(tmp)
            with torch.no_grad():
                error = check_parity(upstream, loaded, what=f"TorchScript export {out}")
            logger.info("TorchScript export matches PyTorch: max error %.2e on valid frames", error)
    logger.info("wrote %s (%.1f MB) in %.1f s", out, out.stat().st_size / 1e6, time.perf_counter() - start)
    return out
