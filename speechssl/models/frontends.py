"""Frontends: waveform (batch, samples) -> frame features (batch, frames, channels).

Every frontend has `forward(wavs, lengths) -> (features, frame_lengths)` and a
`downsample_rate` (input samples per output frame), so the encoder and the
downstream code never need to know which one they got.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechssl.data.audio import SAMPLE_RATE
from speechssl.models.config import ConvFrontendConfig, FbankFrontendConfig


# Frame counts of a tensor or of a host int: an int stays Python arithmetic (under torch.compile a
# tensor made of it and read back broke the graph).
def floor_div(lengths: Tensor | int, divisor: int) -> Tensor | int:
    """floor(lengths / divisor). Not `//` on a tensor: the TorchScript-based ONNX exporter lowers
    aten::floor_divide to a truncating division (1 frame instead of 0 below one window)."""
    if isinstance(lengths, Tensor):
        return torch.div(lengths, divisor, rounding_mode="floor")
    return lengths // divisor


def clamp_nonnegative(lengths: Tensor | int) -> Tensor | int:
    """max(lengths, 0)."""
    return lengths.clamp(min=0) if isinstance(lengths, Tensor) else max(lengths, 0)


class GradMultiply(torch.autograd.Function):
    """Identity forward, gradient scaled by `scale` backward (fairseq's feature_grad_mult)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def scale_grad(x: Tensor, scale: float) -> Tensor:
    return x if scale == 1.0 else GradMultiply.apply(x, scale)


def lengths_to_padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """(batch,) lengths -> (batch, max_len) bool, True where padded."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def normalize_waveform(wavs: Tensor, lengths: Tensor, eps: float = 1e-7) -> Tensor:
    """Zero mean / unit variance per utterance over its valid samples; padding stays 0.
    (transformers' Wav2Vec2FeatureExtractor do_normalize, same eps; fairseq normalize=True.)"""
    valid = (~lengths_to_padding_mask(lengths, wavs.shape[1])).to(wavs.dtype)  # (B, S)
    count = lengths.clamp(min=1).to(wavs.dtype)[:, None]
    mean = (wavs * valid).sum(dim=1, keepdim=True) / count
    var = ((wavs - mean).pow(2) * valid).sum(dim=1, keepdim=True) / count
    return (wavs - mean) * torch.rsqrt(var + eps) * valid


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over channels of a (batch, channels, time) tensor (fairseq "layer_norm" mode)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConvLayer(nn.Module):
    """conv -> optional norm -> GELU. Child names match transformers (`conv`, `layer_norm`)."""

    def __init__(self, conv: nn.Conv1d, layer_norm: nn.Module | None) -> None:
        super().__init__()
        self.conv = conv
        if layer_norm is not None:
            self.layer_norm = layer_norm
        self.has_norm = layer_norm is not None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.has_norm:
            x = self.layer_norm(x)
        if torch.is_grad_enabled():
            return F.gelu(x)
        # Without autograd x is this layer's own fresh tensor: GELU in place (same kernel, same
        # values) saves one activation per layer. The first layers' activations of a batch
        # (52 MB for 4 x 2 s) exceed glibc's largest mmap threshold (32 MB), so each one costs
        # fresh pages that fault in on every call.
        return torch.ops.aten.gelu_(x)


class ConvFeatureEncoder(nn.Module):
    """Strided conv stack on the raw waveform (wav2vec 2.0 / HuBERT feature extractor)."""

    def __init__(
        self, layers: list[ConvLayer], kernels: list[int], strides: list[int], feature_grad_mult: float = 1.0
    ):
        super().__init__()
        self.conv_layers = nn.ModuleList(layers)
        self.kernels = list(kernels)
        self.strides = list(strides)
        self.feature_grad_mult = feature_grad_mult

    @property
    def downsample_rate(self) -> int:
        rate = 1
        for s in self.strides:
            rate *= s
        return rate

    @property
    def receptive_field(self) -> int:
        """Fewest input samples that give one output frame (400 for the standard stack)."""
        field, jump = 1, 1
        for k, s in zip(self.kernels, self.strides):
            field += (k - 1) * jump
            jump *= s
        return field

    def output_lengths(self, lengths: Tensor | int) -> Tensor | int:
        """Valid frames for `lengths` valid samples (no padding in any conv: floor((L - k) / s) + 1)."""
        for k, s in zip(self.kernels, self.strides):
            lengths = floor_div(lengths - k, s) + 1
        return clamp_nonnegative(lengths)

    def forward(self, wavs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """wavs: (batch, samples); lengths: (batch,) valid samples.
        Returns (batch, frames, channels) and valid frames per utterance."""
        x = wavs[:, None, :]  # (B, 1, S)
        if self.feature_grad_mult == 0.0:
            with torch.no_grad():
                for layer in self.conv_layers:
                    x = layer(x)
        else:
            for layer in self.conv_layers:
                x = layer(x)
            x = scale_grad(x, self.feature_grad_mult)
        return x.transpose(1, 2), self.output_lengths(lengths)  # (B, T, C)


def build_conv_frontend(config: ConvFrontendConfig) -> ConvFeatureEncoder:
    layers = []
    in_dim = 1
    for i, (dim, k, s) in enumerate(zip(config.conv_dim, config.conv_kernel, config.conv_stride)):
        conv = nn.Conv1d(in_dim, dim, kernel_size=k, stride=s, bias=config.conv_bias)
        if config.mode == "layer_norm":
            norm: nn.Module | None = ChannelLayerNorm(dim, elementwise_affine=True)
        elif i == 0:
            # fairseq "default": one group per channel, i.e. per-channel normalisation over time
            norm = nn.GroupNorm(dim, dim, affine=True)
        else:
            norm = None
        layers.append(ConvLayer(conv, norm))
        in_dim = dim
    return ConvFeatureEncoder(layers, config.conv_kernel, config.conv_stride, config.feature_grad_mult)


# ---------------------------------------------------------------------------
# Filterbank frontend


class KaldiFbank(nn.Module):
    """Batched log-mel fbank equal to torchaudio.compliance.kaldi.fbank per utterance.

    Defaults of kaldi.fbank: 25 ms povey window, 10 ms shift, snip_edges, DC
    removal, preemphasis 0.97, 512-point power spectrum, mel bins from 20 Hz to
    Nyquist, log with float-epsilon floor, no dither.
    """

    def __init__(
        self, num_mel_bins: int = 80, sample_rate: int = SAMPLE_RATE, waveform_scale: float = 32768.0
    ):
        super().__init__()
        from torchaudio.compliance.kaldi import get_mel_banks

        self.win_length = int(sample_rate * 0.025)
        self.hop_length = int(sample_rate * 0.010)
        self.n_fft = 1 << (self.win_length - 1).bit_length()  # round_to_power_of_two
        self.preemphasis = 0.97
        self.waveform_scale = waveform_scale
        banks, _ = get_mel_banks(num_mel_bins, self.n_fft, float(sample_rate), 20.0, 0.0, 100.0, -500.0, 1.0)
        banks = F.pad(banks, (0, 1))  # (num_mel_bins, n_fft // 2 + 1): the Nyquist bin gets weight 0
        self.register_buffer("mel_banks", banks.float(), persistent=False)
        window = torch.hann_window(self.win_length, periodic=False).pow(0.85)  # povey window
        self.register_buffer("window", window.float(), persistent=False)

    def num_frames(self, lengths: Tensor | int) -> Tensor | int:
        """Frames of `lengths` samples: none below one window (floor division makes those <= 0)."""
        return clamp_nonnegative(floor_div(lengths - self.win_length, self.hop_length) + 1)

    def forward(self, wavs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """wavs: (batch, samples) -> (batch, frames, num_mel_bins), frames per utterance."""
        if wavs.shape[1] < self.win_length:
            wavs = F.pad(wavs, (0, self.win_length - wavs.shape[1]))
        frames = (wavs.float() * self.waveform_scale).unfold(1, self.win_length, self.hop_length)  # (B, T, W)
        frames = frames - frames.mean(dim=-1, keepdim=True)  # remove_dc_offset
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # replicate-pad by one sample
        frames = (frames - self.preemphasis * previous) * self.window
        spectrum = torch.fft.rfft(frames, n=self.n_fft).abs().pow(2)  # (B, T, n_fft // 2 + 1)
        mel = spectrum @ self.mel_banks.T  # (B, T, num_mel_bins)
        mel = mel.clamp(min=torch.finfo(mel.dtype).eps).log()
        return mel, self.num_frames(lengths)


def masked_mean_var_norm(x: Tensor, lengths: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-utterance mean/variance normalisation over valid frames; padded frames become 0.
    x: (batch, frames, channels)."""
    valid = (~lengths_to_padding_mask(lengths, x.shape[1])).unsqueeze(-1).to(x.dtype)  # (B, T, 1)
    count = valid.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (x * valid).sum(dim=1, keepdim=True) / count
    var = ((x - mean).pow(2) * valid).sum(dim=1, keepdim=True) / count
    return (x - mean) * torch.rsqrt(var + eps) * valid


class ConvSubsampler(nn.Module):
    """Stack of stride-2 conv1d + GELU; frames beyond each utterance are zeroed between layers
    so a padded batch gives the same valid frames as one utterance at a time."""

    def __init__(self, in_dim: int, dim: int, kernel: int, num_layers: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.convs = nn.ModuleList(
            nn.Conv1d(in_dim if i == 0 else dim, dim, kernel, stride=2, padding=kernel // 2)
            for i in range(num_layers)
        )

    def output_lengths(self, lengths: Tensor | int) -> Tensor | int:
        pad = self.kernel // 2
        for _ in self.convs:
            lengths = floor_div(lengths + 2 * pad - self.kernel, 2) + 1
        return clamp_nonnegative(lengths)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """x: (batch, frames, in_dim) with padded frames zeroed -> (batch, frames / 2^n, dim)."""
        pad = self.kernel // 2
        x = x.transpose(1, 2)  # (B, C, T)
        for conv in self.convs:
            x = F.gelu(conv(x))
            lengths = torch.div(lengths + 2 * pad - self.kernel, 2, rounding_mode="floor") + 1
            lengths = lengths.clamp(min=0)
            keep = ~lengths_to_padding_mask(lengths, x.shape[2])  # (B, T)
            x = x * keep[:, None, :].to(x.dtype)
        return x.transpose(1, 2), lengths  # (B, T, C)


class FbankFrontend(nn.Module):
    """Log-mel fbank at 100 Hz, utterance CMVN, then a conv subsampler to 50 or 25 Hz."""

    def __init__(
        self, fbank: KaldiFbank, subsampler: ConvSubsampler, normalize: bool, feature_grad_mult: float = 1.0
    ):
        super().__init__()
        self.fbank = fbank
        self.subsampler = subsampler
        self.normalize = normalize
        self.feature_grad_mult = feature_grad_mult

    @property
    def downsample_rate(self) -> int:
        return self.fbank.hop_length * 2 ** len(self.subsampler.convs)

    @property
    def receptive_field(self) -> int:
        return self.fbank.win_length

    def output_lengths(self, lengths: Tensor | int) -> Tensor | int:
        return self.subsampler.output_lengths(self.fbank.num_frames(lengths))

    def forward(self, wavs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """wavs: (batch, samples); lengths: (batch,) valid samples.
        Returns (batch, frames, subsampler_dim) and valid frames per utterance."""
        with torch.no_grad():  # fixed transform: no parameters, no graph needed
            feats, frame_lengths = self.fbank(wavs, lengths)  # (B, T100, M)
            if self.normalize:
                feats = masked_mean_var_norm(feats, frame_lengths)
            else:
                feats = feats.masked_fill(
                    lengths_to_padding_mask(frame_lengths, feats.shape[1])[..., None], 0.0
                )
        x, out_lengths = self.subsampler(feats, frame_lengths)
        return scale_grad(x, self.feature_grad_mult), out_lengths


def build_fbank_frontend(config: FbankFrontendConfig) -> FbankFrontend:
    fbank = KaldiFbank(config.num_mel_bins, waveform_scale=config.waveform_scale)
    subsampler = ConvSubsampler(
        config.num_mel_bins, config.subsampler_dim, config.subsampler_kernel, config.num_subsample_layers
    )
    return FbankFrontend(fbank, subsampler, config.normalize, config.feature_grad_mult)


def build_frontend(config: ConvFrontendConfig | FbankFrontendConfig) -> nn.Module:
    """The one place where a frontend config becomes a module."""
    if isinstance(config, ConvFrontendConfig):
        return build_conv_frontend(config)
    if isinstance(config, FbankFrontendConfig):
        return build_fbank_frontend(config)
    raise TypeError(f"unknown frontend config {type(config).__name__}")
