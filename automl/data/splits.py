"""Train / validation / test splits of labelled images, without TensorFlow.

The search process holds these (to fingerprint the data and describe it); the trial worker
turns them into tf.data pipelines with :mod:`automl.data.pipeline`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SPLITS = ("train", "validation", "test")


@dataclass(eq=False)
class Split:
    """One split: labels plus images held in memory (``array``) or as files (``paths``)."""

    name: str
    labels: np.ndarray
    array: np.ndarray | None = field(default=None, repr=False)    # uint8 (n, h, w, 1|3)
    paths: list[str] | None = field(default=None, repr=False)     # image files, label order
    use_pil: np.ndarray | None = field(default=None, repr=False)  # per file: decode with PIL
    # where each image came from: its position in the array the source gave (``origin``, e.g.
    # "x_train"), before any split was carved; and its content hash (equal: byte-identical)
    index: np.ndarray | None = field(default=None, repr=False)
    origin: str = ""
    hashes: np.ndarray | None = field(default=None, repr=False)
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

    def source_names(self) -> list[str]:
        """Each image as the user knows it: its file, or ``<origin>[<index>]`` into the array
        the source gave (``x_train[123]``, ``animal_mnist[42]``)."""
        if self.paths is not None:
            return list(self.paths)
        index = self.index if self.index is not None else np.arange(len(self))
        return [f"{self.origin}[{i}]" for i in np.asarray(index).tolist()]

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
    carved: list[str] = field(default_factory=list)  # splits automl carved out of train's pool

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

    def test_twins(self) -> int:
        """How many test images are byte-identical to a training image (0 without a test
        split or content hashes)."""
        if self.test is None or self.test.hashes is None or self.train.hashes is None:
            return 0
        return int(np.isin(self.test.hashes, self.train.hashes).sum())


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


def check_size(size: int) -> int:
    """An image size as a positive int; ValueError otherwise."""
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"image size must be a positive integer, got {size!r}")
    return int(size)
