"""Our own ONNX and TorchScript exports as upstreams: `load_upstream("model.onnx" | "model.pt")`.

`speechssl export --format onnx|torchscript` writes one graph, `(wavs, wav_lens) -> (hidden_states
(num_layers + 1, B, T, D), lengths (B,))`, and the metadata a consumer needs (layers, width,
downsample rate, shortest input, the model config) inside the file. `GraphUpstream` turns such a
file back into an `UpstreamModel`, so a deployed export can be evaluated (`downstream`, `features`,
`compare`) exactly where the checkpoint it came from could. It is a fixed graph, not a network
with a config to rebuild: export, distillation, pruning and tuning other than `frozen` still need
the checkpoint (`require_network` says so).

Only files that carry speechssl's metadata are read: a foreign graph has no contract for its
inputs and outputs. Both run on the CPU, where they were traced (ONNX in onnxruntime), whatever
device the module is moved to; outputs come back on the input's device. TorchScript archives that
define `__setstate__` (code that would run while loading) are refused; speechssl's exports have none.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from speechssl.config import from_dict
from speechssl.models.config import ModelConfig
from speechssl.models.upstream_api import UpstreamModel, UpstreamOutput

LIBRARY = "speechssl"
TORCHSCRIPT_EXTRA = "speechssl.json"  # torchscript_export.EXTRA_FILE: the metadata inside the archive
_REQUIRED_INTS = {"num_layers": 0, "hidden_dim": 1, "downsample_rate": 1, "min_samples": 1}


class GraphExportError(ValueError):
    """A graph file that is not a readable speechssl export (one line naming the file)."""


class GraphUpstream(UpstreamModel):
    """An exported graph behind the `UpstreamModel` interface (see the module docstring)."""

    format_name = "graph"

    def __init__(self, path: str | Path, metadata: dict[str, Any]) -> None:
        super().__init__()
        self.source = str(path)
        self.metadata = dict(metadata)
        self._num_layers = int(metadata["num_layers"])
        self._hidden_dim = int(metadata["hidden_dim"])
        self._downsample_rate = int(metadata["downsample_rate"])
        self.min_samples = int(metadata["min_samples"])
        # The network the graph computes (None for an export older than the field): callers read
        # e.g. whether padding changes the output (a group-norm frontend) from it.
        self.config: ModelConfig | None = metadata.get("model_config")

    @property
    def downsample_rate(self) -> int:
        return self._downsample_rate

    @property
    def num_layers(self) -> int:
        return self._num_layers

    @property
    def hidden_dim(self) -> int:
        return self._hidden_dim

    def forward(self, wavs: Tensor, wav_lens: Tensor | None = None) -> UpstreamOutput:
        """wavs: (B, S) float at 16 kHz; wav_lens: (B,) valid samples (None: all S)."""
        if wavs.dim() != 2:
            raise ValueError(f"expected waveforms of shape (batch, samples), found {tuple(wavs.shape)}")
        if wav_lens is None:
            wav_lens = torch.full((wavs.shape[0],), wavs.shape[1], dtype=torch.long)
        short = (wav_lens < self.min_samples).nonzero().flatten().tolist()
        if short:  # the graph would return 0 frames of NaN: say it as the eager model does
            raise ValueError(
                f"utterance(s) at batch index {short} are too short for one frame "
                f"(lengths {wav_lens[short].tolist()} samples; need at least {self.min_samples})"
            )
        hidden, lengths = self._run(wavs.float(), wav_lens.long())  # (L + 1, B, T, D), (B,)
        return UpstreamOutput(hidden_states=list(hidden.unbind(0)), lengths=lengths)

    def _run(self, wavs: Tensor, wav_lens: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.format_name}: {self.source}"


class OnnxUpstream(GraphUpstream):
    """An ONNX export run by onnxruntime on the CPU (threads: torch's, so --num-threads applies)."""

    feature_cache_bypass = "an ONNX graph's weights are not torch tensors the cache key could hash"

    format_name = "ONNX"

    def __init__(self, path: str | Path, metadata: dict[str, Any], session: Any = None) -> None:
        super().__init__(path, metadata)
        self._session = session

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = onnx_session(self.source)
        return self._session

    def __getstate__(self) -> dict[str, Any]:
        # an onnxruntime session cannot be copied or pickled: a copy opens its own on first use
        return {**self.__dict__, "_session": None}

    def _run(self, wavs: Tensor, wav_lens: Tensor) -> tuple[Tensor, Tensor]:
        hidden, lengths = self.session.run(
            ["hidden_states", "lengths"],
            {"wavs": wavs.detach().cpu().numpy(), "wav_lens": wav_lens.cpu().numpy()},
        )
        return torch.from_numpy(hidden).to(wavs.device), torch.from_numpy(lengths).to(wav_lens.device)


class TorchScriptUpstream(GraphUpstream):
    """A TorchScript export, run on the CPU: the trace holds CPU tensors as constants (the frame
    positions of the padding mask), so `.to(device)` leaves the graph where it is and `forward`
    returns its outputs on the input's device, as the ONNX upstream does."""

    format_name = "TorchScript"

    def __init__(self, path: str | Path, metadata: dict[str, Any], module: torch.jit.ScriptModule) -> None:
        super().__init__(path, metadata)
        self.module = module

    def _apply(self, fn: Any, recurse: bool = True) -> TorchScriptUpstream:
        return self  # .to / .cuda / .half: the traced graph only runs as traced (float32, CPU)

    def _run(self, wavs: Tensor, wav_lens: Tensor) -> tuple[Tensor, Tensor]:
        hidden, lengths = self.module(wavs.detach().cpu(), wav_lens.cpu())
        return hidden.to(wavs.device), lengths.to(wav_lens.device)


# --------------------------------------------------------------------------- reading


def _checked_metadata(raw: dict[str, Any], path: Path, what: str) -> dict[str, Any]:
    """The export metadata with its types checked; a foreign file is named as such."""
    if raw.get("library") != LIBRARY:
        raise GraphExportError(
            f"{path}: {'an' if what[0] in 'AEIOU' else 'a'} {what} file without speechssl's export metadata;"
            f" load_upstream reads {what} files"
            f" written by `speechssl export --format {what.lower()}` (inputs wavs, wav_lens; outputs"
            " hidden_states, lengths), and checkpoints (a speechssl or transformers dir, a fairseq/s3prl .pt)"
        )
    meta = dict(raw)
    for key, low in _REQUIRED_INTS.items():
        value = meta.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise GraphExportError(
                f"{path}: export metadata '{key}' must be an integer >= {low}, found {value!r}"
            )
    config = meta.get("model_config")
    if config is not None:
        if not isinstance(config, dict):
            raise GraphExportError(f"{path}: export metadata 'model_config' is not a mapping")
        try:
            meta["model_config"] = from_dict(ModelConfig, config, source=f"{path} (export metadata)")
        except ValueError as err:
            raise GraphExportError(str(err)) from None
    return meta


def _require_onnxruntime() -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ValueError(
            f"reading an ONNX upstream needs onnxruntime (pip install 'speechssl[onnx]'): {err}"
        ) from None


def onnx_session(path: str | Path) -> Any:
    """An onnxruntime CPU session with torch's thread count; a file onnxruntime cannot read is
    a one-line error naming it."""
    _require_onnxruntime()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # shape-inference notices of the optimizer stay out of user logs
    options.intra_op_num_threads = torch.get_num_threads()
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise GraphExportError(f"{path} is not a readable ONNX file: {reason}") from None


def _decode(value: str) -> Any:
    """metadata_props hold strings; the exporter JSON-encodes every value that is not one."""
    try:
        return json.loads(value)
    except ValueError:
        return value


def load_onnx_upstream(path: str | Path) -> OnnxUpstream:
    """An ONNX file of `speechssl export --format onnx` as an upstream (see the module docstring)."""
    path = Path(path)
    session = onnx_session(path)
    raw = {k: _decode(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    inputs = sorted(i.name for i in session.get_inputs())
    outputs = sorted(o.name for o in session.get_outputs())
    if raw.get("library") == LIBRARY and (inputs, outputs) != (
        ["wav_lens", "wavs"],
        ["hidden_states", "lengths"],
    ):
        raise GraphExportError(
            f"{path}: expected inputs wavs, wav_lens and outputs hidden_states, lengths;"
            f" found inputs {', '.join(inputs)} and outputs {', '.join(outputs)}"
        )
    return OnnxUpstream(path, _checked_metadata(raw, path, "ONNX"), session).eval()


def _archive_names(path: Path) -> list[str] | None:
    """Member names of a zip file, None for anything else (a legacy pickle, not a file)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def is_torchscript_file(path: str | Path) -> bool:
    """A torch.jit.save archive (code/ and constants.pkl beside the data), whoever wrote it."""
    names = _archive_names(Path(path))
    if not names:
        return False
    root = names[0].split("/", 1)[0]
    return f"{root}/constants.pkl" in names and any(n.startswith(f"{root}/code/") for n in names)


def load_torchscript_upstream(path: str | Path) -> TorchScriptUpstream:
    """A TorchScript file of `speechssl export --format torchscript` as an upstream, on the CPU."""
    from speechssl.interop.torchscript_export import load_torchscript

    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        root = names[0].split("/", 1)[0]
        extra = f"{root}/extra/{TORCHSCRIPT_EXTRA}"
        raw: dict[str, Any] = {}
        if extra in names:
            try:
                raw = json.loads(archive.read(extra))
            except ValueError:
                raise GraphExportError(f"{path}: its {TORCHSCRIPT_EXTRA} is not JSON") from None
        if not isinstance(raw, dict):
            raise GraphExportError(f"{path}: its {TORCHSCRIPT_EXTRA} is not a JSON object")
        metadata = _checked_metadata(raw, path, "TorchScript")
        setstate = [
            n
            for n in names
            if n.startswith(f"{root}/code/") and n.endswith(".py") and b"__setstate__" in archive.read(n)
        ]
    if setstate:
        raise GraphExportError(
            f"{path}: refusing to load a TorchScript archive whose code defines __setstate__ (it would run"
            f" while loading: {setstate[0]}); speechssl's exports have none"
        )
    try:
        module = load_torchscript(path)
    except RuntimeError as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise GraphExportError(f"{path} is not a loadable TorchScript file: {reason}") from None
    return TorchScriptUpstream(path, metadata, module).eval()
