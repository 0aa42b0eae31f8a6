"""Grad-CAM class-activation heatmaps for a trained transfer model, any backbone family.

Grad-CAM (Selvaraju et al., 2017) weights each channel of a convolutional feature map by the
spatial mean of the gradient of a class's score (the logit, before softmax) with respect to it,
sums the channels and keeps the positive part: where the map says "this class".

The feature map is the backbone's last spatial activation, before global pooling, when it has at
least ``MIN_SIDE`` cells a side; at small input sizes (e.g. 48 px, whose last map is 2x2) the
deepest block boundary of the backbone that still has that resolution is used instead, so the
heatmap shows where, not just a uniform blob. The model is the trial's own ``TransferModel``:
the same preprocessing, backbone layers (shared by its ``bottom``/``top`` sub-models) and head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from automl.trial.model import TransferModel

MIN_SIDE = 4  # cells a side the heatmap's feature map should have
FLAT = 0.05   # a map whose values span less than this (of 0..1) localises nothing


@dataclass(frozen=True)
class GradCam:
    """Heatmaps of a batch: ``heatmaps[i]`` is image i's map for class ``classes[i]``."""

    heatmaps: np.ndarray   # float32 [n, height, width] in 0..1 (1 = the most evidence)
    classes: np.ndarray    # int [n]: the class each map explains
    probs: np.ndarray      # float32 [n, n_classes]: the model's probabilities
    layer: str             # the backbone layer whose activation was used
    grid: tuple[int, int]  # that activation's spatial size


def flat_maps(heatmaps: np.ndarray, spread: float = FLAT) -> np.ndarray:
    """Per map: True when it is (nearly) uniform, e.g. all zero after the ReLU, so it shows no
    place the class evidence comes from.

    >>> flat_maps(np.stack([np.zeros((4, 4)), np.eye(4)])).tolist()
    [True, False]
    """
    maps = np.asarray(heatmaps, dtype=np.float64).reshape(len(heatmaps), -1)
    return (maps.max(axis=1) - maps.min(axis=1)) < spread


def _backbone(tm: TransferModel) -> Any:
    """The whole backbone (input -> output) as one functional model over the shared layers.

    ``top`` is a model over a cloned input (Keras clones a graph that starts mid-way), so the
    backbone's original output is taken from its last layer's first (original) call.
    """
    import keras

    last = (tm.top if tm.top is not None else tm.bottom).layers[-1]
    return keras.Model(tm.bottom.inputs[0], last.output, name="backbone")


def target_layer(tm: TransferModel, min_side: int = MIN_SIDE) -> tuple[str, Any]:
    """(layer name, its symbolic output): the activation Grad-CAM differentiates against.

    Candidates are the backbone's block boundaries (its registry pattern, as for freeze cuts)
    and its last layer; the deepest one with at least ``min_side`` cells a side wins.
    """
    import re

    backbone = _backbone(tm)
    pattern = re.compile(tm.spec.block_pattern)
    ops = [op for op in backbone.operations if len(getattr(op, "output", ()).shape or ()) == 4]
    if not ops:
        raise ValueError(f"{tm.spec.name} has no spatial activation to explain")
    last = ops[-1]
    candidates = [op for op in ops if pattern.search(op.name) or op is last]

    def side(op: Any) -> int:
        return min(int(op.output.shape[1]), int(op.output.shape[2]))

    big = [op for op in candidates if side(op) >= min_side]
    chosen = big[-1] if big else max(reversed(candidates), key=side)
    return chosen.name, chosen.output


def _logits(tm: TransferModel, pooled: Any) -> Any:
    """The head's class scores before the final softmax ([n, n_classes]; binary: [-z, z])."""
    import keras
    from keras import ops

    x = pooled
    dense = tm.head.get_layer("predictions")
    for layer in tm.head.layers:
        if isinstance(layer, keras.layers.InputLayer) or layer is dense:
            continue
        x = layer(x, training=False)
    z = ops.matmul(x, dense.kernel) + dense.bias
    return ops.concatenate([-z, z], axis=-1) if tm.binary else z


def grad_cam(tm: TransferModel, images: np.ndarray, classes: np.ndarray | None = None,
             min_side: int = MIN_SIDE) -> GradCam:
    """Grad-CAM heatmaps of ``images`` (uint8/float RGB 0..255 at the model's input size).

    ``classes`` (default: each image's predicted class) says which class each map explains.
    """
    import keras
    import tensorflow as tf

    name, tensor = target_layer(tm, min_side)
    backbone = _backbone(tm)
    probe = keras.Model(backbone.inputs[0], [tensor, backbone.outputs[0]], name="gradcam")
    preprocess = tm.inference.get_layer("preprocess")
    pool = tm.inference.get_layer("avg_pool")
    x = tf.convert_to_tensor(np.asarray(images), tf.float32)
    with tf.GradientTape() as tape:
        fmap, out = probe(preprocess(x), training=False)
        pooled = pool(out)
        logits = _logits(tm, pooled)
        probs = tm.head(pooled, training=False)
        if tm.binary:
            probs = tf.concat([1.0 - probs, probs], axis=-1)
        chosen = (tf.argmax(logits, axis=-1, output_type=tf.int32) if classes is None
                  else tf.constant(np.asarray(classes), tf.int32))
        score = tf.reduce_sum(tf.gather(logits, chosen, axis=1, batch_dims=1))
    grads = tape.gradient(score, fmap)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1))[..., None]
    cam = tf.image.resize(cam, x.shape[1:3], method="bilinear")[..., 0].numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1)
    cam = cam / np.where(peak > 0, peak, 1.0)[:, None, None]
    return GradCam(cam.astype(np.float32), chosen.numpy(), probs.numpy().astype(np.float32),
                   name, (int(fmap.shape[1]), int(fmap.shape[2])))
