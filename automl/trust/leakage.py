"""Leakage between splits: exact duplicates by content hash, near-duplicates by cosine
similarity of an embedding (cached pooled activations), computed in chunks.

``DEFAULT_THRESHOLD`` (0.97) comes from Lite0 96 px pooled activations of the embedded data:
byte-identical pairs score 1.0, and no test image without a byte-identical training twin has a
training neighbour above 0.963 (99.9th percentile 0.962), so 0.97 reports no pair that is not
a copy there. Resized and re-encoded copies of its 28 px silhouettes score only 0.79-0.93 with
their source (below the median nearest unrelated neighbour, 0.88), so pooled activations do not
find them on that data at any threshold; :func:`thumbnail_embedding` does better there.

``THUMBNAIL_THRESHOLD`` (0.985) is for grey thumbnails at the data's smallest image side (at
most ``THUMBNAIL_MAX``, :func:`thumbnail_side`): a copy holds no more detail than its source,
and at the source's native size a box filter averages an upscaled copy back onto it. Resized
(42-84 px) JPEG copies of the embedded data's silhouettes score 0.985-0.998 with their source
there, and unrelated images rarely reach 0.985 (``benchmarks/leakage.py``, README).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["DEFAULT_THRESHOLD", "PAIR_COLUMNS", "THUMBNAIL_MAX", "THUMBNAIL_THRESHOLD",
           "content_hash", "exact_duplicates", "find_duplicates", "near_duplicates",
           "pair_counts", "thumbnail_embedding", "thumbnail_side"]

DEFAULT_THRESHOLD = 0.97
THUMBNAIL_THRESHOLD = 0.985  # grey thumbnails at the data's size: resized/JPEG copies reach it
THUMBNAIL_MAX = 32           # thumbnail side: the data's smallest image side, at most this
PAIR_COLUMNS = ["index_a", "split_a", "index_b", "split_b", "cosine", "exact"]


def content_hash(item: bytes | np.ndarray) -> str:
    """A hex digest of an image's bytes (a file's contents) or of an array (shape, dtype, data).

    >>> content_hash(np.zeros((2, 2), np.uint8)) == content_hash(np.zeros((2, 2), np.uint8))
    True
    >>> content_hash(np.zeros((2, 2), np.uint8)) == content_hash(np.zeros((4,), np.uint8))
    False
    """
    h = hashlib.blake2b(digest_size=16)
    if isinstance(item, np.ndarray):
        a = np.ascontiguousarray(item)
        h.update(f"{a.shape}{a.dtype.str}".encode())
        h.update(a.tobytes())
    else:
        h.update(bytes(item))
    return h.hexdigest()


def exact_duplicates(hashes: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Pairs of images with the same hash, per split in ``hashes`` (name -> one hash per image).

    Each copy is paired with the first image of its hash in split order (the mapping's order,
    then index), so a test image with a training twin pairs with that training image and n
    copies make n - 1 pairs. Columns :data:`PAIR_COLUMNS` (``cosine`` 1.0, ``exact`` True).
    """
    first: dict[str, tuple[str, int]] = {}
    rows = []
    for split, values in hashes.items():
        for i, value in enumerate(values):
            if value in first:
                rows.append((*_swap(first[value]), i, split, 1.0, True))
            else:
                first[value] = (split, i)
    return _frame(rows)


def near_duplicates(features: Mapping[str, np.ndarray], *,
                    threshold: float = DEFAULT_THRESHOLD,
                    pairs: Iterable[tuple[str, str]] | None = None,
                    max_per_image: int = 5, chunk: int = 1024) -> pd.DataFrame:
    """Pairs across splits whose embeddings' cosine similarity is at least ``threshold``.

    ``features``: split name -> (n, d) embeddings; ``pairs``: (split_a, split_b) to compare,
    by default every pair of distinct splits in mapping order (train-validation, train-test,
    validation-test). Each image of ``split_b`` keeps its ``max_per_image`` most similar images
    of ``split_a``. Memory is ``chunk`` x len(split_a) similarities at a time. Columns
    :data:`PAIR_COLUMNS` (``exact`` False: see :func:`find_duplicates`), sorted by split pair
    then most similar first.
    """
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a cosine in [-1, 1], got {threshold!r}")
    names = list(features)
    todo = list(pairs) if pairs is not None else [
        (a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    unit = {name: _unit(f) for name, f in features.items()}
    rows = []
    for split_a, split_b in todo:
        a, b = unit[split_a], unit[split_b]
        keep = min(max_per_image, len(a))
        if keep == 0:
            continue
        for start in range(0, len(b), chunk):
            sims = b[start:start + chunk] @ a.T  # (chunk, n_a)
            top = np.argpartition(-sims, keep - 1, axis=1)[:, :keep]
            top_sims = np.take_along_axis(sims, top, axis=1)
            rb, col = np.nonzero(top_sims >= threshold)
            for r, c in zip(rb.tolist(), col.tolist(), strict=True):
                rows.append((int(top[r, c]), split_a, start + r, split_b,
                             float(top_sims[r, c]), False))
    frame = _frame(rows)
    if len(frame):
        order = {pair: i for i, pair in enumerate(todo)}
        frame["_pair"] = [order[p] for p in zip(frame.split_a, frame.split_b, strict=True)]
        frame = frame.sort_values(["_pair", "cosine", "index_b", "index_a"],
                                  ascending=[True, False, True, True], kind="stable")
        frame = frame.drop(columns="_pair").reset_index(drop=True)
    return frame


def find_duplicates(features: Mapping[str, np.ndarray], hashes: Mapping[str, Sequence[str]],
                    *, threshold: float = DEFAULT_THRESHOLD,
                    max_per_image: int = 5, chunk: int = 1024) -> pd.DataFrame:
    """Exact duplicates (any splits, within one too) and near-duplicates across splits, one
    row per pair (``exact`` True when the hashes match; its ``cosine`` is then the embeddings'
    own). A near pair that is also exact is reported once, as exact."""
    near = near_duplicates(features, threshold=threshold, max_per_image=max_per_image,
                           chunk=chunk)
    exact = exact_duplicates(hashes)
    unit = {name: _unit(f) for name, f in features.items()}
    if len(exact):
        exact["cosine"] = [float(unit[sa][ia] @ unit[sb][ib]) for ia, sa, ib, sb in
                           exact[["index_a", "split_a", "index_b", "split_b"]].itertuples(
                               index=False)]
        known = set(zip(exact.index_a, exact.split_a, exact.index_b, exact.split_b, strict=True))
        mask = [key not in known for key in zip(near.index_a, near.split_a, near.index_b,
                                                near.split_b, strict=True)]
        near = near[mask]
    both = [f for f in (exact, near) if len(f)]
    return pd.concat(both, ignore_index=True) if both else _frame([])


def pair_counts(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per (split_a, split_b): ``pairs``, ``exact`` pairs, and ``images_b``, the images of
    split_b with at least one twin in split_a (e.g. test images leaking from train)."""
    if not len(pairs):
        return pd.DataFrame(columns=["split_a", "split_b", "pairs", "exact", "images_b"])
    grouped = pairs.groupby(["split_a", "split_b"], sort=False)
    return grouped.agg(pairs=("index_b", "size"), exact=("exact", "sum"),
                       images_b=("index_b", "nunique")).reset_index()


def thumbnail_embedding(images: np.ndarray, size: int = 16) -> np.ndarray:
    """(n, size*size) embedding of uint8 images (n, h, w[, c]): grey, box-averaged to
    ``size`` x ``size``, mean removed, unit length. Robust to resizing and JPEG re-encoding;
    on the embedded data a resized (42-84 px) JPEG copy scores >= 0.976 with its source at 16
    px, an unrelated nearest neighbour rarely above 0.98."""
    from PIL import Image

    x = np.asarray(images)
    if x.ndim == 4:
        # the channels' mean, summed a channel at a time (5x faster than x.mean(axis=-1))
        x = (sum(x[..., k].astype(np.float64) for k in range(x.shape[-1])) / x.shape[-1]
             if x.shape[-1] > 1 else x[..., 0])
    if x.ndim != 3:
        raise ValueError(f"images must be (n, h, w) or (n, h, w, c), got shape {x.shape}")
    if x.shape[1:] == (size, size):  # already that size: a box resize would change nothing
        out = x.reshape(len(x), size * size).astype(np.float64)
    else:
        out = np.empty((len(x), size * size), np.float64)
        for i, image in enumerate(x):
            small = Image.fromarray(np.asarray(image, np.float32))  # mode "F"
            out[i] = np.asarray(small.resize((size, size), Image.BOX), np.float64).ravel()
    out -= out.mean(axis=1, keepdims=True)
    return _unit(out)


def thumbnail_side(sides: Iterable[int]) -> int:
    """The thumbnail side for images whose sides are ``sides``: the smallest, at most
    ``THUMBNAIL_MAX``.

    >>> thumbnail_side([28, 84, 42]), thumbnail_side([500, 375])
    (28, 32)
    """
    return min(THUMBNAIL_MAX, *sides)


def _unit(features: np.ndarray) -> np.ndarray:
    f = np.asarray(features, dtype=np.float32)
    if f.ndim != 2:
        raise ValueError(f"embeddings must be 2-d (n, d), got shape {f.shape}")
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.maximum(norms, 1e-12)


def _swap(where: tuple[str, int]) -> tuple[int, str]:
    split, index = where
    return index, split


def _frame(rows: list[tuple]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    return frame.astype({"index_a": np.int64, "index_b": np.int64, "cosine": np.float64,
                         "exact": bool})
