"""Grad-CAM works for every backbone family of the registry, and computes what the paper says."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from automl.backbones.registry import REGISTRY  # noqa: E402
from automl.config import TrialConfig  # noqa: E402
from automl.report.gradcam import MIN_SIDE, _backbone, grad_cam, target_layer  # noqa: E402
from automl.trial.model import build_model, reset_keras  # noqa: E402

FAMILIES = {}
for _spec in REGISTRY.values():  # the smallest backbone of each family
    if _spec.family not in FAMILIES or _spec.params < FAMILIES[_spec.family].params:
        FAMILIES[_spec.family] = _spec


def _images(size: int) -> np.ndarray:
    """Two real photos (scikit-image's cat and coffee) at ``size`` px, 0..255."""
    import tensorflow as tf
    from skimage import data

    photos = [tf.image.resize(p.astype("float32"), (size, size)).numpy()
              for p in (data.chelsea(), data.coffee())]
    return np.round(np.stack(photos))


def _model(name: str, size: int, freeze: float = 0.7, n_classes: int = 10):
    reset_keras(0)
    config = TrialConfig(name, size, freeze, 0, 0.0, 1e-3, "none")
    return build_model(config, REGISTRY[name], n_classes, None)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_heatmaps_for_every_family(family: str) -> None:
    """Random weights (only Lite weights exist offline), 128 px: a finite, non-constant map per
    image, 0..1 with its peak at 1, from a spatial activation of at least MIN_SIDE cells."""
    spec = FAMILIES[family]
    size = max(spec.min_size, 128)
    tm = _model(spec.name, size)
    cam = grad_cam(tm, _images(size))
    assert cam.heatmaps.shape == (2, size, size)
    assert np.isfinite(cam.heatmaps).all()
    assert cam.heatmaps.min() >= 0.0
    np.testing.assert_allclose(cam.heatmaps.max(axis=(1, 2)), 1.0, rtol=1e-6)
    assert (cam.heatmaps.std(axis=(1, 2)) > 0.01).all(), cam.layer
    assert min(cam.grid) >= MIN_SIDE
    np.testing.assert_allclose(cam.probs.sum(axis=1), 1.0, rtol=1e-5)
    # the probabilities are the model's own
    want = keras.ops.convert_to_numpy(tm.inference(_images(size), training=False))
    np.testing.assert_allclose(cam.probs, want, rtol=1e-4, atol=1e-5)
    # it explains the predicted class (random weights: near-ties, so up to float noise)
    picked = want[np.arange(2), cam.classes]
    assert (picked >= want.max(axis=1) - 1e-5).all()


def test_matches_the_closed_form_on_the_last_feature_map() -> None:
    """With a linear head on the pooled last map A (h x w x k), d logit_c / dA_k = W[k, c]/(hw),
    so Grad-CAM = relu(sum_k W[k, c] A_k) / max. Checked against that, computed in numpy."""
    tm = _model("efficientnet_lite0", 128, freeze=0.7, n_classes=10)
    images = _images(128)
    name, _ = target_layer(tm)
    backbone = _backbone(tm)
    assert name == backbone.layers[-1].name  # 128 px: the last map is 4x4, the paper's choice
    x = tm.inference.get_layer("preprocess")(images)
    fmap = keras.ops.convert_to_numpy(backbone(x, training=False))
    kernel = keras.ops.convert_to_numpy(tm.head.get_layer("predictions").kernel)
    # per image, the class with the most evidence (so its map is not all zero)
    scores = fmap.mean(axis=(1, 2)) @ kernel
    classes = scores.argmax(axis=1)
    cam = grad_cam(tm, images, classes=classes)
    assert cam.grid == fmap.shape[1:3] == (4, 4)
    for i, c in enumerate(classes):
        raw = np.maximum(fmap[i] @ kernel[:, c], 0.0)
        assert raw.max() > 0
        up = keras.ops.convert_to_numpy(keras.ops.image.resize(
            raw[None, :, :, None], (128, 128), interpolation="bilinear"))[0, :, :, 0]
        np.testing.assert_allclose(cam.heatmaps[i], up / up.max(), atol=1e-4)


def test_small_inputs_use_the_deepest_block_with_enough_cells() -> None:
    """At 48 px Lite0's last map is 2x2; Grad-CAM moves to the deepest block boundary that has
    at least 4x4 cells (the 6x6 stride-8 stage), and the map still varies."""
    tm = _model("efficientnet_lite0", 48, freeze=1.0)
    cam = grad_cam(tm, _images(48))
    assert cam.layer == "block3b_add" and cam.grid == (6, 6)
    assert (cam.heatmaps.std(axis=(1, 2)) > 0.01).all()
    # min_side=1 keeps the last map, whatever its size
    assert grad_cam(tm, _images(48), min_side=1).grid == (2, 2)


def test_binary_models_explain_either_class() -> None:
    """One sigmoid unit: class 1's score is the logit z, class 0's is -z (opposite evidence)."""
    tm = _model("efficientnet_lite0", 128, freeze=1.0, n_classes=2)
    images = _images(128)
    one = grad_cam(tm, images, classes=np.array([1, 1]))
    zero = grad_cam(tm, images, classes=np.array([0, 0]))
    p = keras.ops.convert_to_numpy(tm.inference(images, training=False))[:, 0]
    np.testing.assert_allclose(one.probs, np.stack([1 - p, p], axis=1), rtol=1e-4, atol=1e-6)
    # where one map has evidence the other has none: the supports do not overlap
    assert (np.minimum(one.heatmaps, zero.heatmaps) < 1e-3).mean() > 0.5


def test_a_flat_map_says_so_on_its_tile_and_the_report_counts_it() -> None:
    """With the head's kernel zeroed every class scores its bias whatever the image: no cell
    raises it, so Grad-CAM's maps come out all zero (flat, as a giraffe's did in the embedded
    data). Beside real maps, a flat map's tile says so in its title and a box, and the
    report's Grad-CAM text gives how many maps are flat."""
    from automl.report.gradcam import flat_maps
    from automl.report.plots import gradcam_figure
    from automl.report.report import gradcam_text

    tm = _model("efficientnet_lite0", 128, freeze=1.0)
    images = _images(128)
    real = grad_cam(tm, images)
    dense = tm.head.get_layer("predictions")
    dense.kernel.assign(np.zeros(dense.kernel.shape, "float32"))
    zeroed = grad_cam(tm, images)
    assert not zeroed.heatmaps.any()
    order = [(real, 0), (zeroed, 0), (real, 1), (zeroed, 1)]
    heatmaps = np.stack([cam.heatmaps[i] for cam, i in order])
    flat = flat_maps(heatmaps)
    assert flat.tolist() == [False, True, False, True]

    fig = gradcam_figure(np.stack([images[i] for _, i in order]), heatmaps,
                         ["cat", "cat", "coffee", "coffee"], "Grad-CAM", flat=flat)
    maps = fig.axes[1::2]  # each tile: the image, then its map laid over it
    assert [ax.get_title() for ax in maps] == ["Grad-CAM", "Grad-CAM: flat map"] * 2
    assert [[t.get_text() for t in ax.texts] for ax in maps] == [
        [], ["flat map:\nno localised\nevidence"]] * 2

    assert gradcam_text(real, 128, flat) == (
        f"Heatmaps of the predicted class over the first test image of each class, from the "
        f"activation of layer '{real.layer}' (4x4 cells, input 128x128). A flat map (its values "
        "span less than 5% of the scale, e.g. all zero: no cell raises the class score) is "
        "marked on its tile; 2 here.")
    assert gradcam_text(real, 128, flat_maps(real.heatmaps)).endswith("marked on its tile.")
    assert gradcam_text(zeroed, 128, flat_maps(zeroed.heatmaps)).endswith("; 2 here.")
