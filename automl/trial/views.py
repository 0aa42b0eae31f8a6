"""Augmented views of the training images, for caching their frozen activations.

A cached view is one random draw of an augmentation policy per training image, made once and
run through the frozen part once; training then draws one view per image per epoch
(:class:`automl.trial.train.ArrayFeed`). The draws follow the distributions of the policy's
Keras layers (:func:`automl.trial.layers.augmentation_layers`, which live augmentation uses):

* ``flip``: exactly two views, the images as they are and mirrored (what ``RandomFlip`` draws
  between), so cached flip is exact;
* ``light``/``heavy``: a horizontal flip with probability 1/2, then a rotation about the centre,
  a zoom and a shift with the layers' ranges, composed into ONE affine map per image and
  resampled once (bilinear, borders extended with the nearest pixel as ``fill_mode="nearest"``);
  ``heavy`` then scales each image's contrast about its per-channel mean as ``RandomContrast``.
  The Keras layers resample once per layer (three times: a little more blur, and each layer's
  border fill compounds); measured on 96-px images, the three warps cost 2.5 ms per image on
  this project's CPU, the one composed warp 1.0 ms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import tensorflow as tf

#: (rotation as a share of a full turn, zoom, shift as a share of the side, contrast)
POLICIES = {"light": (0.1 / 2, 0.1, 0.1, 0.0), "heavy": (30 / 360, 0.2, 0.1, 0.2)}


def view_augmentation(policy: str, seed: int, view: int) -> Callable[[Any], Any]:
    """The augmentation of cached view ``view`` of ``policy``: float [b, h, w, 3] -> same.

    ``flip`` view 1 mirrors every image (view 0 is the images as they are); ``light``/``heavy``
    view v draws every image's transform from a generator seeded by (seed, v), so a view is the
    same whenever it is made again.
    """
    if policy == "flip":
        return lambda x: tf.reverse(x, axis=[2])
    if policy not in POLICIES:
        raise ValueError(f"no cached views for augmentation {policy!r}")
    rotation, zoom, shift, contrast = POLICIES[policy]
    generator = tf.random.Generator.from_seed(seed * 1_000_003 + view)

    def apply(x: Any) -> Any:
        n = tf.shape(x)[0]
        h, w = tf.shape(x)[1], tf.shape(x)[2]
        flip = tf.cast(generator.uniform([n]) < 0.5, tf.float32)
        angle = generator.uniform([n], -rotation, rotation) * 2.0 * math.pi
        scale = 1.0 + generator.uniform([n], -zoom, zoom)
        dx = generator.uniform([n], -shift, shift) * tf.cast(w, tf.float32)
        dy = generator.uniform([n], -shift, shift) * tf.cast(h, tf.float32)
        out = warp(x, affine_maps(h, w, flip, angle, scale, dx, dy))
        if contrast:
            factor = generator.uniform([n, 1, 1, 1], 1.0 - contrast, 1.0 + contrast)
            mean = tf.reduce_mean(out, axis=[1, 2], keepdims=True)
            out = tf.clip_by_value((out - mean) * factor + mean, 0.0, 255.0)
        return out

    return apply


def affine_maps(h: Any, w: Any, flip: Any, angle: Any, scale: Any, dx: Any, dy: Any) -> Any:
    """Per image, the 3x3 map from output pixel (x, y, 1) to the input pixel it samples.

    The layers apply flip, rotation, zoom, shift in turn, so the output samples
    ``flip(rotate(zoom(shift(p))))``: the product of their inverse maps in that order.
    """
    cx, cy = (tf.cast(w, tf.float32) - 1.0) / 2.0, (tf.cast(h, tf.float32) - 1.0) / 2.0
    one, zero = tf.ones_like(angle), tf.zeros_like(angle)

    def mat(*rows: Any) -> Any:
        return tf.stack([tf.stack(list(r), axis=-1) for r in rows], axis=-2)

    mirror = 1.0 - 2.0 * flip
    flip_m = mat((mirror, zero, flip * 2.0 * cx), (zero, one, zero), (zero, zero, one))
    cos, sin = tf.cos(angle), tf.sin(angle)
    rot_m = mat((cos, -sin, cx - cos * cx + sin * cy), (sin, cos, cy - sin * cx - cos * cy),
                (zero, zero, one))
    zoom_m = mat((scale, zero, cx - scale * cx), (zero, scale, cy - scale * cy),
                 (zero, zero, one))
    shift_m = mat((one, zero, -dx), (zero, one, -dy), (zero, zero, one))
    return flip_m @ rot_m @ zoom_m @ shift_m


def warp(images: Any, maps: Any) -> Any:
    """Resample each image at its map's source points: bilinear, borders extended with the
    nearest pixel (TensorFlow's projective-transform kernel, as the Keras layers use)."""
    transforms = tf.reshape(maps, [-1, 9])[:, :8] / maps[:, 2:3, 2]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")
