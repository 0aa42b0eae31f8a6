"""A tiny real data set for fast end-to-end tests: a stratified subset of Animal-MNIST as .npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_npz(path: Path, train: int = 40, val: int = 10, test: int = 20, seed: int = 0) -> Path:
    """``train``/``val``/``test`` images per class of the embedded Animal-MNIST, as an .npz."""
    from automl.data.sources import read_animal_mnist

    raw = read_animal_mnist()
    pool = raw.pools["train"]
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for label in range(len(raw.class_names)):
        idx = rng.permutation(np.flatnonzero(pool.labels == label))
        parts["train"].append(idx[:train])
        parts["val"].append(idx[train:train + val])
        parts["test"].append(idx[train + val:train + val + test])
    arrays = {}
    for split, chunks in parts.items():
        idx = np.concatenate(chunks)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = pool.array[idx], pool.labels[idx]
    np.savez(path, class_names=np.array(raw.class_names), **arrays)
    return path
