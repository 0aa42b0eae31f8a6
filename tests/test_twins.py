"""Copies of training images in the test split, found without TensorFlow (automl.data.twins),
and the warning ``automl search`` gives for them (issue 17)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    animal_mnist_npz,
    folder_data,
    jpeg_copy,
    score_leaks,
    write_leaky_folder,
    write_npz,
)
from PIL import Image

from automl.data.load import load_data
from automl.data.sources import read_animal_mnist
from automl.data.twins import Leaks, count_leaks, near_pairs, thumbnails
from automl.search.run import leak_message


def near_copy(image: np.ndarray, side: int = 56, quality: int = 75) -> np.ndarray:
    """A 28x28x1 image as a resized, re-encoded copy of it: a JPEG of it at ``side`` px,
    decoded and box-resized back to 28 px (so it fits the array)."""
    decoded = Image.open(io.BytesIO(jpeg_copy(image[..., 0], side, quality))).convert("L")
    return np.asarray(decoded.resize((28, 28), Image.BOX), np.uint8)[..., None]


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    """30 training, 10 validation and 71 test images per class of the embedded data, each an
    image the data holds once (by content hash); the test images take turns by class, so the
    first ten hold every class."""
    pool = read_animal_mnist().pools["train"]
    values, counts = np.unique(pool.content_hashes(), return_counts=True)
    once = np.isin(pool.content_hashes(), values[counts == 1])
    rng = np.random.default_rng(0)
    index: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(10):
        members = rng.permutation(np.flatnonzero((pool.labels == c) & once))
        for key, (start, stop) in (("train", (0, 30)), ("val", (30, 40)), ("test", (40, 111))):
            index[key].append(members[start:stop])
    out = {}
    for key, parts in index.items():
        idx = np.stack(parts).T.ravel() if key == "test" else np.concatenate(parts)
        out[f"x_{key}"], out[f"y_{key}"] = pool.array[idx], pool.labels[idx]
    return out


def given(tmp_path: Path, arrays: dict[str, np.ndarray], tests: int,
          copies: dict[int, np.ndarray]) -> object:
    """The arrays as given splits with the first ``tests`` test images, ``copies`` (test index
    -> image) put in their place."""
    x_test, y_test = arrays["x_test"][:tests].copy(), arrays["y_test"][:tests]
    for i, image in copies.items():
        x_test[i] = image
    return load_data(write_npz(tmp_path / "given.npz", **{**arrays, "x_test": x_test,
                                                          "y_test": y_test}))


def test_the_test_images_have_no_twin_in_train_before_copies_go_in(tmp_path, arrays) -> None:
    data = given(tmp_path, arrays, 710, {})
    assert count_leaks(data) == Leaks(710, 0, 0)
    assert leak_message(data) is None


def test_exactly_one_percent_of_copies_warns(tmp_path, arrays) -> None:
    """7 of 700 is exactly 1% (a float threshold, 0.01 * 700 = 7.000000000000001, missed it)."""
    x_train = arrays["x_train"]
    data = given(tmp_path, arrays, 700, {i * 100: x_train[i * 30] for i in range(7)})
    assert count_leaks(data) == Leaks(700, 7, 0)
    assert leak_message(data) == (
        "7 of the 700 test images (1.0%) are byte-identical to a training image, so the test "
        "accuracy is inflated; the splits came with the data and are used as given. `automl "
        "inspect` lists them.")


def test_just_under_one_percent_does_not_warn(tmp_path, arrays) -> None:
    x_train = arrays["x_train"]
    data = given(tmp_path, arrays, 701, {i * 100: x_train[i * 30] for i in range(7)})
    assert count_leaks(data) == Leaks(701, 7, 0)  # 0.9986%
    assert leak_message(data) is None


def test_a_resized_reencoded_copy_is_a_near_twin(tmp_path, arrays) -> None:
    x_train = arrays["x_train"]
    copies = {i * 100: x_train[i * 30] for i in range(6)}
    copies[650] = near_copy(x_train[5])  # 56 px JPEG, back to 28 px: no hash matches
    data = given(tmp_path, arrays, 700, copies)
    assert not np.isin(data.test.hashes[650], data.train.hashes)
    assert count_leaks(data) == Leaks(700, 6, 1)
    assert leak_message(data) == (
        "7 of the 700 test images (1.0%) copy a training image (6 byte-identical, 1 near "
        "copies: grey thumbnails with cosine >= 0.985: resized or re-encoded), so the test "
        "accuracy is inflated; the splits came with the data and are used as given. `automl "
        "inspect` lists them.")
    alone = given(tmp_path, arrays, 100, {50: near_copy(x_train[5], 84, 60)})
    assert count_leaks(alone) == Leaks(100, 0, 1)
    assert leak_message(alone).startswith(
        "1 of the 100 test images (1.0%) are near copies of a training image (grey thumbnails")


def test_near_copies_in_a_split_automl_carved(tmp_path, arrays) -> None:
    """The grouped carve keeps byte-identical images together, not near copies: the warning
    says so instead of blaming given splits."""
    x, y = arrays["x_train"], arrays["y_train"]
    copies = np.stack([near_copy(image) for image in x])
    data = load_data(write_npz(tmp_path / "pool.npz", x_train=np.concatenate([x, copies]),
                               y_train=np.concatenate([y, y])), seed=0)
    leaks = count_leaks(data)
    assert data.carved == ["validation", "test"] and leaks.exact == 0 and leaks.near >= 10
    assert leak_message(data).endswith(
        "inflated; automl carved the test split, keeping only byte-identical images together. "
        "`automl inspect` lists them.")


def test_thumbnails_find_resized_jpeg_copies_among_2000_files(tmp_path) -> None:
    """The issue's target on 2,000 images of the embedded data (150 / 10 / 40 a class) written
    as files, 20 test images replaced by resized (42-84 px) JPEG copies of training images, as
    benchmarks/leakage.py does on all 10,000: the production path (thumbnails at the data's
    native 28 px, THUMBNAIL_THRESHOLD) finds >= 19 of them with <= 5 false pairs, and the
    search's count sees them."""
    data = load_data(animal_mnist_npz(tmp_path / "d.npz", 150, 10, 40))
    pixels, injected = write_leaky_folder(tmp_path / "files", data, 20, seed=0)
    files = folder_data(tmp_path / "files")
    assert (len(files.train), len(files.validation), len(files.test)) == (1500, 100, 400)
    thumbs = thumbnails(files)
    assert {f.shape[1] for f in thumbs.values()} == {28 * 28}
    pairs = near_pairs(thumbs)
    names = {name: split.source_names() for name, split in files.splits().items()}
    pairs["source_a"] = [names[s][i] for s, i in zip(pairs.split_a, pairs.index_a, strict=True)]
    pairs["source_b"] = [names[s][i] for s, i in zip(pairs.split_b, pairs.index_b, strict=True)]
    found, false = score_leaks(pairs, injected, pixels)
    print(f"found {found} of 20 copies, {false} false pairs")
    assert found >= 19 and false <= 5
    leaks = count_leaks(files)
    assert leaks.images == 400 and leaks.near >= 19
    assert count_leaks(files, max_files=1899) == Leaks(400, leaks.exact, None)  # 1,900 files
    assert count_leaks(files, max_pixels=1900 * 28 * 28).near is None  # more pixels: the JPEGs
