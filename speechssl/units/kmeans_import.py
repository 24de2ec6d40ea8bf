"""Import the k-means model of a released HuBERT: fairseq's / the HuBERT repo's `km.bin`.

Those files are scikit-learn `MiniBatchKMeans` (or `KMeans`) objects written with
`joblib.dump` (learn_kmeans.py) or `pickle.dump`. Loading them with joblib or pickle
would import and call whatever the file names, so they are read here with a restricted
unpickler: every global the stream names is looked up in a short allow-list and replaced
by an inert stand-in of ours (the estimator keeps its attribute dict and nothing runs;
arrays, dtypes and numpy scalars are rebuilt from their raw bytes with `np.frombuffer`).
Anything else the file names (os.system, builtins.eval, another class) is refused before
it is called, naming it. Only `cluster_centers_` is kept: it becomes our safe k-means dir
(centroids.npy + kmeans.json, see speechssl.units.kmeans), whose nearest-centroid labels
are those of scikit-learn's `predict`.

joblib's format is a pickle in which each array is a `NumpyArrayWrapper` (shape, order,
dtype) whose BUILD is followed, outside the pickle stream, by the array's raw bytes (since
joblib 1.2 after one padding-length byte and that many padding bytes). Compressed joblib
files (gzip, bz2, xz/lzma, zlib) are decompressed with the standard library first.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from speechssl.errors import SpeechSSLError
from speechssl.features.dump import NonFiniteFeaturesError
from speechssl.units.kmeans import KMeansModel

__all__ = ["KMeansImportError", "UnsafeKMeansFileError", "read_sklearn_kmeans", "import_kmeans"]

MAX_DECOMPRESSED = 2**31  # bytes; a k-means model of 10k x 4096 float64 centroids is 330 MB


class KMeansImportError(SpeechSSLError, ValueError):
    """A k-means file that is not a readable scikit-learn k-means model."""


class UnsafeKMeansFileError(KMeansImportError):
    """A k-means file that names a type or function outside the allow-list (never called)."""


# --------------------------------------------------------------------------- stand-ins
class _Estimator:
    """Stand-in for scikit-learn's KMeans / MiniBatchKMeans: holds the pickled attribute dict."""

    qualname = ""
    state: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> _Estimator:  # NEWOBJ calls __new__ only
        inst = super().__new__(cls)
        inst.state = {}
        return inst

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass


def _estimator_class(qualname: str) -> type[_Estimator]:
    return type("SklearnKMeansStandIn", (_Estimator,), {"qualname": qualname})


class _NdarrayClass:
    """Stand-in for the class `numpy.ndarray` (only ever passed as an argument)."""


class _DType:
    """Stand-in for `numpy.dtype(name, align, copy)` until BUILD gives its byte order."""

    name = ""
    byteorder = "="

    def __init__(self, name: Any, *_: Any) -> None:
        if not isinstance(name, str):
            raise KMeansImportError(f"numpy dtype named by a {type(name).__name__}, expected a string")
        self.name = name
        self.byteorder = "="

    def resolve(self) -> np.dtype:
        kind = self.name[:1]
        if kind not in "biuf" or not self.name[1:].isdigit():
            raise KMeansImportError(
                f"numpy dtype '{self.name}' is not a plain number type (object and structured arrays"
                " are refused)"
            )
        order = self.byteorder if self.byteorder in "<>" else "="
        return np.dtype(order + self.name)


class _ArrayPlaceholder:
    """Result of numpy's `_reconstruct(ndarray, (0,), b'b')`: an array whose BUILD gives the data."""

    array: np.ndarray | None = None


class _ArrayWrapper:
    """Stand-in for joblib's NumpyArrayWrapper: its state says what raw bytes follow the BUILD."""

    array: np.ndarray | None = None


def _value(obj: Any) -> Any:
    """A stand-in as the value it stands for: the pickle memo keeps stand-ins, so a value referenced
    twice comes back as the stand-in whose BUILD filled it in."""
    if isinstance(obj, _DType):
        return obj.resolve()
    if isinstance(obj, (_ArrayPlaceholder, _ArrayWrapper)):
        if obj.array is None:
            raise KMeansImportError("an array used before its data were read")
        return obj.array
    return obj


class _Object:
    """Stand-in for `builtins.object` (the base argument of copyreg._reconstructor)."""


def _reconstructor(cls: Any, base: Any, state: Any) -> _Estimator:
    """copyreg._reconstructor(cls, object, None) of protocol 0/1 pickles."""
    if (
        not (isinstance(cls, type) and issubclass(cls, _Estimator))
        or base is not _Object
        or state is not None
    ):
        raise KMeansImportError("copyreg._reconstructor is used here for something other than the estimator")
    return cls()


def _numpy_reconstruct(subtype: Any, shape: Any, dtype: Any) -> _ArrayPlaceholder:
    if subtype is not _NdarrayClass:
        raise KMeansImportError("numpy's _reconstruct asked for an array subclass; only ndarray is read")
    return _ArrayPlaceholder()


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    dtype = _value(dtype)
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise KMeansImportError("a numpy scalar without a plain dtype and its bytes")
    return np.frombuffer(data, dtype=dtype)[0].item()


def _numpy_frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's `_frombuffer(buf, dtype, shape, order)` of protocol-5 pickles (in-band bytearray)."""
    dtype, shape = _value(dtype), _shape(shape)
    if not isinstance(dtype, np.dtype) or not isinstance(buffer, (bytes, bytearray)) or order not in "CF":
        raise KMeansImportError("numpy's _frombuffer without a plain dtype and in-band bytes")
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(buffer) != size:
        raise KMeansImportError(f"a numpy array of shape {shape} with {len(buffer)} bytes instead of {size}")
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape, order=order).copy()


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """`_codecs.encode(str, 'latin1')`: how protocol-2 pickles of Python 3 write bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise KMeansImportError("_codecs.encode is used here for something other than latin-1 bytes")
    return text.encode("latin1")


_SKLEARN_CLASSES = [
    f"sklearn.cluster.{module}.{name}"
    for module in ("_kmeans", "k_means_")
    for name in ("MiniBatchKMeans", "KMeans")
]
_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_JOBLIB_WRAPPERS = ("joblib.numpy_pickle", "sklearn.externals.joblib.numpy_pickle")


def _allowed() -> dict[str, Any]:
    found: dict[str, Any] = {name: _estimator_class(name) for name in _SKLEARN_CLASSES}
    for core in _NUMPY_CORE:
        found[f"{core}._reconstruct"] = _numpy_reconstruct
        found[f"{core}.scalar"] = _numpy_scalar
    for numeric in ("numpy.core.numeric", "numpy._core.numeric"):
        found[f"{numeric}._frombuffer"] = _numpy_frombuffer
    for module in _JOBLIB_WRAPPERS:
        found[f"{module}.NumpyArrayWrapper"] = _ArrayWrapper
    found.update(
        {
            "numpy.ndarray": _NdarrayClass,
            "numpy.dtype": _DType,
            "copyreg._reconstructor": _reconstructor,
            "copy_reg._reconstructor": _reconstructor,
            "builtins.object": _Object,
            "__builtin__.object": _Object,
            "_codecs.encode": _codecs_encode,
        }
    )
    return found


ALLOWED_GLOBALS = _allowed()


# --------------------------------------------------------------------------- the unpickler
class _KMeansUnpickler(pickle._Unpickler):  # type: ignore[name-defined,misc]
    """The pure-Python unpickler (its opcode table can be changed, as joblib does) with
    `find_class` restricted to ALLOWED_GLOBALS and BUILD applied only to our stand-ins."""

    dispatch = pickle._Unpickler.dispatch.copy()  # type: ignore[attr-defined]

    def __init__(self, handle: BinaryIO, source: str) -> None:
        super().__init__(handle, encoding="latin1")  # numpy's choice for Python 2 pickles
        self.handle = handle
        self.source = source
        self.joblib = False

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if qualname not in ALLOWED_GLOBALS:
            raise UnsafeKMeansFileError(
                f"{self.source}: refusing to unpickle {qualname}: a k-means file may only name "
                "scikit-learn's KMeans/MiniBatchKMeans, numpy arrays and joblib's array wrapper "
                "(nothing in the file was run)"
            )
        if ALLOWED_GLOBALS[qualname] is _ArrayWrapper:
            self.joblib = True
        return ALLOWED_GLOBALS[qualname]

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeKMeansFileError(f"{self.source}: refusing a persistent id in the pickle")

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, _Estimator):
            if not isinstance(state, dict):
                raise KMeansImportError(f"{self.source}: the estimator's state is not a dict")
            inst.state.update(state)
        elif isinstance(inst, _DType):
            self.stack[-1] = _build_dtype(inst, state)
        elif isinstance(inst, _ArrayPlaceholder):
            inst.array = _build_array(state)
            self.stack[-1] = inst.array
        elif isinstance(inst, _ArrayWrapper):
            inst.array = self._read_wrapped_array(state)
            self.stack[-1] = inst.array
        else:
            raise KMeansImportError(f"{self.source}: BUILD on a {type(inst).__name__}, which holds no state")

    dispatch[pickle.BUILD[0]] = load_build

    def _read_wrapped_array(self, state: Any) -> np.ndarray:
        """The raw bytes joblib wrote after the wrapper (see the module docstring)."""
        if not isinstance(state, dict) or not isinstance(_value(state.get("dtype")), np.dtype):
            raise KMeansImportError(f"{self.source}: a joblib array wrapper without a dtype")
        if state.get("subclass") is not _NdarrayClass:
            raise KMeansImportError(f"{self.source}: a joblib array of a subclass of ndarray")
        dtype, shape, order = _value(state["dtype"]), _shape(state.get("shape")), state.get("order", "C")
        if state.get("numpy_array_alignment_bytes") is not None:
            padding = self.handle.read(1)
            if len(padding) != 1:
                raise KMeansImportError(f"{self.source}: truncated joblib array")
            self.handle.read(padding[0])
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        data = self.handle.read(size)
        if len(data) != size:
            raise KMeansImportError(
                f"{self.source}: truncated joblib array (expected {size} bytes, found {len(data)})"
            )
        array = np.frombuffer(data, dtype=dtype)
        return array.reshape(shape[::-1]).T.copy() if order == "F" else array.reshape(shape).copy()


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(isinstance(v, int) and v >= 0 for v in value):
        raise KMeansImportError(f"array shape {value!r} is not a tuple of sizes")
    return value


def _build_dtype(inst: _DType, state: Any) -> np.dtype:
    # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, alignment, flags)
    if not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5]):
        raise KMeansImportError(f"numpy dtype '{inst.name}' is not a plain number type")
    if isinstance(state[1], str):
        inst.byteorder = state[1]
    return inst.resolve()


def _build_array(state: Any) -> np.ndarray:
    # ndarray.__reduce__ state: (version, shape, dtype, is_fortran, raw bytes)
    if not isinstance(state, tuple) or len(state) != 5:
        raise KMeansImportError("a numpy array without its (version, shape, dtype, order, data) state")
    _, shape, dtype, fortran, data = state
    shape, dtype = _shape(shape), _value(dtype)
    if not isinstance(dtype, np.dtype):
        raise KMeansImportError("a numpy array without a plain dtype")
    if not isinstance(data, (bytes, bytearray)):
        raise KMeansImportError("a numpy array whose data are not raw bytes (object arrays are refused)")
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != size:
        raise KMeansImportError(f"a numpy array of shape {shape} with {len(data)} bytes instead of {size}")
    array = np.frombuffer(bytes(data), dtype=dtype)
    return array.reshape(shape[::-1]).T.copy() if fortran else array.reshape(shape).copy()


# --------------------------------------------------------------------------- reading
def _decompress(raw: bytes, source: str) -> tuple[bytes, str]:
    """(pickle bytes, compression name) of a plain or compressed joblib file. At most
    MAX_DECOMPRESSED bytes are ever produced: a compressed bomb stops there, not in memory."""
    limit = MAX_DECOMPRESSED + 1
    if raw[:2] == b"\x1f\x8b":
        reader, name = (lambda: gzip.GzipFile(fileobj=io.BytesIO(raw)).read(limit)), "gzip"
    elif raw[:3] == b"BZh":
        reader, name = (lambda: bz2.BZ2File(io.BytesIO(raw)).read(limit)), "bz2"
    elif raw[:6] == b"\xfd7zXZ\x00" or raw[:3] == b"]\x00\x00":
        reader, name = (lambda: lzma.LZMAFile(io.BytesIO(raw)).read(limit)), "lzma"
    elif raw[:1] == b"x":  # joblib's zlib: a bare zlib stream
        reader, name = (lambda: zlib.decompressobj().decompress(raw, limit)), "zlib"
    else:
        return raw, ""
    try:
        out = reader()
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as err:
        raise KMeansImportError(f"{source}: cannot decompress this {name} file: {err}") from None
    if len(out) > MAX_DECOMPRESSED:
        raise KMeansImportError(f"{source}: decompresses to more than {MAX_DECOMPRESSED} bytes")
    return out, name


def read_sklearn_kmeans(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """The centroids (K, D) of a pickled / joblib scikit-learn k-means file and what it says about
    itself (class, scikit-learn version, fit settings). Never runs code from the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"k-means model not found: {path}")
    raw = path.read_bytes()
    data, compression = _decompress(raw, str(path))
    unpickler = _KMeansUnpickler(io.BytesIO(data), str(path))
    try:
        obj = unpickler.load()
    except KMeansImportError:
        raise
    except (
        pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
        struct.error, OverflowError, RecursionError,
    ) as err:  # fmt: skip
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise KMeansImportError(
            f"{path} is not a readable pickle (truncated or corrupt?): {reason}"
        ) from None
    if not isinstance(obj, _Estimator):
        raise KMeansImportError(
            f"{path}: expected a scikit-learn KMeans/MiniBatchKMeans model, found {type(obj).__name__}"
        )
    centers = _value(obj.state.get("cluster_centers_"))
    if not isinstance(centers, np.ndarray):
        raise KMeansImportError(f"{path}: the {obj.qualname} has no cluster_centers_ (was it fitted?)")
    if centers.ndim != 2 or centers.shape[0] < 1 or centers.shape[1] < 1:
        raise KMeansImportError(
            f"{path}: cluster_centers_ has shape {centers.shape}, expected (clusters, dim)"
        )
    if not np.isfinite(centers).all():
        raise NonFiniteFeaturesError(f"{path}: cluster_centers_ holds NaN or infinite values")
    info: dict[str, Any] = {
        "sklearn_class": obj.qualname,
        "sklearn_version": obj.state.get("_sklearn_version"),
        "format": "joblib" if unpickler.joblib else "pickle",
        "compression": compression or None,
        "centroids_dtype": str(centers.dtype),
    }
    for key in ("n_clusters", "init", "max_iter", "batch_size", "tol", "max_no_improvement", "n_init",
                "reassignment_ratio", "inertia_", "n_iter_", "n_steps_"):  # fmt: skip
        value = _value(obj.state.get(key))
        if isinstance(value, (int, float, str, bool)):
            info[key] = value
    return centers, info


def import_kmeans(model_path: str | Path, out_dir: str | Path) -> KMeansModel:
    """Read a fairseq / HuBERT-repo `km.bin` (see `read_sklearn_kmeans`) and write it to `out_dir` as
    our k-means dir (centroids.npy + kmeans.json, one atomic pair). The caller claims `out_dir`."""
    model_path = Path(model_path)
    centers, info = read_sklearn_kmeans(model_path)
    params = {
        "num_clusters": int(centers.shape[0]),
        "feature_dim": int(centers.shape[1]),
        "imported_from": str(model_path),
        "imported_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        **info,
    }
    model = KMeansModel(centers.astype(np.float32), params)
    model.save(out_dir)
    return model
