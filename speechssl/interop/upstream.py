"""Upstreams: `load_upstream(source)`, the one way to get one, and `Upstream`, a loaded network.

`load_upstream` accepts a built-in name ("fbank", "fbank_no_cmvn", "fbank_global_cmvn": the FBANK
baselines), a speechssl checkpoint dir, a transformers dir, a fairseq `.pt`, an s3prl converted
`.pt`, or our own ONNX / TorchScript exports; every result implements `UpstreamModel`
(speechssl.models.upstream_api). Every checkpoint becomes the same `Upstream` around an SSLModel; an
export becomes a `GraphUpstream` (speechssl.interop.graph_upstream), a fixed graph.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from speechssl.models.checkpoint import (
    VerifyLevel,
    check_config_fits,
    check_finite,
    is_checkpoint_dir,
    load_model_with_heads,
    load_state_into,
)
from speechssl.models.config import ModelConfig
from speechssl.models.fbank_upstream import FbankUpstream
from speechssl.models.frontends import normalize_waveform
from speechssl.models.model import SSLModel, build_model
from speechssl.models.token_upstream import TOKENS_PREFIX, load_token_upstream, token_upstream_name
from speechssl.models.upstream_api import UpstreamModel, UpstreamOutput

# Built-in upstreams by name; a name wins over a file of the same name in the working dir.
# "fbank": SUPERB's row (per-utterance CMVN); "fbank_no_cmvn": s3prl's name, no CMVN;
# "fbank_global_cmvn": the train split's statistics, which the downstream runner sets.
BUILTIN_UPSTREAMS: dict[str, Callable[[], UpstreamModel]] = {
    "fbank": FbankUpstream,
    "fbank_no_cmvn": partial(FbankUpstream, cmvn="none"),
    "fbank_global_cmvn": partial(FbankUpstream, cmvn="global"),
}


class Upstream(UpstreamModel):
    """A frozen-feature view of an SSLModel: waveforms -> all hidden states + frame lengths."""

    def __init__(self, model: SSLModel, config: ModelConfig, extras: dict[str, Any] | None = None):
        super().__init__()
        self.model = model
        self.config = config
        # What the source had beyond the backbone, under its own names:
        # extras["pretraining"]: head weights (HF Wav2Vec2ForPreTraining's quantizer.*, project_q.*,
        # project_hid.*; fairseq's final_proj, label_embs_concat, quantizer ...) for the objectives;
        # extras["finetuning"]: CTC heads (lm_head.* / w2v_encoder.proj); fairseq adds its raw cfgs.
        self.extras = dict(extras or {})

    @property
    def downsample_rate(self) -> int:
        return self.model.downsample_rate

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    @property
    def hidden_dim(self) -> int:
        return self.model.hidden_dim

    def forward(self, wavs: Tensor, wav_lens: Tensor | None = None) -> UpstreamOutput:
        """wavs: (B, S) float at 16 kHz; wav_lens: (B,) valid samples (None: all S)."""
        if wav_lens is None:
            wav_lens = torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long, device=wavs.device)
        if self.config.normalize_waveform:
            wavs = normalize_waveform(wavs, wav_lens)
        out = self.model(wavs, wav_lens, output_hidden_states=True)
        return UpstreamOutput(hidden_states=out.hidden_states, lengths=out.lengths)


def upstream_from_state(
    config: ModelConfig,
    state: dict[str, Tensor],
    source: str,
    extras: dict[str, Any] | None = None,
    *,
    config_source: str | None = None,
    config_names: dict[str, str] | None = None,
) -> Upstream:
    """Check `state` is finite and has the shapes `config` declares (before anything is built:
    a config declaring a huge model allocates nothing), then build the model, load `state`
    strictly and wrap it as Upstream (eval). `config_names`: the config file's names of our
    fields, for the error message."""
    from speechssl.interop.transformers_io import complete_masked_spec_embed

    check_finite(state, source)
    check_finite(
        {
            k: v
            for part in (extras or {}).values()
            if isinstance(part, dict)
            for k, v in part.items()
            if isinstance(v, Tensor)
        },
        source,
    )
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if "masked_spec_embed" not in shapes:  # completed from our init below
        shapes["masked_spec_embed"] = (config.encoder.embed_dim,)
    check_config_fits(
        config, shapes, weights=source, config_source=config_source or source, names=config_names
    )
    model = build_model(config)
    state = complete_masked_spec_embed(state, model.state_dict())
    load_state_into(model, state, source)
    return Upstream(model.eval(), config, extras).eval()


def load_upstream(source: str | Path, *, verify: VerifyLevel = "auto") -> UpstreamModel:
    """Any upstream, in eval mode: a built-in name or a checkpoint, the one entry point.

    Nothing is built before the files are checked: a speechssl checkpoint's manifest (`verify`:
    "auto" | "size" | "sha256", see speechssl.models.checkpoint), the declared sizes against
    the weights' shapes, and every weight is finite. Pickled `.pt` / `.bin` files are read
    with an allow-list: one that holds code is refused, never run.

    - a built-in name (BUILTIN_UPSTREAMS: the FBANK baselines; no weights, `verify` unused)
    - speechssl checkpoint dir (config.yaml + model.safetensors)
    - transformers dir (config.json + model.safetensors / pytorch_model.bin)
    - fairseq `.pt` (speechssl.interop.fairseq_io) or s3prl converted `.pt` (speechssl.interop.s3prl_io)
    - `.onnx` or TorchScript `.pt` written by `speechssl export` (speechssl.interop.graph_upstream;
      `verify` unused: the graph is the file)

    Every checkpoint becomes an `Upstream`; callers that need the network itself use
    `require_network`.
    """
    if str(source) in BUILTIN_UPSTREAMS:
        return BUILTIN_UPSTREAMS[str(source)]().eval()
    if str(source).startswith(TOKENS_PREFIX):  # discrete tokens of an upstream (speechssl tokens extract)
        return load_token_upstream(source, partial(load_upstream, verify=verify))
    path = Path(source)
    if not path.exists():
        builtins = ", ".join(BUILTIN_UPSTREAMS)
        raise FileNotFoundError(
            f"upstream '{source}' is neither a built-in upstream ({builtins}) nor an existing checkpoint path"
        )
    if path.is_dir():
        if is_checkpoint_dir(path):
            model, config, heads = load_model_with_heads(path, verify=verify)
            return Upstream(model, config, {"pretraining": heads} if heads else None).eval()
        from speechssl.interop.transformers_io import is_transformers_dir, load_transformers

        if is_transformers_dir(path):
            from speechssl.interop.transformers_io import hf_names

            config, state, extras = load_transformers(path)
            weights = next(
                (path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), path
            )
            return upstream_from_state(
                config,
                state,
                str(weights),
                extras,
                config_source=str(path / "config.json"),
                config_names=hf_names(config),
            )
        raise ValueError(
            f"{path} is neither a speechssl checkpoint (config.yaml + model.safetensors) "
            "nor a transformers dir (config.json + model.safetensors or pytorch_model.bin)"
        )
    from speechssl.interop import graph_upstream

    if path.suffix == ".onnx":
        return graph_upstream.load_onnx_upstream(path)
    if graph_upstream.is_torchscript_file(path):  # before unpickling: torch.load refuses TorchScript
        return graph_upstream.load_torchscript_upstream(path)
    if path.suffix in (".pt", ".ckpt"):
        return _load_pt(path)
    raise ValueError(
        f"{path}: unsupported upstream file; expected a checkpoint dir, a fairseq/s3prl .pt file, or an"
        " .onnx / TorchScript .pt file from `speechssl export`"
    )


def _load_pt(path: Path) -> Upstream:
    """fairseq, s3prl converted or unilm WavLM checkpoint; the readers live in their own modules."""
    from speechssl.interop import fairseq_io, s3prl_io, wavlm_io
    from speechssl.interop.safe_pickle import load_checkpoint

    ckpt = load_checkpoint(path)  # unpickled once (a Large model is over a GB)
    if s3prl_io.is_s3prl_checkpoint(ckpt):
        config, state, extras = s3prl_io.load_s3prl(path, ckpt=ckpt)
    elif wavlm_io.is_wavlm_checkpoint(ckpt):  # unilm's WavLM, s3prl's WavLM / UniSpeech-SAT
        config, state, extras = wavlm_io.load_wavlm(path, ckpt=ckpt)
    else:
        config, state, extras = fairseq_io.load_fairseq(path, ckpt=ckpt)
    return upstream_from_state(config, state, str(path), extras)


def require_network(upstream: UpstreamModel, source: str | Path, purpose: str) -> Upstream:
    """`upstream` when it is a loaded network (an `Upstream`: `model`, `config`, `extras`), which
    `purpose` (export, a distillation or pruning teacher, ...) needs; a built-in baseline is refused."""
    if not isinstance(upstream, Upstream):
        from speechssl.interop.graph_upstream import GraphUpstream

        if isinstance(upstream, GraphUpstream):
            kind = upstream.format_name
            what = f"{'an' if kind[0] in 'AEIOU' else 'a'} {kind} export (a fixed graph, not a network)"
        else:
            what = f"a built-in {type(upstream).__name__}"
        raise ValueError(
            f"{purpose} needs a network with weights, but upstream '{source}' is {what}; give a"
            " speechssl checkpoint dir, a transformers dir or a fairseq/s3prl .pt"
        )
    return upstream


# folder names that say nothing about which model it is
_GENERIC_DIRS = ("last", "best", "final", "checkpoints", "upstream")


def upstream_name(source: str | Path) -> str:
    """A readable name for an upstream in results and reports: a built-in's name, a file's stem, or
    the nearest folder of the path that is not a generic one (`.../exp/hubert_iter2/checkpoints/last`
    -> hubert_iter2, `exp/distill/final` -> distill), never just `last`. `speechssl downstream name`
    prints it for recipes."""
    if str(source) in BUILTIN_UPSTREAMS:
        return str(source)
    if str(source).startswith(TOKENS_PREFIX):
        return token_upstream_name(source, upstream_name)
    path = Path(source)
    if not path.is_dir():
        return path.stem
    for part in reversed(Path(os.path.abspath(path)).parts[1:]):
        if part not in _GENERIC_DIRS and not (part.startswith("step_") and part[5:].isdigit()):
            return part
    return path.name
