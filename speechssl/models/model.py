"""The SSL network: frontend -> feature projection -> (mask) -> transformer encoder.

State-dict keys equal those of transformers' HubertModel / Wav2Vec2Model / WavLMModel /
UniSpeechSatModel / Data2VecAudioModel (without the "hubert." / "wav2vec2." / ... prefix
of their For* models).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from speechssl.models.config import ModelConfig
from speechssl.models.devices import host_side, to_device
from speechssl.models.encoder import FeatureProjection, TransformerEncoder, build_encoder
from speechssl.models.frontends import build_frontend, lengths_to_padding_mask
from speechssl.models.packing import Packing


@dataclass
class EncoderOutput:
    last_hidden_state: Tensor  # (B, T, D); final LayerNorm applied for pre-LN models
    hidden_states: list[
        Tensor
    ]  # num_layers + 1 tensors (B, T, D): first-layer input, then each layer's output
    lengths: Tensor  # (B,) valid frames
    padding_mask: Tensor  # (B, T) bool, True = padded
    extract_features: (
        Tensor  # (B, T, C) frontend features after the projection LayerNorm (HF extract_features)
    )
    features_unnormed: (
        Tensor  # (B, T, C) frontend features before that LayerNorm (fairseq features_pen input)
    )


class SSLModel(nn.Module):
    """wav2vec 2.0 / HuBERT / WavLM / UniSpeech-SAT / data2vec-audio backbone. Objectives
    (speechssl.objectives, hubert and wav2vec2 only) sit on top of it."""

    def __init__(
        self,
        config: ModelConfig,
        feature_extractor: nn.Module,
        feature_projection: FeatureProjection,
        encoder: TransformerEncoder,
    ) -> None:
        super().__init__()
        self.config = config
        self.feature_extractor = feature_extractor
        self.feature_projection = feature_projection
        self.encoder = encoder
        # fairseq mask_emb / HF masked_spec_embed: replaces masked frames after the projection
        self.masked_spec_embed = nn.Parameter(torch.empty(config.encoder.embed_dim).uniform_())
        # padded batches run the transformer layers on their packed valid frames (no compute on
        # padding; same valid outputs): speechssl.models.packing. A runtime switch, not architecture.
        self.padding_free = False

    @property
    def downsample_rate(self) -> int:
        return self.feature_extractor.downsample_rate

    @property
    def num_layers(self) -> int:
        return len(self.encoder.layers)

    def num_frames(self, samples: Tensor | int) -> Tensor | int:
        """Valid output frames for `samples` valid input samples: a (B,) tensor (-> (B,) long,
        on its device) or one Python int (-> int, no device involved). The one frame count of the
        model (its frontend's), for masks, label checks and padding."""
        return self.feature_extractor.output_lengths(samples)

    @property
    def hidden_dim(self) -> int:
        return self.config.encoder.embed_dim

    def frontend_forward(self, wavs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, bool]:
        """wavs: (B, S) float, lengths: (B,) valid samples -> (features (B, T, C), frames (B,),
        whether any utterance is padded).

        The frame counts are read on the host once, before the frontend runs, to reject
        utterances too short for one frame and to learn whether the batch is padded (an
        unpadded batch needs no attention mask, so SDPA may pick its fused kernels). With
        `lengths` on the CPU and `wavs` on an accelerator that read costs no device sync."""
        if wavs.dim() != 2:
            raise ValueError(f"expected waveforms of shape (batch, samples), found {tuple(wavs.shape)}")
        device_lengths, padded = self._checked_lengths(lengths, wavs.shape[1], wavs.device)
        feats, frame_lengths = self.feature_extractor(wavs, device_lengths)
        return feats, frame_lengths, padded

    @host_side
    def _checked_lengths(self, lengths: Tensor, samples: int, device: torch.device) -> tuple[Tensor, bool]:
        """(lengths on `device`, whether any utterance is padded), after rejecting utterances too
        short for one frame: the one host read of a step (no sync with host lengths)."""
        frames = self.num_frames(lengths).tolist()
        too_short = [i for i, n in enumerate(frames) if n <= 0]
        if too_short:
            field = getattr(self.feature_extractor, "receptive_field", "?")
            raise ValueError(
                f"utterance(s) at batch index {too_short} are too short for one frame "
                f"(lengths {lengths[too_short].tolist()} samples; need at least {field})"
            )
        padded_frames = self.num_frames(samples)
        return to_device(lengths, device), any(n < padded_frames for n in frames)

    @host_side
    def _packing(self, lengths: Tensor, frames: int, device: torch.device) -> Packing:
        """The packing of the valid frames, from the host lengths (no device sync)."""
        return Packing.from_lengths(self.num_frames(lengths), frames, device)

    def apply_masks(
        self, x: Tensor, mask_time_indices: Tensor | None, mask_channel_indices: Tensor | None
    ) -> Tensor:
        """x: (B, T, D). Masked frames become masked_spec_embed; masked channels (B, D) become 0."""
        if mask_time_indices is not None:
            if mask_time_indices.shape != x.shape[:2]:
                raise ValueError(
                    f"mask_time_indices has shape {tuple(mask_time_indices.shape)}, "
                    f"expected {tuple(x.shape[:2])}"
                )
            x = torch.where(mask_time_indices[..., None], self.masked_spec_embed.to(x.dtype), x)
        if mask_channel_indices is not None:
            if mask_channel_indices.shape != (x.shape[0], x.shape[2]):
                raise ValueError(
                    f"mask_channel_indices has shape {tuple(mask_channel_indices.shape)}, "
                    f"expected {(x.shape[0], x.shape[2])}"
                )
            x = x.masked_fill(mask_channel_indices[:, None, :], 0.0)
        return x

    def encoder_forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None,
        *,
        num_layers: int | None = None,
        packing: Packing | None = None,
        hidden_states: bool = True,
    ) -> tuple[Tensor, list[Tensor]]:
        """Projected features (B, T, D) -> (last_hidden_state, hidden_states)."""
        return self.encoder(
            x, padding_mask, num_layers=num_layers, packing=packing, hidden_states=hidden_states
        )

    def forward(
        self,
        wavs: Tensor,
        lengths: Tensor | None = None,
        *,
        mask_time_indices: Tensor | None = None,
        mask_channel_indices: Tensor | None = None,
        output_hidden_states: bool = True,
        num_layers: int | None = None,
    ) -> EncoderOutput:
        """wavs: (B, S) float at 16 kHz; lengths: (B,) valid samples (None: all S).
        mask_time_indices: (B, T) bool; mask_channel_indices: (B, D) bool (D = embed_dim,
        applied after the projection as in fairseq / transformers)."""
        if lengths is None:  # on the host: nothing to read back from the device
            lengths = torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long)
        feats, frame_lengths, padded = self.frontend_forward(wavs, lengths)  # (B, T, C)
        padding_mask = lengths_to_padding_mask(frame_lengths, feats.shape[1])  # (B, T)
        x, extract_features = self.feature_projection(feats)  # (B, T, D), (B, T, C)
        x = self.apply_masks(x, mask_time_indices, mask_channel_indices)
        packing = None
        if padded and self.padding_free:
            packing = self._packing(lengths, feats.shape[1], feats.device)
        last, hidden_states = self.encoder_forward(
            x, padding_mask if padded else None, num_layers=num_layers, packing=packing,
            hidden_states=output_hidden_states,
        )  # fmt: skip
        return EncoderOutput(
            last_hidden_state=last,
            hidden_states=hidden_states,
            lengths=frame_lengths,
            padding_mask=padding_mask,
            extract_features=extract_features,
            features_unnormed=feats,
        )


def build_model(config: ModelConfig) -> SSLModel:
    """Build the network described by `config` (the one place configs become modules)."""
    frontend = build_frontend(config.frontend)
    projection = FeatureProjection(
        config.frontend.output_dim,
        config.encoder.embed_dim,
        config.encoder.feature_proj_dropout,
        eps=config.encoder.layer_norm_eps,
    )
    return SSLModel(config, frontend, projection, build_encoder(config.encoder))
