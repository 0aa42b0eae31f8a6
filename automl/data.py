"""Every data source -> train / validation / test splits of RGB images with int labels.

Sources (``load_data(source)``):

* ``None``: the embedded default, Animal-MNIST (10 classes of 28x28 grayscale silhouettes).
* a folder with one sub-folder per class, or with ``train/`` + ``validation/`` (or ``val/``)
  [+ ``test/``] folders that each hold the same class sub-folders. Images (.jpg .jpeg .png .bmp
  .gif, any case) are found recursively in each class folder; hidden files and folders are
  ignored; files are streamed from disk, never all loaded at once;
* an ``.npz`` with ``x_train``/``y_train`` [+ ``x_val``/``y_val``, ``x_test``/``y_test``,
  ``class_names``] (see :func:`automl.data_sources.read_npz` for accepted dtypes: float images
  all within [0, 1] are scaled by 255, other floats are taken as 0..255);
* ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist`` via ``keras.datasets`` (an existing
  path of that name wins).

Splits a source does not provide are carved out of its training pool, stratified by class and
deterministic for a given seed: validation with ``val_split``, and, only when the source has no
validation split of its own, test with ``test_split`` (0 means no test split). A source that
brings its own validation split is used as given.

Files that cannot be decoded are skipped, reported by ONE ``DataWarning`` (a ``UserWarning``
issued with :func:`warnings.warn`) and listed in ``Datasets.skipped``. Every problem with the
input is raised as :class:`automl.errors.DataError`.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from automl.data_sources import (
    KERAS_DATASETS,
    Pool,
    RawData,
    load_rgb_image,
    pil_rgb,
    read_animal_mnist,
    read_directory,
    read_keras_dataset,
    read_npz,
    tf_decode,
)
from automl.errors import DataError

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["SPLITS", "DataWarning", "Datasets", "Split", "describe_source", "load_data",
           "load_rgb_image", "resize_images"]

SPLITS = ("train", "validation", "test")
DEFAULT_SOURCE = "animal-mnist (embedded default)"
_FINGERPRINT_VERSION = "automl-data-1"
_RESIZE_PIXELS = 1 << 22  # output pixels resized per chunk for in-memory arrays


class DataWarning(UserWarning):
    """Something in the data was left out (e.g. undecodable files); loading went on."""


def resize_images(images: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 [..., h, w, c] -> uint8 [..., size, size, c], exactly as training data is resized.

    float32, ``tf.image.resize(method="bilinear", antialias=False)``, ``tf.round`` (half to
    even), clip to 0..255, cast to uint8. An exported model must use the same steps.
    """
    import tensorflow as tf

    resized = tf.image.resize(tf.cast(images, tf.float32), (size, size), method="bilinear",
                              antialias=False)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


@dataclass(eq=False)
class Split:
    """One split: labels plus images held in memory (``array``) or as files (``paths``)."""

    name: str
    labels: np.ndarray
    array: np.ndarray | None = field(default=None, repr=False)    # uint8 (n, h, w, 1|3)
    paths: list[str] | None = field(default=None, repr=False)     # image files, label order
    use_pil: np.ndarray | None = field(default=None, repr=False)  # per file: decode with PIL
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.labels = np.ascontiguousarray(self.labels, dtype=np.int32)
        if (self.array is None) == (self.paths is None):
            raise ValueError("Split needs exactly one of array= or paths=")
        if len(self.array if self.array is not None else self.paths) != len(self.labels):
            raise ValueError("Split images and labels differ in length")
        if self.paths is not None and self.use_pil is None:
            self.use_pil = np.zeros(len(self.paths), bool)

    def __len__(self) -> int:
        return len(self.labels)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to a trial worker) without its resized-image caches: they are rebuilt."""
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    def cached_bytes(self) -> int:
        """Bytes held by the resized in-memory image tensors of this split."""
        return sum(int(t.shape.num_elements()) * t.dtype.size
                   for key, t in self._cache.items() if key[0] == "tensor")

    def drop_resized(self) -> None:
        """Let go of the resized in-memory images (resized again when next needed); a file
        split's decoded images stay in their disk cache."""
        if self.array is None:
            return
        for key in [k for k in self._cache if k[0] in ("tensor", "images")]:
            del self._cache[key]

    def images(self, size: int) -> tf.data.Dataset:
        """Unbatched uint8 [size, size, 3] RGB images in label order; decoded/resized once per size.

        In-memory arrays are resized into one cached tensor per size; files are streamed through
        a tf.data pipeline cached to a temporary file on disk (filled by the first complete
        pass), so a folder larger than memory never has to fit in it.
        """
        import tensorflow as tf

        size = _check_size(size)
        key = ("images", size)
        if key not in self._cache:
            if self.array is not None:
                self._cache[key] = tf.data.Dataset.from_tensor_slices(self._tensor(size))
            else:
                self._cache[key] = self._file_pipeline(size).cache(_disk_cache_file(size))
        return self._cache[key]

    def dataset(self, size: int, batch_size: int, *, shuffle: bool = False,
                seed: int = 0) -> tf.data.Dataset:
        """Batches of (float32 images 0..255, int32 labels), prefetched.

        With ``shuffle`` the order is reshuffled every epoch, reproducibly for a given seed.
        """
        import tensorflow as tf

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        n = len(self)
        if self.array is not None:  # shuffle indices and gather: no second copy of the images
            images, labels = self._tensor(_check_size(size)), tf.constant(self.labels)
            ds = tf.data.Dataset.range(n)
            if shuffle:
                ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)

            def gather(index):
                return tf.cast(tf.gather(images, index), tf.float32), tf.gather(labels, index)

            ds = ds.batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE)
        elif not shuffle:
            ds = tf.data.Dataset.zip(self.images(size),
                                     tf.data.Dataset.from_tensor_slices(self.labels))

            def to_float(image, label):
                return tf.cast(image, tf.float32), label

            ds = ds.batch(batch_size).map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
        else:  # shuffle the file order (cheap), then decode: only a few batches in memory
            order = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
            decode, labels = self._decode_index(size), tf.constant(self.labels)
            ds = order.map(lambda i: (tf.cast(decode(i), tf.float32), tf.gather(labels, i)),
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            ds = ds.batch(batch_size)
        return ds.prefetch(tf.data.AUTOTUNE)

    def _tensor(self, size: int) -> tf.Tensor:
        """The in-memory images resized to ``size`` as one uint8 RGB tensor (cached)."""
        import tensorflow as tf

        key = ("tensor", size)
        if key not in self._cache:
            step = max(1, _RESIZE_PIXELS // (size * size))
            chunks = [resize_images(self.array[i:i + step], size)
                      for i in range(0, len(self.array), step)]
            out = tf.concat(chunks, axis=0)
            self._cache[key] = tf.image.grayscale_to_rgb(out) if out.shape[-1] == 1 else out
        return self._cache[key]

    def _decode_index(self, size: int) -> Any:
        """A tf function: file index -> decoded, resized uint8 image."""
        import tensorflow as tf

        paths = tf.constant([os.fsencode(p) for p in self.paths])
        use_pil = tf.constant(self.use_pil)

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

    def _file_pipeline(self, size: int) -> tf.data.Dataset:
        """Decode and resize the files, in label order."""
        import tensorflow as tf

        paths = [os.fsencode(p) for p in self.paths]
        if not self.use_pil.any():
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

            ds = tf.data.Dataset.from_tensor_slices((paths, self.use_pil))
        return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _disk_cache_file(size: int) -> str:
    """A fresh file name in the temporary image-cache folder (removed at exit of the process
    that made the folder: the search process, when trials run in a worker)."""
    _DISK_CACHE_COUNT[0] += 1
    return os.path.join(image_cache_dir(), f"split{_DISK_CACHE_COUNT[0]}_{size}_{os.getpid()}")


def image_cache_dir(use: str | None = None) -> str:
    """The temporary folder for decoded images of folder data; made (and removed at exit) on
    first use, or ``use`` an existing one that another process removes (a trial worker: it may
    be killed, so the search process owns the folder)."""
    global _DISK_CACHE
    if use is not None:
        _DISK_CACHE = use
    if _DISK_CACHE is None:
        import atexit
        import shutil
        import tempfile

        _DISK_CACHE = tempfile.mkdtemp(prefix="automl-images-")
        atexit.register(shutil.rmtree, _DISK_CACHE, True)
    return _DISK_CACHE


_DISK_CACHE: str | None = None
_DISK_CACHE_COUNT = [0]


@dataclass
class Datasets:
    """The splits of one source; label i is ``class_names[i]``."""

    class_names: list[str]
    train: Split
    validation: Split
    test: Split | None
    source: str
    fingerprint: str
    skipped: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def cached_bytes(self) -> int:
        """Bytes held by the resized image tensors of all splits (a bounded cache: one per
        image size)."""
        return sum(s.cached_bytes() for s in self.splits().values())

    def drop_resized(self) -> None:
        """Let go of every split's resized in-memory images."""
        for split in self.splits().values():
            split.drop_resized()

    def splits(self) -> dict[str, Split]:
        """The present splits, in SPLITS order."""
        return {name: s for name in SPLITS if (s := getattr(self, name)) is not None}


def describe_source(source: str | os.PathLike | None) -> str:
    """A human description of ``source`` without loading anything."""
    if source is None:
        return DEFAULT_SOURCE
    text = os.fspath(source)
    if _keras_name(text) and not Path(text).expanduser().exists():
        return f"{_keras_name(text)} (keras.datasets)"
    return str(Path(text).expanduser()) if text.strip() else repr(text)


def load_data(source: str | os.PathLike | None, *, val_split: float = 0.15,
              test_split: float = 0.15, seed: int = 0) -> Datasets:
    """Load ``source`` (see the module docstring) into train / validation / [test] splits."""
    _check_fractions(val_split, test_split)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}.")
    raw = _read(source)
    pools = dict(raw.pools)
    carve: dict[str, float] = {}
    if "validation" not in pools:
        if val_split <= 0:
            raise DataError(f"val_split is {val_split} but {describe_source(source)} has no "
                            "validation split of its own; use a val_split between 0 and 1 "
                            "(e.g. 0.15).")
        carve["validation"] = float(val_split)
        if "test" not in pools and test_split > 0:
            carve["test"] = float(test_split)
    for pool in pools.values():
        _check_all_classes(pool, raw.class_names)
    indices: dict[str, tuple[str, np.ndarray | None]] = {name: (name, None) for name in pools}
    if carve:
        parts = _stratified(pools["train"], carve, int(seed), raw.class_names)
        indices.update({name: ("train", idx) for name, idx in parts.items()})
    splits = {name: _make_split(name, pools[pool], idx) for name, (pool, idx) in indices.items()}

    h = hashlib.blake2b(digest_size=8)
    for part in (_FINGERPRINT_VERSION, repr(raw.class_names), repr(sorted(carve.items())),
                 str(int(seed) if carve else "")):
        h.update(part.encode("utf-8", "surrogatepass") + b"\0")
    for name in sorted(indices):
        pool, idx = indices[name]
        h.update(f"{name}\0{pool}\0{pools[pool].digest}\0".encode())
        h.update(b"all" if idx is None else idx.astype(np.int64).tobytes())
    if raw.skipped:
        shown = ", ".join(f"'{p}'" for p in raw.skipped[:5])
        more = f" and {len(raw.skipped) - 5} more" if len(raw.skipped) > 5 else ""
        warnings.warn(f"Skipped {len(raw.skipped)} file(s) that could not be decoded as images: "
                      f"{shown}{more}.", DataWarning, stacklevel=2)
    return Datasets(list(raw.class_names), splits["train"], splits["validation"],
                    splits.get("test"), describe_source(source), h.hexdigest(),
                    list(raw.skipped))


# ------------------------------------------------------------------------------------ helpers

def _keras_name(text: str) -> str | None:
    name = text.strip().lower().replace("-", "_")
    return name if name in KERAS_DATASETS else None


def _read(source: str | os.PathLike | None) -> RawData:
    if source is None:
        return read_animal_mnist()
    text = os.fspath(source)
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"The data source {text!r} is empty; expected a folder, an .npz file or "
                        f"one of {', '.join(KERAS_DATASETS)}.")
    path = Path(text).expanduser()
    try:
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError) as exc:
        raise DataError(f"The data path '{text}' cannot be accessed ({exc}).") from exc
    if not exists:
        if _keras_name(text):
            return read_keras_dataset(_keras_name(text))
        raise DataError(f"The data path '{path}' does not exist; expected a folder of class "
                        "sub-folders, an .npz file, or one of "
                        f"{', '.join(KERAS_DATASETS)}.")
    if is_dir:
        return read_directory(path)
    if path.suffix.lower() == ".npz":
        return read_npz(path)
    raise DataError(f"The data path '{path}' is neither a directory nor an .npz file; expected a "
                    "folder of class sub-folders (or train/ and validation/ folders) or an .npz "
                    "with x_train and y_train.")


def _check_fractions(val_split: float, test_split: float) -> None:
    for name, value in (("val_split", val_split), ("test_split", test_split)):
        if isinstance(value, bool) or not isinstance(value, int | float | np.number) \
                or not 0 <= value < 1:
            raise DataError(f"{name} must be a fraction in [0, 1), got {value!r}.")
    if val_split + test_split >= 1:
        raise DataError(f"val_split + test_split must be below 1 to leave training images, got "
                        f"{val_split} + {test_split} = {val_split + test_split:g}.")


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"image size must be a positive integer, got {size!r}")
    return int(size)


def _check_all_classes(pool: Pool, class_names: list[str]) -> None:
    counts = np.bincount(pool.labels, minlength=len(class_names))
    empty = [class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        listed = ", ".join(f"'{n}'" for n in empty[:10]) + (" ..." if len(empty) > 10 else "")
        raise DataError(f"The split in {pool.where} has no images of class(es) {listed}; every "
                        "split needs at least one image of every class.")


def _stratified(pool: Pool, fractions: dict[str, float], seed: int,
                class_names: list[str]) -> dict[str, np.ndarray]:
    """Per class: shuffle with the seed, then take round(n * fraction) (at least 1) per split."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], **{name: [] for name in fractions}}
    for c, class_name in enumerate(class_names):
        members = rng.permutation(np.flatnonzero(pool.labels == c))
        n = len(members)
        if n < 1 + len(fractions):
            wanted = ", ".join(["train", *fractions])
            hint = " or set test_split=0" if "test" in fractions else ""
            raise DataError(f"Class '{class_name}' has only {n} image(s) in {pool.where}: too few "
                            f"to put at least one in each split ({wanted}). Add images to that "
                            f"class{hint}.")
        counts = {name: max(1, math.floor(n * f + 0.5)) for name, f in fractions.items()}
        while sum(counts.values()) > n - 1:  # leave at least one training image
            largest = max(counts, key=lambda s: counts[s])
            counts[largest] -= 1
        start = 0
        for name, count in counts.items():
            parts[name].append(members[start:start + count])
            start += count
        parts["train"].append(members[start:])
    return {name: np.sort(np.concatenate(p)) for name, p in parts.items()}


def _make_split(name: str, pool: Pool, idx: np.ndarray | None) -> Split:
    if idx is None:
        return Split(name, pool.labels, array=pool.array, paths=pool.paths, use_pil=pool.use_pil)
    if pool.array is not None:
        return Split(name, pool.labels[idx], array=pool.array[idx])
    return Split(name, pool.labels[idx], paths=[pool.paths[i] for i in idx],
                 use_pil=pool.use_pil[idx])
