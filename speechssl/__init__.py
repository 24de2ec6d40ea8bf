"""speechssl: self-supervised speech representation learning.

Recipes prepare Kaldi data dirs; models (wav2vec 2.0 / HuBERT) are pretrained,
evaluated SUPERB-style, compressed and exported. See DESIGN.md for the flow.
"""

__version__ = "0.1.0"


def load_upstream(source, **kwargs):
    """Load any supported checkpoint as an `Upstream` (see speechssl.interop.upstream), e.g.
    `load_upstream(path, verify="sha256")`."""
    from speechssl.interop.upstream import load_upstream as _load

    return _load(source, **kwargs)


__all__ = ["__version__", "load_upstream"]
