"""Copies across splits without TensorFlow: grey thumbnails of every split, the near pairs
they give, and the test images that copy a training image (what ``automl search`` warns
about as it starts; ``automl inspect`` lists the pairs from the same thumbnails).

Array images (the embedded data, ``.npz``, Keras datasets) are in memory already; image files
are decoded with PIL (:func:`automl.data.sources.pil_rgb`, whole: decoding a JPEG at a reduced
scale saved half the time but missed 4-7 of 20 resized copies). Opened for its size, decoded
and embedded, a file took 0.12-0.17 ms as a 28 px PNG, 6 ms as a 640x480 JPEG and 11 ms as a
640x480 PNG on a busy 2-core machine; a folder of the embedded data (7,000 / 1,500 / 1,500 PNG
files) 1.4-2.1 s. So the search checks folder data for near copies only up to
``NEAR_FILES_MAX`` train + test files holding ``NEAR_PIXELS_MAX`` pixels (about 2 s at most);
``automl inspect`` always does. Loading a folder decodes every file already, but with
TensorFlow, JPEGs at 1/8 scale, and keeps only their shapes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image

from automl.data.sources import pil_rgb
from automl.data.splits import Datasets, Split
from automl.trust import leakage

__all__ = ["NEAR_FILES_MAX", "NEAR_PIXELS_MAX", "Leaks", "count_leaks", "near_pairs",
           "thumbnails"]

NEAR_FILES_MAX = 10_000        # train + test image files the search decodes, at most
NEAR_PIXELS_MAX = 100_000_000  # and their pixels: 325 640x480 images, 2 s as JPEGs


@dataclass(frozen=True)
class Leaks:
    """Test images with a copy in train: ``exact`` byte-identical to a training image,
    ``near`` not byte-identical but with a training image whose grey thumbnail reaches
    ``leakage.THUMBNAIL_THRESHOLD`` (resized, re-encoded); ``near`` is None when not checked
    (more than ``NEAR_FILES_MAX`` image files)."""

    images: int
    exact: int
    near: int | None

    @property
    def copies(self) -> int:
        """Test images with a copy in train, exact or near."""
        return self.exact + (self.near or 0)


def thumbnails(data: Datasets, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Grey thumbnail embeddings (:func:`automl.trust.leakage.thumbnail_embedding`) of the
    splits ``names`` (default: all), at the side :func:`automl.trust.leakage.thumbnail_side`
    picks from the images of every split (so any subset embeds as the whole does)."""
    sizes = {name: _sizes(split) for name, split in data.splits().items()}
    return _thumbnails(data, sizes, list(sizes) if names is None else list(names))


def near_pairs(thumbs: dict[str, np.ndarray],
               pairs: Iterable[tuple[str, str]] | None = None,
               max_per_image: int = 5) -> pd.DataFrame:
    """Near-duplicate pairs across splits by thumbnail cosine >= ``THUMBNAIL_THRESHOLD``
    (:func:`automl.trust.leakage.near_duplicates`: its columns, its order)."""
    return leakage.near_duplicates(thumbs, threshold=leakage.THUMBNAIL_THRESHOLD, pairs=pairs,
                                   max_per_image=max_per_image)


def count_leaks(data: Datasets, max_files: int = NEAR_FILES_MAX,
                max_pixels: int = NEAR_PIXELS_MAX) -> Leaks | None:
    """How many test images copy a training image, exactly (content hashes) or nearly
    (thumbnails; not checked when train + test hold more than ``max_files`` image files or
    ``max_pixels`` pixels in them). None without a test split."""
    if data.test is None:
        return None
    train, test = data.train, data.test
    exact = np.zeros(len(test), bool)
    if train.hashes is not None and test.hashes is not None:
        exact = np.isin(test.hashes, train.hashes)
    files = [s.name for s in (train, test) if s.paths is not None]
    if sum(len(data.splits()[name]) for name in files) > max_files:
        return Leaks(len(test), int(exact.sum()), None)
    sizes = {name: _sizes(split) for name, split in data.splits().items()}
    if sum(int(np.prod(sizes[name], axis=1).sum()) for name in files) > max_pixels:
        return Leaks(len(test), int(exact.sum()), None)
    found = near_pairs(_thumbnails(data, sizes, ["train", "test"]), [("train", "test")], 1)
    near = np.zeros(len(test), bool)
    near[found["index_b"].to_numpy()] = True
    return Leaks(len(test), int(exact.sum()), int((near & ~exact).sum()))


def _thumbnails(data: Datasets, sizes: dict[str, np.ndarray],
                names: list[str]) -> dict[str, np.ndarray]:
    size = leakage.thumbnail_side(int(wh.min()) for wh in sizes.values())
    splits = data.splits()
    return {name: _embed(splits[name], size) for name in names}


def _sizes(split: Split) -> np.ndarray:
    """(n, 2) width and height of each file (its header only), or of an array's images (one
    row: they share a size)."""
    if split.array is not None:
        return np.array([[split.array.shape[2], split.array.shape[1]]])
    sizes = []
    for path in split.paths or []:
        with Image.open(path) as image:  # reads the header only
            sizes.append(image.size)
    return np.array(sizes, dtype=np.int64).reshape(-1, 2)


def _embed(split: Split, size: int) -> np.ndarray:
    if split.array is not None:
        return leakage.thumbnail_embedding(split.array, size)
    return np.concatenate([leakage.thumbnail_embedding(pil_rgb(path)[None], size)
                           for path in split.paths or []])
