"""Exact and near-duplicates across splits (automl.trust.leakage)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import plain_carve
from PIL import Image

from automl.data.load import load_data
from automl.data.sources import read_animal_mnist
from automl.trust.leakage import (
    PAIR_COLUMNS,
    content_hash,
    exact_duplicates,
    find_duplicates,
    near_duplicates,
    pair_counts,
    thumbnail_embedding,
)


@pytest.fixture(scope="module")
def default_data():
    return load_data(None)


def test_the_62_test_images_byte_identical_to_training_images() -> None:
    """The plain per-class carve automl used before the grouped one (issue 17)."""
    pool = read_animal_mnist().pools["train"]
    parts = plain_carve(pool.labels, {"validation": 0.15, "test": 0.15}, 0, 10)
    arrays = {name: pool.array[idx] for name, idx in parts.items()}
    hashes = {name: [content_hash(a) for a in arrays[name]]
              for name in ("train", "validation", "test")}
    train = set(hashes["train"])
    expected = {i for i, h in enumerate(hashes["test"]) if h in train}
    assert len(expected) == 62
    pairs = exact_duplicates(hashes)
    test_train = pairs[(pairs.split_a == "train") & (pairs.split_b == "test")]
    assert set(test_train.index_b) == expected and len(test_train) == 62
    for row in test_train.itertuples():
        assert np.array_equal(arrays["train"][row.index_a], arrays["test"][row.index_b])
    counts = pair_counts(pairs).set_index(["split_a", "split_b"])
    assert counts.loc[("train", "test"), "images_b"] == 62
    assert counts.loc[("train", "validation"), "images_b"] == 62
    assert counts.loc[("train", "train"), "pairs"] == 133  # repeats within train
    assert counts["exact"].sum() == len(pairs)


def test_near_duplicates_in_chunks_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(700, 16)).astype(np.float32)
    test = rng.normal(size=(300, 16)).astype(np.float32)
    copies = rng.choice(700, 25, replace=False)
    test[:25] = train[copies] + rng.normal(scale=0.05, size=(25, 16))
    found = near_duplicates({"train": train, "test": test}, threshold=0.95, chunk=64)
    assert list(found.columns) == PAIR_COLUMNS and not found["exact"].any()
    unit = lambda f: f / np.linalg.norm(f, axis=1, keepdims=True)  # noqa: E731
    sims = unit(test) @ unit(train).T
    b, a = np.nonzero(sims >= 0.95)
    assert set(zip(found.index_a, found.index_b, strict=True)) == set(zip(a, b, strict=True))
    assert {(c, i) for i, c in enumerate(copies)} <= set(zip(a, b, strict=True))
    np.testing.assert_allclose(found.cosine, sims[found.index_b, found.index_a], atol=1e-5)
    assert found.cosine.is_monotonic_decreasing


def test_each_image_keeps_its_most_similar_twins_only() -> None:
    base = np.eye(4, dtype=np.float32)[:1]
    train = np.repeat(base, 10, axis=0)  # ten identical training embeddings
    found = near_duplicates({"train": train, "test": base}, max_per_image=3)
    assert len(found) == 3 and set(found.index_b) == {0}


def test_find_duplicates_reports_an_exact_pair_once() -> None:
    train = np.array([[1.0, 0.0], [0.0, 1.0]])
    test = np.array([[1.0, 0.0], [0.7, 0.7]])
    pairs = find_duplicates({"train": train, "test": test},
                            {"train": ["x", "y"], "test": ["x", "z"]}, threshold=0.7)
    assert pairs[["index_a", "index_b", "exact"]].values.tolist() == [
        [0, 0, True], [0, 1, False], [1, 1, False]]
    assert pairs.cosine.iloc[0] == pytest.approx(1.0)


def test_thumbnails_find_a_resized_jpeg_copy(default_data) -> None:
    train = default_data.train.array[:2000]
    buffer = io.BytesIO()
    Image.fromarray(train[7, ..., 0]).resize((56, 56), Image.BICUBIC).convert("RGB").save(
        buffer, "JPEG", quality=75)
    copy = np.asarray(Image.open(buffer))[None]
    found = near_duplicates({"train": thumbnail_embedding(train),
                             "test": thumbnail_embedding(copy)}, threshold=0.97)
    assert 7 in set(found.index_a)
    assert found.cosine.iloc[0] >= 0.97


def test_content_hash_of_bytes_and_arrays() -> None:
    assert content_hash(b"abc") == content_hash(bytearray(b"abc")) != content_hash(b"abd")
    a = np.arange(6, dtype=np.uint8)
    assert content_hash(a.reshape(2, 3)) != content_hash(a.reshape(3, 2))
    assert content_hash(a[::2]) == content_hash(np.array([0, 2, 4], np.uint8))
