"""The upstream interface: what downstream code, feature dumps, compression reports and
exporters see, whatever the upstream is (a loaded network, one of our ONNX / TorchScript exports
read back, or a built-in baseline).

    up = speechssl.load_upstream(source)   # any UpstreamModel
    out = up(wavs, wav_lens)               # wavs: float (B, S) at 16 kHz, wav_lens: long (B,)
    out.hidden_states                      # num_layers + 1 tensors (B, T, hidden_dim)
    out.lengths                            # long (B,): valid frames per utterance

It lives in models (the lowest room its implementations share) so that the loaded
networks (speechssl.interop.upstream.Upstream), the exported graphs
(speechssl.interop.graph_upstream.GraphUpstream) and the FBANK baseline
(speechssl.models.fbank_upstream) all implement it without importing upward.
The interface is deliberately small: a caller that needs more (the network's
`config`, `model` or `extras`) asks for it (`speechssl.interop.upstream.require_network`,
or getattr with a default).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import Tensor, nn


@dataclass
class UpstreamOutput:
    hidden_states: list[Tensor]  # num_layers + 1 tensors (B, T, D)
    lengths: Tensor  # (B,) valid frames


class UpstreamModel(nn.Module, ABC):
    """Waveforms -> every hidden state + valid frames. An nn.Module, so callers may move it
    (`.to`), freeze it (`.requires_grad_`), tune it and count its parameters."""

    # why downstream's feature cache must not key this upstream by its torch weights (None: it may)
    feature_cache_bypass: str | None = None
    # one frame per `downsample_rate` samples (False: fewer, e.g. de-duplicated tokens)
    fixed_rate: bool = True

    @property
    @abstractmethod
    def downsample_rate(self) -> int:
        """Input samples per output frame (320 for the conv waveform frontend, 160 for FBANK)."""

    @property
    @abstractmethod
    def num_layers(self) -> int:
        """Transformer layers: `forward` returns num_layers + 1 hidden states (0 for a baseline
        whose one hidden state is its features)."""

    @property
    @abstractmethod
    def hidden_dim(self) -> int:
        """D, the width of every hidden state."""

    @abstractmethod
    def forward(self, wavs: Tensor, wav_lens: Tensor | None = None) -> UpstreamOutput:
        """wavs: (B, S) float at 16 kHz; wav_lens: (B,) valid samples (None: all S).
        Returns num_layers + 1 hidden states (B, T, hidden_dim) and valid frames per
        utterance (B,); frames past an utterance's length are padding."""
