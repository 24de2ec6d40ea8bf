"""`get_upstream(spec)`: "fbank" (the FBANK baseline) or any `load_upstream` source.

Kept here rather than in interop so that imports point downward
(downstream -> interop), never back up."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from speechssl.downstream.fbank_upstream import FbankUpstream

BUILTIN_UPSTREAMS = ("fbank",)


def get_upstream(spec: str | Path) -> nn.Module:
    """An upstream in eval mode: `forward(wavs, wav_lens) -> UpstreamOutput`, with
    `downsample_rate`, `num_layers`, `hidden_dim`."""
    if str(spec) == "fbank":
        return FbankUpstream().eval()
    from speechssl.interop.upstream import load_upstream

    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"upstream '{spec}' is neither a built-in upstream ({', '.join(BUILTIN_UPSTREAMS)}) "
                                "nor an existing checkpoint path")
    return load_upstream(path)


def upstream_name(spec: str | Path) -> str:
    """Short name for tables: 'fbank', or the checkpoint's directory / file stem."""
    if str(spec) in BUILTIN_UPSTREAMS:
        return str(spec)
    path = Path(spec)
    return path.stem if path.is_file() else path.name
