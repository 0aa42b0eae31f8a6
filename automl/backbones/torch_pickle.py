"""Read PyTorch checkpoints (``torch.save`` of a state dict) into numpy arrays, without torch.

Both formats are handled: the legacy one (torch < 1.6: five pickles in a row, then the raw
storages) and the zip one (torch >= 1.6: ``archive/data.pkl`` plus one file per storage).

A pickle can run any callable it names, so every pickle is read with a restricted unpickler
whose ``find_class`` admits only what rebuilding tensors needs; anything else is refused with a
:class:`~automl.errors.WeightsError` before it is imported, let alone called.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from automl.errors import WeightsError

__all__ = ["load_state_dict"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch storage class name -> numpy dtype (little-endian, as torch writes on x86/arm).
STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageType:
    """Stands in for a ``torch.*Storage`` class named by the pickle."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return STORAGE_DTYPES[self.name]


@dataclass
class _Storage:
    """A storage announced by a persistent id; ``data`` is filled once its bytes are read."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _TensorRef:
    """A tensor view on a storage, materialised once every storage has been read."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: _Storage, storage_offset: int, size: tuple, stride: tuple,
                    *_ignored: Any) -> _TensorRef:
    """Our stand-in for ``torch._utils._rebuild_tensor(_v2)``; extra args (grad, hooks) dropped."""
    if not isinstance(storage, _Storage):
        raise WeightsError("tensor rebuilt from something that is not a storage")
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size),
                      tuple(int(s) for s in stride))


def _rebuild_parameter(data: Any, _requires_grad: Any = None, _hooks: Any = None,
                       *_ignored: Any) -> Any:
    """Our stand-in for ``torch._utils._rebuild_parameter``: a Parameter is just its tensor."""
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED`` and torch storage ids."""

    def __init__(self, fh: BinaryIO, source: str, storages: dict[str, _Storage]) -> None:
        super().__init__(fh)
        self._source = source
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise WeightsError(
                f"{self._source}: refuses to load '{module}.{name}': a weights file should hold "
                "only tensors, and this global could run code. The file is not trusted."
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        # Legacy: ('storage', type, key, location, numel, view_metadata); zip: the first five.
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[4], int)):
            raise WeightsError(f"{self._source}: unsupported persistent id {pid!r:.80}")
        if len(pid) == 6 and pid[5] is not None:
            raise WeightsError(f"{self._source}: storage views are not supported")
        key = str(pid[2])
        storage = self._storages.get(key)
        if storage is None:
            storage = _Storage(key, pid[1].dtype, pid[4])
            self._storages[key] = storage
        elif storage.dtype != pid[1].dtype:
            raise WeightsError(f"{self._source}: storage {key} is used with two dtypes")
        return storage


def _materialise(ref: _TensorRef, source: str) -> np.ndarray:
    """Copy the view ``ref`` out of its storage, checking it stays inside the storage."""
    data = ref.storage.data
    if data is None:
        raise WeightsError(f"{source}: storage {ref.storage.key} has no data")
    if len(ref.size) != len(ref.stride) or min((*ref.size, *ref.stride, ref.offset), default=0) < 0:
        raise WeightsError(f"{source}: bad tensor size/stride {ref.size}/{ref.stride}")
    if 0 in ref.size:
        return np.zeros(ref.size, dtype=data.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
    if last >= data.size:
        raise WeightsError(f"{source}: tensor reaches past the end of its storage")
    strides = tuple(s * data.itemsize for s in ref.stride)
    view = np.lib.stride_tricks.as_strided(data[ref.offset:], shape=ref.size, strides=strides,
                                           writeable=False)
    return np.array(view, dtype=data.dtype.newbyteorder("="), order="C")


def _resolve(obj: Any, source: str) -> Any:
    """Replace every tensor reference inside ``obj`` (dicts/lists/tuples) by its array."""
    if isinstance(obj, _TensorRef):
        return _materialise(obj, source)
    if isinstance(obj, dict):
        return type(obj)((k, _resolve(v, source)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_resolve(v, source) for v in obj)
    return obj


def _read_exact(fh: BinaryIO, n: int, source: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise WeightsError(f"{source}: file is truncated (wanted {n} bytes, got {len(data)})")
    return data


def _load_legacy(fh: BinaryIO, source: str) -> Any:
    storages: dict[str, _Storage] = {}
    size = os.fstat(fh.fileno()).st_size

    def unpickle() -> Any:
        return _RestrictedUnpickler(fh, source, storages).load()

    if unpickle() != LEGACY_MAGIC:
        raise WeightsError(f"{source}: not a PyTorch checkpoint (bad magic number)")
    if unpickle() != LEGACY_PROTOCOL:
        raise WeightsError(f"{source}: unsupported legacy PyTorch protocol version")
    sys_info = unpickle()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise WeightsError(f"{source}: big-endian checkpoints are not supported")
    result = unpickle()
    keys = unpickle()
    if not isinstance(keys, list) or any(str(k) not in storages for k in keys):
        raise WeightsError(f"{source}: storage key list does not match the tensors")
    for key in keys:
        storage = storages[str(key)]
        (numel,) = struct.unpack("<q", _read_exact(fh, 8, source))
        if numel != storage.numel:
            raise WeightsError(f"{source}: storage {key} has {numel} elements, "
                               f"expected {storage.numel}")
        nbytes = numel * storage.dtype.itemsize
        if not 0 <= nbytes <= size - fh.tell():  # never allocate more than the file holds
            raise WeightsError(f"{source}: file is truncated (storage {key} needs {nbytes} bytes)")
        raw = _read_exact(fh, nbytes, source)
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return result


def _load_zip(path: Path, source: str) -> Any:
    storages: dict[str, _Storage] = {}
    with zipfile.ZipFile(path) as zf:
        pkl_names = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl_names) != 1:
            raise WeightsError(f"{source}: zip checkpoint without a single data.pkl")
        root = pkl_names[0][: -len("data.pkl")]
        names = set(zf.namelist())
        if f"{root}byteorder" in names and zf.read(f"{root}byteorder").strip() != b"little":
            raise WeightsError(f"{source}: big-endian checkpoints are not supported")
        result = _RestrictedUnpickler(io.BytesIO(zf.read(pkl_names[0])), source, storages).load()
        for key, storage in storages.items():
            raw = zf.read(f"{root}data/{key}")
            want = storage.numel * storage.dtype.itemsize
            if len(raw) < want:
                raise WeightsError(f"{source}: storage {key} is truncated")
            storage.data = np.frombuffer(raw[:want], dtype=storage.dtype)
    return result


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the state dict saved at ``path`` by ``torch.save`` as ``{name: numpy array}``.

    Raises :class:`~automl.errors.WeightsError` if the file is missing, truncated, corrupt,
    not a state dict, or references any global other than the tensor-rebuilding ones.
    """
    path = Path(path)
    source = str(path)
    try:
        if zipfile.is_zipfile(path):
            result = _load_zip(path, source)
        else:
            with open(path, "rb") as fh:
                result = _load_legacy(fh, source)
        result = _resolve(result, source)
    except WeightsError:
        raise
    except (OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise WeightsError(f"{source}: cannot read PyTorch checkpoint: {exc}") from exc
    except Exception as exc:  # corrupt pickles raise about anything (ValueError, KeyError, ...)
        raise WeightsError(f"{source}: corrupt PyTorch checkpoint: "
                           f"{type(exc).__name__}: {exc}") from exc
    if isinstance(result, dict) and isinstance(result.get("state_dict"), dict):
        result = result["state_dict"]
    if not isinstance(result, dict) or not all(
            isinstance(k, str) and isinstance(v, np.ndarray) for k, v in result.items()):
        raise WeightsError(f"{source}: not a state dict of tensors")
    return dict(result)
