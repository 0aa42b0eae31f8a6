"""The grouped, stratified carve (automl.trust.split) on the embedded data's content hashes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from automl.data.sources import ANIMAL_MNIST_CLASSES, Pool, read_animal_mnist
from automl.errors import DataError
from automl.trust.leakage import content_hash
from automl.trust.split import group_ids, grouped_stratified

FRACTIONS = {"validation": 0.15, "test": 0.15}


def _stratified(pool: Pool, fractions: dict[str, float], seed: int,
                class_names: list[str]) -> dict[str, np.ndarray]:
    """The carve automl used before the grouped one (issue 17), kept as the reference: per
    class, shuffle with the seed, then take round(n * fraction) (at least 1) per split."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], **{name: [] for name in fractions}}
    for c in range(len(class_names)):
        members = rng.permutation(np.flatnonzero(pool.labels == c))
        n = len(members)
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


@pytest.fixture(scope="module")
def pool():
    return read_animal_mnist().pools["train"]


def test_singleton_groups_carve_what_the_current_split_carves(pool) -> None:
    singletons = np.arange(len(pool.labels))
    for seed in (0, 3):
        ours = grouped_stratified(pool.labels, singletons, FRACTIONS, seed, ANIMAL_MNIST_CLASSES)
        theirs = _stratified(pool, FRACTIONS, seed, ANIMAL_MNIST_CLASSES)
        assert ours.keys() == theirs.keys()
        for name in theirs:
            np.testing.assert_array_equal(ours[name], theirs[name])


def test_identical_images_land_in_one_split_and_classes_keep_their_share(pool) -> None:
    groups = group_ids([content_hash(image) for image in pool.array])
    assert len(np.unique(groups)) < len(groups)  # the embedded data repeats images
    parts = grouped_stratified(pool.labels, groups, FRACTIONS, 0, ANIMAL_MNIST_CLASSES)
    everything = np.concatenate(list(parts.values()))
    assert np.array_equal(np.sort(everything), np.arange(len(groups)))  # each image once
    split_of_group: dict[int, str] = {}
    for name, idx in parts.items():
        for g in groups[idx]:
            assert split_of_group.setdefault(int(g), name) == name
    for name, fraction in {"train": 0.7, **FRACTIONS}.items():
        counts = np.bincount(pool.labels[parts[name]], minlength=10)
        totals = np.bincount(pool.labels, minlength=10)
        np.testing.assert_allclose(counts / totals, fraction, atol=0.005)
    again = grouped_stratified(pool.labels, groups, FRACTIONS, 0, ANIMAL_MNIST_CLASSES)
    assert all(np.array_equal(parts[n], again[n]) for n in parts)


def test_a_group_goes_to_its_majority_class_and_stays_whole() -> None:
    labels = np.array([0, 0, 1, 0, 0, 0, 1, 1, 1, 1])
    groups = np.array([5, 5, 5, 1, 2, 3, 4, 6, 7, 8])  # group 5: two 0s and a 1
    for seed in range(10):
        parts = grouped_stratified(labels, groups, {"validation": 0.3}, seed, ["a", "b"])
        homes = [name for name, idx in parts.items() if {0, 1, 2} & set(idx.tolist())]
        assert len(homes) == 1 and {0, 1, 2} <= set(parts[homes[0]].tolist())
        for name in parts:
            assert set(labels[parts[name]]) == {0, 1}  # every split has every class


def test_too_few_distinct_images_in_a_class_is_a_data_error() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    groups = np.array([0, 0, 1, 2, 3, 4])  # class a: two distinct images for three splits
    with pytest.raises(DataError, match="Class 'a' has only 2 distinct image"):
        grouped_stratified(labels, groups, FRACTIONS, 0, ["a", "b"])
