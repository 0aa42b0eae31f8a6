"""Decoding and resizing with TensorFlow, exactly as the input pipelines and exports do."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from automl.data.sources import _needs_pil, _pil_ok, pil_rgb
from automl.errors import DataError

if TYPE_CHECKING:
    import tensorflow as tf


def resize_images(images: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 [..., h, w, c] -> uint8 [..., size, size, c], exactly as training data is resized.

    float32, ``tf.image.resize(method="bilinear", antialias=False)``, ``tf.round`` (half to
    even), clip to 0..255, cast to uint8. An exported model must use the same steps.
    """
    import tensorflow as tf

    resized = tf.image.resize(tf.cast(images, tf.float32), (size, size), method="bilinear",
                              antialias=False)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def load_rgb_image(path: str | os.PathLike) -> np.ndarray:
    """One image file as uint8 HxWx3 RGB, decoded exactly as the training pipelines decode it."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as fh:
            contents = fh.read()
    except OSError as exc:
        raise DataError(f"Image '{p}' cannot be read ({exc}).") from exc
    if contents and not _needs_pil(contents[:32]):
        try:
            import tensorflow as tf

            return tf_decode(tf.constant(contents)).numpy()
        except Exception:
            pass  # PIL below reads what TensorFlow cannot
    try:
        return pil_rgb(p)
    except Exception as exc:
        raise DataError(f"Image '{p}' cannot be decoded ({type(exc).__name__}: {exc}); expected "
                        "a JPEG, PNG, BMP or GIF file.") from exc


def tf_decode(contents):
    """TensorFlow decode used by the input pipelines: uint8 HxWx3, first frame of a GIF."""
    import tensorflow as tf

    image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def check_image_files(paths: list[str]) -> tuple[list[bool], list[bool]]:
    """Which files decode (all of them are decoded once, in parallel), and which need PIL.

    TensorFlow does the decoding that the pipelines will do (JPEGs at 1/8 scale, which still
    reads all their data, so truncation is caught); files TensorFlow rejects get a second
    chance with PIL.
    """
    import tensorflow as tf

    ok, use_pil = [True] * len(paths), [False] * len(paths)
    for i, p in enumerate(paths):
        try:
            with open(p, "rb") as fh:
                header = fh.read(32)
        except OSError:
            header = b""
        if not header:
            ok[i] = False
        elif _needs_pil(header):
            use_pil[i] = True
            ok[i] = _pil_ok(p)
    todo = [i for i in range(len(paths)) if ok[i] and not use_pil[i]]
    if not todo:
        return ok, use_pil

    def probe(index, path):
        contents = tf.io.read_file(path)
        shape = tf.cond(tf.io.is_jpeg(contents),
                        lambda: tf.shape(tf.io.decode_jpeg(contents, channels=3, ratio=8)),
                        lambda: tf.shape(tf_decode(contents)))
        return index, shape

    ds = tf.data.Dataset.from_tensor_slices((np.asarray(todo, np.int64),
                                             [os.fsencode(paths[i]) for i in todo]))
    ds = ds.map(probe, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    decoded = {int(i) for i, _ in ds.as_numpy_iterator()}
    for i in todo:
        if i not in decoded:
            ok[i] = _pil_ok(paths[i])
            use_pil[i] = ok[i]
    return ok, use_pil
