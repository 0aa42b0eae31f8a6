"""A grouped, stratified carve of splits: images of one group (e.g. the same content hash)
always land in the same split, and each class keeps its proportions approximately.

With every group a single image it carves exactly what automl carved before it (a plain
per-class shuffle and cut, kept as the reference in ``tests/test_trust_split.py``), so data
without duplicates keeps its splits, and its fingerprint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from automl.errors import DataError

__all__ = ["group_ids", "grouped_stratified"]


def group_ids(keys: Sequence[object]) -> np.ndarray:
    """Integer group ids (0, 1, ... in order of first appearance) for hashable ``keys``.

    >>> group_ids(["a", "b", "a", "c"]).tolist()
    [0, 1, 0, 2]
    """
    seen: dict[object, int] = {}
    return np.array([seen.setdefault(k, len(seen)) for k in keys], dtype=np.int64)


def grouped_stratified(labels: np.ndarray, groups: np.ndarray, fractions: dict[str, float],
                       seed: int, class_names: Sequence[str],
                       where: str = "the training images") -> dict[str, np.ndarray]:
    """Indices of "train" and of each split in ``fractions`` (sorted), carved from one pool.

    Each group goes whole to one split, stratified by its class (the most common label among
    its members; on a tie, of the tied classes the one with the fewest groups so far, then the
    smallest, so identical images labelled differently spread over their classes). Per class,
    its groups are shuffled with ``seed`` (in order of their first member) and each split in
    ``fractions`` order takes groups until it holds ``max(1, round(n * fraction))`` of the
    class's ``n`` images (the last group taken may overshoot by its size minus one); the rest
    is "train", which keeps at least one group.

    >>> labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    >>> parts = grouped_stratified(labels, np.array([0, 0, 1, 2, 3, 4, 5, 6]),
    ...                            {"validation": 0.25}, 0, ["a", "b"])
    >>> [name for name, idx in parts.items() if {0, 1} <= set(idx.tolist())]  # one group
    ['train']
    >>> {name: len(idx) for name, idx in parts.items()}
    {'train': 6, 'validation': 2}
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if labels.shape != groups.shape or labels.ndim != 1:
        raise ValueError(f"labels and groups must be 1-d arrays of one length, got shapes "
                         f"{labels.shape} and {groups.shape}")
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # groups in order of their first member
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    gid = rank[inverse.reshape(-1)]  # 0.. by first appearance
    n_groups = len(order)
    members = np.split(np.argsort(gid, kind="stable"),
                       np.cumsum(np.bincount(gid, minlength=n_groups))[:-1])
    k = len(class_names)
    group_class = _group_classes(labels, members, k)
    sizes = np.array([len(m) for m in members])

    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], **{name: [] for name in fractions}}
    for c, class_name in enumerate(class_names):
        shuffled = rng.permutation(np.flatnonzero(group_class == c))
        if len(shuffled) < 1 + len(fractions):
            wanted = ", ".join(["train", *fractions])
            hint = " or set test_split=0" if "test" in fractions else ""
            n = int(sizes[shuffled].sum())
            count = (f"{len(shuffled)} image(s)" if n == len(shuffled) else
                     f"{len(shuffled)} distinct image(s) ({n} with copies)")
            raise DataError(f"Class '{class_name}' has only {count} in "
                            f"{where}: too few to put at least one in each split ({wanted}). "
                            f"Add images to that class{hint}.")
        n = int(sizes[shuffled].sum())
        targets = {name: max(1, math.floor(n * f + 0.5)) for name, f in fractions.items()}
        while sum(targets.values()) > n - 1:  # leave at least one training image
            largest = max(targets, key=lambda s: targets[s])
            targets[largest] -= 1
        start = 0
        for name, target in targets.items():
            left = len(shuffled) - start - (len(targets) - list(targets).index(name))
            taken, end = 0, start
            while end - start < 1 or (taken < target and end - start < left):
                taken += int(sizes[shuffled[end]])
                end += 1
            parts[name].extend(members[g] for g in shuffled[start:end])
            start = end
        parts["train"].extend(members[g] for g in shuffled[start:])
    return {name: np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64)
            for name, p in parts.items()}


def _group_classes(labels: np.ndarray, members: list[np.ndarray], k: int) -> np.ndarray:
    """Each group's class: its most common label; a tie goes to the tied class that has the
    fewest groups so far (groups in order), then to the smallest."""
    assigned = np.zeros(k, np.int64)
    out = np.empty(len(members), np.int64)
    for g, m in enumerate(members):
        counts = np.bincount(labels[m], minlength=k)
        tied = np.flatnonzero(counts == counts.max())
        out[g] = tied[np.argmin(assigned[tied])] if len(tied) > 1 else tied[0]
        assigned[out[g]] += 1
    return out
