"""Import / export: transformers, fairseq, s3prl (and ONNX / TorchScript export), plus the Upstream API."""

from speechssl.interop.upstream import Upstream, UpstreamOutput, load_upstream

__all__ = ["Upstream", "UpstreamOutput", "load_upstream"]
