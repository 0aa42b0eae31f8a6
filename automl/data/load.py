"""Every data source -> train / validation / test splits of RGB images with int labels.

Sources (``load_data(source)``):

* ``None``: the embedded default, Animal-MNIST (10 classes of 28x28 grayscale silhouettes).
* a folder with one sub-folder per class, or with ``train/`` + ``validation/`` (or ``val/``)
  [+ ``test/``] folders that each hold the same class sub-folders. Images (.jpg .jpeg .png .bmp
  .gif, any case) are found recursively in each class folder; hidden files and folders are
  ignored; files are streamed from disk, never all loaded at once;
* an ``.npz`` with ``x_train``/``y_train`` [+ ``x_val``/``y_val``, ``x_test``/``y_test``,
  ``class_names``] (see :func:`automl.data.sources.read_npz` for accepted dtypes: float images
  all within [0, 1] are scaled by 255, other floats are taken as 0..255);
* ``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist`` via ``keras.datasets`` (an existing
  path of that name wins).

Splits a source does not provide are carved out of its training pool, stratified by class and
deterministic for a given seed: validation with ``val_split``, and, only when the source has no
validation split of its own, test with ``test_split`` (0 means no test split). The carve is
grouped by content hash (:func:`automl.trust.split.grouped_stratified`): byte-identical images
always land in the same split, so a test image never has an exact twin in train that automl
put there. A source that brings its own validation split is used as given (checked, never
changed: see ``Datasets.test_twins`` and ``automl inspect``).

Every split keeps, per image, its position in the array or listing the source gave (before any
carving) and its content hash (``Split.index``, ``Split.hashes``).

Files that cannot be decoded are skipped, reported by ONE ``DataWarning`` (a ``UserWarning``
issued with :func:`warnings.warn`) and listed in ``Datasets.skipped``. Every problem with the
input is raised as :class:`automl.errors.DataError`.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from automl.data.sources import (
    KERAS_DATASETS,
    Pool,
    RawData,
    read_animal_mnist,
    read_directory,
    read_npz,
)
from automl.data.splits import Datasets, Split
from automl.errors import DataError
from automl.trust.split import group_ids, grouped_stratified

__all__ = ["DataWarning", "describe_source", "load_data"]

DEFAULT_SOURCE = "animal-mnist (embedded default)"
_FINGERPRINT_VERSION = "automl-data-1"
_RESIZE_PIXELS = 1 << 22  # output pixels resized per chunk for in-memory arrays


class DataWarning(UserWarning):
    """Something in the data was left out (e.g. undecodable files); loading went on."""


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
    hashes = {name: pool.content_hashes() for name, pool in pools.items()}
    indices: dict[str, tuple[str, np.ndarray | None]] = {name: (name, None) for name in pools}
    if carve:
        train = pools["train"]
        parts = grouped_stratified(train.labels, group_ids(hashes["train"].tolist()), carve,
                                   int(seed), raw.class_names, where=train.where)
        indices.update({name: ("train", idx) for name, idx in parts.items()})
    splits = {name: _make_split(name, pools[pool], idx, hashes[pool])
              for name, (pool, idx) in indices.items()}

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
                    list(raw.skipped), list(carve))


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
            from automl.data.keras_datasets import read_keras_dataset

            return read_keras_dataset(_keras_name(text))
        raise DataError(f"The data path '{path}' does not exist; expected a folder of class "
                        "sub-folders, an .npz file, or one of "
                        f"{', '.join(KERAS_DATASETS)}.")
    if is_dir:
        from automl.data.images import check_image_files  # decodes as the pipelines will

        return read_directory(path, check_image_files)
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


def _check_all_classes(pool: Pool, class_names: list[str]) -> None:
    counts = np.bincount(pool.labels, minlength=len(class_names))
    empty = [class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        listed = ", ".join(f"'{n}'" for n in empty[:10]) + (" ..." if len(empty) > 10 else "")
        raise DataError(f"The split in {pool.where} has no images of class(es) {listed}; every "
                        "split needs at least one image of every class.")


def _make_split(name: str, pool: Pool, idx: np.ndarray | None, hashes: np.ndarray) -> Split:
    """The split ``name`` of the images of ``pool`` at ``idx`` (all of them: None)."""
    index = np.arange(len(pool.labels)) if idx is None else np.asarray(idx, np.int64)
    where = {"index": index, "origin": pool.origin, "hashes": hashes[index]}
    if idx is None:
        return Split(name, pool.labels, array=pool.array, paths=pool.paths, use_pil=pool.use_pil,
                     **where)
    if pool.array is not None:
        return Split(name, pool.labels[idx], array=pool.array[idx], **where)
    return Split(name, pool.labels[idx], paths=[pool.paths[i] for i in idx],
                 use_pil=pool.use_pil[idx], **where)
