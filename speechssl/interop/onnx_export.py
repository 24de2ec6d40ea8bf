"""ONNX export: inputs `wavs` (batch, samples) float32 and `wav_lens` (batch,) int64, outputs
`hidden_states` (num_layers + 1, batch, frames, dim) and `lengths` (batch,) int64; batch and
time axes dynamic.

We use torch.onnx.export's TorchScript-based exporter (`dynamo=False`) on
ExportableUpstream: the dynamo exporter needs onnxscript (not a dependency),
and the traced graph is the one the TorchScript export already checks. The
file is verified with onnxruntime against the eager model on a batch whose
size and lengths differ from the export batch.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import torch

from speechssl.interop.graph_upstream import onnx_session
from speechssl.interop.torchscript_export import (
    TRACE_LENGTHS,
    ExportableUpstream,
    check_parity,
    example_inputs,
    export_metadata,
)
from speechssl.interop.upstream import Upstream
from speechssl.io import atomic_file

logger = logging.getLogger(__name__)

OPSET = 17  # LayerNormalization as one op; onnxruntime >= 1.13
INPUT_NAMES = ["wavs", "wav_lens"]
OUTPUT_NAMES = ["hidden_states", "lengths"]
DYNAMIC_AXES = {
    "wavs": {0: "batch", 1: "samples"},
    "wav_lens": {0: "batch"},
    "hidden_states": {1: "batch", 2: "frames"},
    "lengths": {0: "batch"},
}


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ValueError(
            f"ONNX export needs onnx and onnxruntime (pip install 'speechssl[onnx]'): {err}"
        ) from None


def run_onnx(session, wavs: torch.Tensor, wav_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden_states, lengths) as torch tensors from an onnxruntime session."""
    hidden, lengths = session.run(
        OUTPUT_NAMES, {"wavs": wavs.float().numpy(), "wav_lens": wav_lens.long().numpy()}
    )
    return torch.from_numpy(hidden), torch.from_numpy(lengths)


def _add_metadata(path: Path, metadata: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_onnx(upstream: Upstream, out: str | Path, *, verify: bool = True) -> Path:
    """Write `upstream` as an ONNX file at `out` (atomically; metadata in metadata_props).

    With `verify`, onnxruntime runs the file on a padded batch of another size and
    other lengths than the export batch and must agree with PyTorch to 1e-4.
    """
    _require_onnx()
    out = Path(out)
    start = time.perf_counter()
    wrapper = ExportableUpstream(upstream).eval()
    with atomic_file(out) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(
                wrapper,
                example_inputs(TRACE_LENGTHS),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=INPUT_NAMES,
                output_names=OUTPUT_NAMES,
                dynamic_axes=DYNAMIC_AXES,
                do_constant_folding=True,
            )
        _add_metadata(tmp, export_metadata(upstream))
        if verify:
            session = onnx_session(tmp)
            error = check_parity(upstream, lambda w, n: run_onnx(session, w, n), what=f"ONNX export {out}")
            logger.info("onnxruntime matches PyTorch: max error %.2e on valid frames", error)
    logger.info("wrote %s (%.1f MB) in %.1f s", out, out.stat().st_size / 1e6, time.perf_counter() - start)
    return out
