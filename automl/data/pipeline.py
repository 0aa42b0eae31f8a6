"""TensorFlow input pipelines over a :class:`~automl.data.splits.Split` (the trial worker's side).

Images are decoded and resized once per size: in-memory arrays into one cached uint8 tensor,
files through a tf.data pipeline cached to a temporary file on disk.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from automl.data.images import resize_images, tf_decode
from automl.data.sources import pil_rgb
from automl.data.splits import Split, check_size, image_cache_dir

if TYPE_CHECKING:
    import tensorflow as tf

_RESIZE_PIXELS = 1 << 22  # output pixels resized per chunk for in-memory arrays


def images(split: Split, size: int) -> tf.data.Dataset:
    """Unbatched uint8 [size, size, 3] RGB images in label order; decoded/resized once per size.

    In-memory arrays are resized into one cached tensor per size; files are streamed through
    a tf.data pipeline cached to a temporary file on disk (filled by the first complete
    pass), so a folder larger than memory never has to fit in it.
    """
    import tensorflow as tf

    size = check_size(size)
    key = ("images", size)
    if key not in split._cache:
        if split.array is not None:
            split._cache[key] = tf.data.Dataset.from_tensor_slices(resized_tensor(split, size))
        else:
            split._cache[key] = _file_pipeline(split, size).cache(_disk_cache_file(size))
    return split._cache[key]

def dataset(split: Split, size: int, batch_size: int, *, shuffle: bool = False,
            seed: int = 0) -> tf.data.Dataset:
    """Batches of (float32 images 0..255, int32 labels), prefetched.

    With ``shuffle`` the order is reshuffled every epoch, reproducibly for a given seed.
    """
    import tensorflow as tf

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(split)
    if split.array is not None:  # shuffle indices and gather: no second copy of the images
        images, labels = resized_tensor(split, check_size(size)), tf.constant(split.labels)
        ds = tf.data.Dataset.range(n)
        if shuffle:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)

        def gather(index):
            return tf.cast(tf.gather(images, index), tf.float32), tf.gather(labels, index)

        ds = ds.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
    elif not shuffle:
        ds = tf.data.Dataset.zip(images(split, size),
                                 tf.data.Dataset.from_tensor_slices(split.labels))

        def to_float(image, label):
            return tf.cast(image, tf.float32), label

        ds = ds.batch(batch_size).map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    else:  # shuffle the file order (cheap), then decode: only a few batches in memory
        order = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
        decode, labels = _decode_index(split, size), tf.constant(split.labels)
        ds = order.map(lambda i: (tf.cast(decode(i), tf.float32), tf.gather(labels, i)),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size)
    return ds.prefetch(tf.data.AUTOTUNE)

def resized_tensor(split: Split, size: int) -> tf.Tensor:
    """The in-memory images resized to ``size`` as one uint8 RGB tensor (cached)."""
    import tensorflow as tf

    key = ("tensor", size)
    if key not in split._cache:
        step = max(1, _RESIZE_PIXELS // (size * size))
        chunks = [resize_images(split.array[i:i + step], size)
                  for i in range(0, len(split.array), step)]
        out = tf.concat(chunks, axis=0)
        split._cache[key] = tf.image.grayscale_to_rgb(out) if out.shape[-1] == 1 else out
    return split._cache[key]

def _decode_index(split: Split, size: int) -> Any:
    """A tf function: file index -> decoded, resized uint8 image."""
    import tensorflow as tf

    paths = tf.constant([os.fsencode(p) for p in split.paths])
    use_pil = tf.constant(split.use_pil)

    def decode(index: tf.Tensor) -> tf.Tensor:
        path = tf.gather(paths, index)

        def by_pil() -> tf.Tensor:
            image = tf.numpy_function(lambda p: pil_rgb(os.fsdecode(p)), [path], tf.uint8)
            image.set_shape([None, None, 3])
            return image

        image = tf.cond(tf.gather(use_pil, index), by_pil,
                        lambda: tf_decode(tf.io.read_file(path)))
        return resize_images(image, size)

    return decode

def _file_pipeline(split: Split, size: int) -> tf.data.Dataset:
    """Decode and resize the files, in label order."""
    import tensorflow as tf

    paths = [os.fsencode(p) for p in split.paths]
    if not split.use_pil.any():
        def decode(path):
            return resize_images(tf_decode(tf.io.read_file(path)), size)

        ds = tf.data.Dataset.from_tensor_slices(paths)
    else:
        def decode_pil(path):
            image = tf.numpy_function(lambda p: pil_rgb(os.fsdecode(p)), [path], tf.uint8)
            image.set_shape([None, None, 3])
            return image

        def decode(path, use_pil):
            image = tf.cond(use_pil, lambda: decode_pil(path),
                            lambda: tf_decode(tf.io.read_file(path)))
            return resize_images(image, size)

        ds = tf.data.Dataset.from_tensor_slices((paths, split.use_pil))
    return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _disk_cache_file(size: int) -> str:
    """A fresh file name in the temporary image-cache folder (removed at exit of the process
    that made the folder: the search process, when trials run in a worker)."""
    _DISK_CACHE_COUNT[0] += 1
    return os.path.join(image_cache_dir(), f"split{_DISK_CACHE_COUNT[0]}_{size}_{os.getpid()}")


_DISK_CACHE_COUNT = [0]
