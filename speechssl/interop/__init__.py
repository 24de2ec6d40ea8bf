"""Import / export: transformers, fairseq, s3prl (and ONNX / TorchScript export), plus the Upstream API."""

from speechssl.interop.upstream import Upstream, UpstreamModel, UpstreamOutput, load_upstream

__all__ = ["Upstream", "UpstreamModel", "UpstreamOutput", "load_upstream"]
