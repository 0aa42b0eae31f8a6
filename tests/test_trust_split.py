"""The grouped, stratified carve (automl.trust.split) on the embedded data's content hashes."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import plain_carve

from automl.data.sources import ANIMAL_MNIST_CLASSES, read_animal_mnist
from automl.errors import DataError
from automl.trust.leakage import content_hash
from automl.trust.split import group_ids, grouped_stratified

FRACTIONS = {"validation": 0.15, "test": 0.15}


@pytest.fixture(scope="module")
def pool():
    return read_animal_mnist().pools["train"]


def test_singleton_groups_carve_what_the_current_split_carves(pool) -> None:
    singletons = np.arange(len(pool.labels))
    for seed in (0, 3):
        ours = grouped_stratified(pool.labels, singletons, FRACTIONS, seed, ANIMAL_MNIST_CLASSES)
        theirs = plain_carve(pool.labels, FRACTIONS, seed, len(ANIMAL_MNIST_CLASSES))
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


def test_identical_images_labelled_differently_spread_over_their_classes() -> None:
    labels = np.array([0, 1] * 10)  # image i of class 0 is byte-identical to image i of class 1
    groups = np.repeat(np.arange(10), 2)
    parts = grouped_stratified(labels, groups, FRACTIONS, 0, ["a", "b"])
    for name, idx in parts.items():
        assert set(labels[idx]) == {0, 1}, name  # every split still has both classes
        others = np.concatenate([parts[o] for o in parts if o != name])
        assert set(groups[idx]).isdisjoint(groups[others])
