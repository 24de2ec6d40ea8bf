"""speechssl: self-supervised speech representation learning.

Recipes prepare Kaldi data dirs; models (wav2vec 2.0 / HuBERT) are pretrained,
evaluated SUPERB-style, compressed and exported. See DESIGN.md for the flow.
"""

__version__ = "0.1.0"


def load_upstream(source, **kwargs):
    """Any upstream: a built-in name ("fbank") or a checkpoint (speechssl dir, transformers dir,
    fairseq / s3prl .pt), e.g. `load_upstream(path, verify="sha256")`. Every result implements
    `speechssl.models.upstream_api.UpstreamModel`: `up(wavs, wav_lens) -> UpstreamOutput`,
    `downsample_rate`, `num_layers`, `hidden_dim` (see speechssl.interop.upstream)."""
    from speechssl.interop.upstream import load_upstream as _load

    return _load(source, **kwargs)


__all__ = ["__version__", "load_upstream"]
