"""Layer-L features of any `load_upstream` source (HuBERT iteration 2+, probing).

Layer numbering is the Upstream contract's (DESIGN.md): 0 is the input of the
first transformer layer, L >= 1 the output of layer L, i.e. transformers'
hidden_states[L] and fairseq's `extract_features(output_layer=L)` (the HuBERT
recipe clusters HuBERT Base iteration-1 layer 6). Frames come at
sample_rate / downsample_rate (50 Hz for the conv frontend), which is the
label rate of the next iteration.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from speechssl.data.audio import SAMPLE_RATE
from speechssl.models.upstream_api import UpstreamModel


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def pads_safely(upstream: UpstreamModel) -> bool:
    """Whether zero padding leaves an utterance's features unchanged: not with a group-norm conv
    frontend (it normalises over the padded samples too), nor with data2vec-audio's positional conv
    stack deeper than one conv (fairseq and transformers zero the padding once, before the stack, so
    from its second conv on the padded frames reach the last valid ones; we compute as they do)."""
    config = getattr(upstream, "config", None)
    frontend = getattr(config, "frontend", None)
    encoder = getattr(config, "encoder", None)
    deep_stack = getattr(encoder, "pos_conv_type", None) == "layer_norm" and encoder.pos_conv_depth > 1
    return getattr(frontend, "mode", None) != "group_norm" and not deep_stack


def _weights_fingerprint(source: Path) -> str:
    """Which weights and config a path means now (`checkpoints/last` moves): a finished feature
    shard of other weights must not be taken for this model's. Size and mtime of the file, or of
    every file of a checkpoint / transformers dir (weights, shards, config), hashed short."""
    source = source.resolve()
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        files = [source] if source.is_file() else []
    if not files:
        return "unknown"
    stamp = ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    return hashlib.sha256(stamp.encode()).hexdigest()[:16]


def check_dumpable(upstream: UpstreamModel, source: str) -> None:
    """An upstream normalised with train-split statistics (`fbank_global_cmvn`) has none in a dump."""
    if getattr(upstream, "needs_train_stats", False):
        raise ValueError(
            f"upstream '{source}' normalises with train-split statistics, which a feature dump does not"
            " have: use it with `speechssl downstream train`, or dump `fbank` / `fbank_no_cmvn`"
        )


class UpstreamExtractor:
    """The `FeatureExtractor` (speechssl.features.dump) for layer `layer` of an upstream.

    Waveforms of one call are padded into one batch; the model sees the true
    lengths (`wav_lens`), and each output is cut to its valid frames. A
    group-norm conv frontend (fairseq extractor_mode "default": HuBERT /
    wav2vec 2.0 / WavLM Base) normalises each channel over the whole padded input, so
    padding would change the features; such models (and data2vec-audio, see
    `pads_safely`) run one utterance per forward, as fairseq's dump_hubert_feature.py does.
    """

    sample_rate = SAMPLE_RATE  # the Upstream contract: waveforms at 16 kHz

    def __init__(
        self,
        upstream: UpstreamModel | str | Path,
        layer: int,
        *,
        device: str | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(upstream, (str, Path)):
            import speechssl

            # the fingerprint makes the feature name (a changed checkpoint is redone); messages show
            # the path as the user gave it
            weights = _weights_fingerprint(Path(upstream))
            given = str(upstream)
            source = f"{upstream}@{weights}"
            upstream = speechssl.load_upstream(upstream)
        else:
            weights = "in-memory"
            source = given = type(upstream).__name__
        check_dumpable(upstream, source)
        self.device = torch.device(device or default_device())
        self.upstream = upstream.eval().to(self.device)
        num_layers = int(upstream.num_layers)
        if not 0 <= layer <= num_layers:
            raise ValueError(
                f"layer must be in 0..{num_layers} for {given} "
                "(0: transformer input, L: output of layer L), "
                f"found {layer}"
            )
        self.layer = layer
        self.feature_dim = int(upstream.hidden_dim)
        self.frame_rate = self.sample_rate / float(upstream.downsample_rate)
        self.name = name or f"upstream:{source}:layer{layer}"
        self.label = f"{given} layer {layer}"  # the progress bar's: the source as given, no fingerprint
        self.batched = pads_safely(upstream)
        # what the features depend on, recorded in each shard (the device and batching do not change them)
        self.settings = {"extractor": "upstream", "source": source, "weights": weights, "layer": layer}

    def extract(self, wavs: list[Tensor]) -> list[np.ndarray]:
        """(samples,) waveforms -> (frames, hidden_dim) float32 arrays of layer `layer`."""
        if self.batched:
            return self._forward(wavs)
        return [f for w in wavs for f in self._forward([w])]

    @torch.inference_mode()
    def _forward(self, wavs: list[Tensor]) -> list[np.ndarray]:
        lengths = torch.tensor([w.numel() for w in wavs], dtype=torch.long)  # (B,)
        batch = torch.zeros(len(wavs), int(lengths.max()))  # (B, S_max), zero padded
        for i, w in enumerate(wavs):
            batch[i, : w.numel()] = w
        out = self.upstream(batch.to(self.device), lengths.to(self.device))
        hidden = out.hidden_states[self.layer].float().cpu()  # (B, T, D)
        frames = out.lengths.cpu().tolist()
        return [hidden[i, : frames[i]].numpy() for i in range(len(wavs))]
