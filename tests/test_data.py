"""Tests for automl.data.load: real files and arrays, no mocks."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import image_folder, write_npz
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from automl.data import pipeline
from automl.data.images import load_rgb_image, resize_images
from automl.data.load import DataWarning, describe_source, load_data
from automl.data.sources import read_animal_mnist
from automl.data.splits import SPLITS, Datasets
from automl.errors import DataError

ANIMALS = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]


def _rows(x: np.ndarray) -> list[bytes]:
    return sorted(hashlib.sha1(row.tobytes()).digest() for row in x)


def _take(ds, n=None) -> np.ndarray:
    return np.concatenate([b.numpy() for b in (ds.take(n) if n else ds).batch(512)])


def _noise(rng, h, w, c=3) -> np.ndarray:
    return rng.integers(0, 256, (h, w, c) if c > 1 else (h, w), dtype=np.uint8)


# ------------------------------------------------------------------------- embedded default

@pytest.fixture(scope="module")
def default() -> Datasets:
    return load_data(None)


def test_default_loads_stratified(default):
    assert default.class_names == ANIMALS
    assert default.source == "animal-mnist (embedded default)" == describe_source(None)
    assert set(default.splits()) == set(SPLITS)
    sizes = {name: len(s) for name, s in default.splits().items()}
    assert sum(sizes.values()) == 10_000
    assert sizes["validation"] == sizes["test"] == 1_500
    for split in default.splits().values():
        counts = np.bincount(split.labels, minlength=10)
        assert split.labels.dtype == np.int32 and counts.min() > 0 and len(counts) == 10
    # the three splits partition the original images (as a multiset): disjoint and complete
    original = read_animal_mnist().pools["train"]
    parts = np.concatenate([s.array for s in default.splits().values()])
    assert _rows(parts) == _rows(original.array)
    labelled = np.concatenate([s.labels for s in default.splits().values()])
    assert sorted(labelled.tolist()) == sorted(original.labels.tolist())
    assert default.skipped == []


def test_default_split_depends_on_seed(default):
    same = load_data(None)
    assert same.fingerprint == default.fingerprint
    assert np.array_equal(same.validation.array, default.validation.array)
    other = load_data(None, seed=1)
    assert other.fingerprint != default.fingerprint
    assert not np.array_equal(other.validation.array, default.validation.array)
    fractions = load_data(None, val_split=0.2, test_split=0.1)
    assert fractions.fingerprint != default.fingerprint
    assert (len(fractions.validation), len(fractions.test)) == (2000, 1000)
    no_test = load_data(None, test_split=0)
    assert no_test.test is None and set(no_test.splits()) == {"train", "validation"}
    assert len(no_test.train) == 8500


def test_default_carve_keeps_identical_images_in_one_split(default):
    """Issue 17: the embedded data repeats images (62 test and 62 validation images of the old
    carve were byte-identical to training images); the grouped carve puts every copy in the
    split of its first image, so no split shares an image with another."""
    hashes = {name: set(split.hashes.tolist()) for name, split in default.splits().items()}
    assert not hashes["train"] & hashes["test"] and not hashes["train"] & hashes["validation"]
    assert not hashes["validation"] & hashes["test"] and default.test_twins() == 0
    assert len(hashes["train"]) < len(default.train)  # repeats within train stay there
    # the fingerprint hashes the carve: a study recorded on the old carve is refused
    assert default.fingerprint != "39641d82fff53f1a"  # load_data(None) before the grouped carve


def test_splits_name_each_image_by_its_place_in_the_source(default, tmp_path):
    pool = read_animal_mnist().pools["train"]
    for split in default.splits().values():
        assert np.array_equal(pool.array[split.index], split.array)
        assert split.source_names()[:2] == [f"animal_mnist[{i}]" for i in split.index[:2]]
    x = np.arange(20 * 4, dtype=np.uint8).reshape(20, 2, 2, 1)
    y = np.arange(20) % 2
    data = load_data(write_npz(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:4],
                               y_test=y[:4]), val_split=0.2)
    assert data.validation.source_names()[0].startswith("x_train[")
    for split in (data.train, data.validation):  # indices into x_train, before the carve
        assert np.array_equal(x[split.index], split.array)
    assert data.test.source_names() == [f"x_test[{i}]" for i in range(4)]
    assert data.test_twins() == 4 - int(np.isin(np.arange(4), data.validation.index).sum())


def test_folder_splits_name_each_image_by_its_file(tmp_path):
    """Folder data: ``source`` (``Split.source_names``, the first column of `automl inspect`'s
    CSVs) is each image's file path, whether automl carved the split or the folder gave it,
    and that file holds the image."""
    rng = np.random.default_rng(0)
    pools = {split: {name: [_noise(rng, 12, 12) for _ in range(count)]
                     for name in ("cat", "dog")}
             for split, count in (("train", 6), ("validation", 2), ("test", 3))}
    carved_root = image_folder(tmp_path / "carved", pools["train"])
    carved = load_data(carved_root, val_split=0.25, test_split=0.25)
    given_root = tmp_path / "given"
    for split, images in pools.items():
        image_folder(given_root / split, images)
    given = load_data(given_root)
    assert given.test.source_names() == [str(given_root / "test" / name / f"{i}.png")
                                         for name in ("cat", "dog") for i in range(3)]
    assert sorted(p for s in carved.splits().values() for p in s.source_names()) == sorted(
        str(carved_root / name / f"{i}.png") for name in ("cat", "dog") for i in range(6))
    for data, root in ((carved, carved_root), (given, given_root)):
        for split in data.splits().values():
            assert split.source_names() == split.paths
            for source, label in zip(split.source_names(), split.labels, strict=True):
                path = Path(source)
                name = data.class_names[label]
                assert path.parent.name == name
                pool = pools["train" if root == carved_root else split.name][name]
                with Image.open(path) as image:
                    assert np.array_equal(np.asarray(image), pool[int(path.stem)])


def test_given_splits_are_checked_never_changed(tmp_path):
    x = np.arange(30 * 4, dtype=np.uint8).reshape(30, 2, 2, 1)
    y = np.arange(30) % 3
    data = load_data(write_npz(tmp_path / "d.npz", x_train=x, y_train=y, x_val=x[:6],
                               y_val=y[:6], x_test=x[:9], y_test=y[:9]))
    assert np.array_equal(data.train.array, x) and np.array_equal(data.test.array, x[:9])
    assert data.test_twins() == 9


def test_default_images_cached_and_exact(default):
    split = default.test
    start = time.perf_counter()
    ds = pipeline.images(split, 96)
    first = time.perf_counter() - start
    assert ds.element_spec.shape == (96, 96, 3) and ds.element_spec.dtype.name == "uint8"
    start = time.perf_counter()
    again = pipeline.images(split, 96)
    assert again is ds and time.perf_counter() - start < max(0.05, first / 5)
    images = _take(ds)
    assert images.shape == (len(split), 96, 96, 3)
    assert np.array_equal(images[..., 0], images[..., 2])  # grayscale -> RGB
    expected = resize_images(np.repeat(split.array[:5], 3, axis=-1), 96).numpy()
    assert np.array_equal(images[:5], expected)
    small = pipeline.images(split, 32)
    assert small is not ds and _take(small, 1).shape == (1, 32, 32, 3)


def test_dataset_batches_and_shuffles(default):
    split = default.validation
    batches = list(pipeline.dataset(split, 32, 256))
    assert batches[0][0].dtype.name == "float32" and batches[0][1].dtype.name == "int32"
    assert batches[0][0].shape == (256, 32, 32, 3) and float(batches[0][0].numpy().max()) <= 255
    assert np.array_equal(np.concatenate([b[1].numpy() for b in batches]), split.labels)
    shuffled = pipeline.dataset(split, 32, 500, shuffle=True, seed=3)
    epoch1 = np.concatenate([y.numpy() for _, y in shuffled])
    epoch2 = np.concatenate([y.numpy() for _, y in shuffled])
    assert sorted(epoch1) == sorted(split.labels) and not np.array_equal(epoch1, epoch2)
    again = pipeline.dataset(split, 32, 500, shuffle=True, seed=3)
    replay = np.concatenate([y.numpy() for _, y in again])
    assert np.array_equal(epoch1, replay)
    # images travel with their labels through the shuffle
    x, y = next(iter(pipeline.dataset(split, 32, 8, shuffle=True, seed=3)))
    reference = _take(pipeline.images(split, 32))
    for image, label in zip(x.numpy(), y.numpy(), strict=True):
        match = np.flatnonzero((reference == image.astype(np.uint8)).all(axis=(1, 2, 3)))
        assert label in split.labels[match]


# ---------------------------------------------------------------------------- image folders

def _save(path: Path, array: np.ndarray, fmt: str | None = None, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(path, fmt)
    return path


def _class_tree(root: Path, classes=("cat", "dog"), per_class=4, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    return image_folder(root, {name: [_noise(rng, 10 + i, 12) for i in range(per_class)]
                               for name in classes})


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Mixed formats, sizes and modes; odd class names; junk files."""
    root = tmp_path_factory.mktemp("tree") / "pets"
    rng = np.random.default_rng(0)
    for i in range(4):
        _save(root / "cat" / f"rgb{i}.jpg", _noise(rng, 30 + 7 * i, 20 + 3 * i), "JPEG")
        _save(root / "cat" / f"gray{i}.png", _noise(rng, 16, 16, 1))
        _save(root / "snow leopard" / f"rgba{i}.PNG", _noise(rng, 12, 40, 4))
        _save(root / "snow leopard" / "nested" / f"g{i}.gif", _noise(rng, 9, 9), "GIF", "P")
        _save(root / "čáp" / f"b{i}.bmp", _noise(rng, 8, 8), "BMP")
        _save(root / "čáp" / f"palette{i}.bmp", _noise(rng, 8, 8), "BMP", "P")
    _save(root / "cat" / ".hidden.jpg", _noise(rng, 8, 8), "JPEG")
    _save(root / "cat" / ".cache" / "x.png", _noise(rng, 8, 8))
    _save(root / ".thumbs" / "y.png", _noise(rng, 8, 8))
    (root / "README.txt").write_text("not an image")
    (root / "cat" / "notes.txt").write_text("not an image either")
    full = root / "cat" / "rgb0.jpg"
    _save(root / "cat" / "big.jpg", _noise(rng, 120, 120), "JPEG")
    data = (root / "cat" / "big.jpg").read_bytes()
    (root / "cat" / "big.jpg").write_bytes(data[: len(data) // 2])  # truncated
    (root / "snow leopard" / "fake.jpg").write_text("this is text, not a JPEG")
    assert full.exists()
    return root


def _load_tree(root: Path, **kwargs) -> Datasets:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_data(str(root), **kwargs)
    data_warnings = [w for w in caught if issubclass(w.category, DataWarning)]
    return data, data_warnings


def test_class_folder_tree(tree):
    data, caught = _load_tree(tree)
    assert data.class_names == ["cat", "snow leopard", "čáp"]
    assert data.source == str(tree)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "Skipped 2 file(s)" in message and "big.jpg" in message and "fake.jpg" in message
    assert sorted(Path(p).name for p in data.skipped) == ["big.jpg", "fake.jpg"]
    paths = [p for s in data.splits().values() for p in s.paths]
    assert len(paths) == len(set(paths)) == 24  # 8 per class, disjoint splits
    assert not any("/." in p or p.endswith(".txt") or p in data.skipped for p in paths)
    for split in data.splits().values():
        assert np.bincount(split.labels, minlength=3).min() >= 1
        for path, label in zip(split.paths, split.labels, strict=True):
            assert Path(path).relative_to(tree).parts[0] == data.class_names[label]
        images = _take(pipeline.images(split, 24))
        assert images.shape == (len(split), 24, 24, 3) and images.dtype == np.uint8
        for path, image in zip(split.paths, images, strict=True):  # training == predict decoding
            assert np.array_equal(image, resize_images(load_rgb_image(path), 24).numpy())
        assert pipeline.images(split, 24) is pipeline.images(split, 24)
    again, _ = _load_tree(tree)
    assert again.fingerprint == data.fingerprint and again.train.paths == data.train.paths
    other, _ = _load_tree(tree, seed=5)
    assert other.fingerprint != data.fingerprint and other.train.paths != data.train.paths


def test_pixels_survive_decoding(tree):
    rgba = tree / "snow leopard" / "rgba0.PNG"
    with Image.open(rgba) as im:
        expected = np.asarray(im)[..., :3]
    assert np.array_equal(load_rgb_image(rgba), expected)  # alpha dropped
    gray = load_rgb_image(tree / "cat" / "gray0.png")
    assert gray.shape == (16, 16, 3) and np.array_equal(gray[..., 0], gray[..., 1])
    palette = tree / "čáp" / "palette0.bmp"  # TensorFlow ignores BMP palettes: PIL decodes these
    with Image.open(palette) as im:
        assert np.array_equal(load_rgb_image(palette), np.asarray(im.convert("RGB")))
    assert np.array_equal(resize_images(load_rgb_image(palette), 8).numpy(),
                          load_rgb_image(palette))  # same-size resize is the identity
    with pytest.raises(DataError, match="fake.jpg.*cannot be decoded"):
        load_rgb_image(tree / "snow leopard" / "fake.jpg")
    with pytest.raises(DataError, match="missing.png"):
        load_rgb_image(tree / "missing.png")


def test_fingerprint_follows_files(tmp_path):
    root = _class_tree(tmp_path / "d", per_class=5)
    first = load_data(root).fingerprint
    assert load_data(root).fingerprint == first
    assert load_data(root, val_split=0.3).fingerprint != first
    _save(root / "dog" / "new.png", np.zeros((5, 5, 3), np.uint8))
    assert load_data(root).fingerprint != first


def test_train_validation_layout(tmp_path):
    root = tmp_path / "cats_vs_dogs_small"
    for split, n in (("train", 5), ("validation", 2), ("test", 3)):
        _class_tree(root / split, ("cats", "dogs"), n, seed=len(split))
    data = load_data(root, val_split=0.5, test_split=0.4)  # fractions unused: taken as given
    assert data.class_names == ["cats", "dogs"]
    assert {k: len(v) for k, v in data.splits().items()} == {"train": 10, "validation": 4,
                                                              "test": 6}
    assert all(p.startswith(str(root / "validation")) for p in data.validation.paths)
    (root / "test").rename(tmp_path / "elsewhere")
    (root / "validation").rename(root / "val")
    data = load_data(root)
    assert data.test is None and len(data.validation) == 4 and set(data.splits()) == {
        "train", "validation"}


def test_train_test_layout_carves_validation(tmp_path):
    root = tmp_path / "d"
    _class_tree(root / "train", per_class=10)
    _class_tree(root / "test", per_class=2)
    data = load_data(root, val_split=0.2)
    assert (len(data.train), len(data.validation), len(data.test)) == (16, 4, 4)


# ------------------------------------------------------------------------------------- .npz

def test_npz_with_given_splits(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    y = np.arange(12) % 3
    path = write_npz(tmp_path / "d.npz", x_train=x, y_train=y, x_val=x[:3], y_val=y[:3],
                x_test=x[:6, :, :5], y_test=y[:6], class_names=np.array(["a", "b", "č c"]))
    data = load_data(path)
    assert data.class_names == ["a", "b", "č c"] and data.source == str(path)
    assert [len(s) for s in data.splits().values()] == [12, 3, 6]
    assert np.array_equal(data.train.labels, y) and np.array_equal(data.train.array, x)
    assert _take(pipeline.images(data.test, 8)).shape == (6, 8, 8, 3)
    assert np.array_equal(_take(pipeline.images(data.train, 8)), x)  # same size: identity


def test_npz_split_from_train_onehot_float(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((40, 6, 7, 1)).astype(np.float32)  # floats in 0..1 -> scaled by 255
    y = np.eye(4)[np.arange(40) % 4]
    data = load_data(write_npz(tmp_path / "d.npz", x_train=x, y_train=y), val_split=0.2,
                     test_split=0.2)
    assert data.class_names == ["0", "1", "2", "3"]
    assert [len(s) for s in data.splits().values()] == [24, 8, 8]
    merged = np.concatenate([s.array for s in data.splits().values()])
    assert _rows(merged) == _rows(np.rint(x * 255).astype(np.uint8))
    for split in data.splits().values():
        assert np.array_equal(np.bincount(split.labels), np.full(4, len(split) // 4))
    big = load_data(write_npz(tmp_path / "e.npz", x_train=x[..., 0] * 200, y_train=y))
    assert np.concatenate([s.array for s in big.splits().values()]).max() > 150
    rgba = load_data(write_npz(tmp_path / "f.npz", x_train=np.zeros((8, 4, 4, 4), np.uint8),
                          y_train=np.arange(8) % 2, x_val=np.zeros((2, 4, 4, 4), np.uint8),
                          y_val=np.array([0, 1])))
    assert rgba.train.array.shape[-1] == 3 and rgba.test is None


# ------------------------------------------------------------------------------- bad input

def _bad(source, *phrases, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_data(source, **kwargs)
    message = str(info.value)
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"
    assert "\n" not in message
    return message


def test_bad_paths(tmp_path):
    _bad(str(tmp_path / "nope"), str(tmp_path / "nope"), "does not exist", "npz")
    (tmp_path / "notes.txt").write_text("hi")
    _bad(tmp_path / "notes.txt", "notes.txt", "neither a directory nor an .npz")
    (tmp_path / "empty").mkdir()
    _bad(tmp_path / "empty", str(tmp_path / "empty"), "is empty", "one sub-folder per class")
    _save(tmp_path / "flat" / "a.png", np.zeros((4, 4, 3), np.uint8))
    _bad(tmp_path / "flat", "flat", "holds images but no class sub-folders")
    _bad("", "empty")


def test_bad_folders(tmp_path):
    one = _class_tree(tmp_path / "one", ("cat",))
    _bad(one, str(one), "only one class", "at least two classes")
    hollow = _class_tree(tmp_path / "hollow")
    (hollow / "bird").mkdir()
    (hollow / "bird" / "readme.md").write_text("no images here")
    _bad(hollow, str(hollow / "bird"), "has no images", ".jpg")
    broken = _class_tree(tmp_path / "broken")
    (broken / "bird").mkdir()
    (broken / "bird" / "a.jpg").write_text("text")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _bad(broken, str(broken / "bird"), "no decodable images", "a.jpg")
    small = _class_tree(tmp_path / "small", per_class=4)
    for extra in ("1.png", "2.png", "3.png"):
        (small / "dog" / extra).unlink()
    _bad(small, "'dog' has only 1 image", "train, validation, test", "test_split=0")
    _bad(small, "val_split", "no validation split", val_split=0)


def test_split_layout_errors(tmp_path):
    root = tmp_path / "d"
    _class_tree(root / "train", ("cat", "dog", "emu"))
    _class_tree(root / "validation", ("cat", "dog", "yak"))
    _bad(root, str(root / "train"), str(root / "validation"), "differ", "'emu'", "'yak'")
    _class_tree(root / "val", ("cat", "dog", "emu"))
    _bad(root, "both val/ and validation/")
    (root / "validation").rename(tmp_path / "gone")
    (root / "misc").mkdir()
    _bad(root, "'misc'", "expected only train/")


def test_bad_npz(tmp_path):
    x, y = np.zeros((6, 4, 4), np.uint8), np.arange(6) % 2
    p = write_npz(tmp_path / "a.npz", x_val=x, y_val=y)
    _bad(p, str(p), "no x_train and no y_train", "x_val", "Expected x_train and y_train")
    p = write_npz(tmp_path / "b.npz", x_train=x, y_train=y[:5])
    _bad(p, str(p), "'y_train'", "(5,)", "6 images")
    p = write_npz(tmp_path / "c.npz", x_train=np.zeros((6, 4)), y_train=y)
    _bad(p, str(p), "'x_train'", "(6, 4)", "not a stack of images", "(n, h, w, 3)")
    p = write_npz(tmp_path / "d.npz", x_train=np.zeros((6, 4, 4, 2)), y_train=y)
    _bad(p, "(6, 4, 4, 2)", "not a stack of images")
    p = write_npz(tmp_path / "e.npz", x_train=x, y_train=np.array([{"a": 1}] * 6, dtype=object))
    _bad(p, str(p), "'y_train'", "pickled")
    p = write_npz(tmp_path / "f.npz", x_train=x, y_train=y, x_test=x)
    _bad(p, "x_test but no y_test")
    p = write_npz(tmp_path / "g.npz", x_train=x, y_train=np.zeros(6))
    _bad(p, str(p), "only one class", "at least two classes")
    p = write_npz(tmp_path / "h.npz", x_train=x, y_train=y - 1)
    _bad(p, "'y_train'", "class indices")
    p = write_npz(tmp_path / "i.npz", x_train=x * np.nan, y_train=y)
    _bad(p, "NaN")
    p = write_npz(tmp_path / "j.npz", x_train=x, y_train=y, class_names=np.array(["a", "b", "c"]))
    _bad(p, "no images of class(es) 'c'")
    p = write_npz(tmp_path / "k.npz", x_train=x, y_train=y, x_val=x[:2], y_val=np.zeros(2))
    _bad(p, "x_val/y_val", "no images of class(es) '1'", "every split")


def test_corrupt_npz(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 this is not really a zip file" * 10)
    _bad(garbage, str(garbage), "cannot be read as an .npz archive")
    text = tmp_path / "text.npz"
    text.write_text("hello")
    _bad(text, str(text), ".npz")
    good = write_npz(tmp_path / "good.npz", x_train=np.ones((6, 4, 4), np.uint8),
                y_train=np.arange(6) % 2)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:-40])
    _bad(truncated, str(truncated))
    damaged = tmp_path / "damaged.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(damaged, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, src.read(item)[:20])  # arrays cut short inside a valid zip
    _bad(damaged, str(damaged), "cannot be read")
    single = tmp_path / "single.npz"
    np.save(open(single, "wb"), np.zeros(3))
    _bad(single, "single array")


@pytest.mark.parametrize("val, test, phrase", [
    (-0.1, 0.1, "val_split must be a fraction in [0, 1)"),
    (1.0, 0.0, "val_split must be a fraction in [0, 1)"),
    (0.1, 1.5, "test_split must be a fraction in [0, 1)"),
    (float("nan"), 0.1, "val_split"),
    (0.6, 0.4, "val_split + test_split must be below 1"),
])
def test_bad_fractions(val, test, phrase):
    _bad(None, phrase, val_split=val, test_split=test)


def test_bad_seed():
    _bad(None, "seed must be a non-negative integer", seed=-1)


def test_keras_download_failure_is_clean(tmp_path):
    env = dict(os.environ, KERAS_HOME=str(tmp_path / "keras"), https_proxy="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9",
               TF_CPP_MIN_LOG_LEVEL="3")
    code = ("from automl.data.load import load_data\nfrom automl.errors import DataError\n"
            "try:\n    load_data('mnist')\nexcept DataError as e:\n    print('DATAERROR', e)\n")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=180, cwd=Path(__file__).resolve().parents[1])
    assert time.perf_counter() - start < 120
    assert "DATAERROR" in done.stdout, done.stdout + done.stderr
    assert "'mnist'" in done.stdout and "failed" in done.stdout and "offline" in done.stdout
    assert describe_source("cifar10") == "cifar10 (keras.datasets)"
    assert describe_source("fashion-mnist") == "fashion_mnist (keras.datasets)"


# ------------------------------------------------------------------------------- fuzzing npz

_KEYS = ["x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "class_names", "other"]
_DTYPES = [np.uint8, np.int8, np.int64, np.uint16, np.float16, np.float32, np.float64, np.bool_,
           np.complex64]


@st.composite
def _npz_contents(draw) -> dict[str, np.ndarray]:
    n = draw(st.integers(0, 12))
    k = draw(st.integers(1, 4))
    h, w = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    channels = draw(st.sampled_from([(), (1,), (3,), (4,), (2,)]))
    contents = {}
    for key in draw(st.lists(st.sampled_from(_KEYS), unique=True, max_size=8)) + (
            ["x_train", "y_train"] if draw(st.booleans()) else []):
        kind = draw(st.sampled_from(["image", "label", "onehot", "names", "random", "object"]))
        if kind == "image":
            dtype = draw(st.sampled_from(_DTYPES))
            arr = draw(hnp.arrays(dtype, (max(0, n + draw(st.integers(-1, 1))), h, w,
                                          *channels)))
        elif kind == "label":
            dtype = draw(st.sampled_from([np.uint8, np.int64, np.float32, np.float64]))
            arr = draw(hnp.arrays(dtype, (n,), elements=st.integers(0, k)))
        elif kind == "onehot":
            arr = np.eye(k)[draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, k - 1)))]
        elif kind == "names":
            arr = np.array(draw(st.lists(st.text(max_size=3), max_size=5)), dtype=str)
        elif kind == "random":
            arr = draw(hnp.arrays(draw(st.sampled_from(_DTYPES)), hnp.array_shapes(
                min_dims=0, max_dims=5, min_side=0, max_side=3)))
        else:
            arr = np.array([None, "x", 1], dtype=object)
        contents[key] = arr
    return contents


@st.composite
def _plausible_npz(draw) -> dict[str, np.ndarray]:
    """A valid archive (mostly), sometimes with one thing broken."""
    k, per_class = draw(st.integers(2, 4)), draw(st.integers(1, 6))
    n = k * per_class
    shape = (n, draw(st.integers(1, 5)), draw(st.integers(1, 5)),
             *draw(st.sampled_from([(), (1,), (3,), (4,)])))
    dtype = draw(st.sampled_from([np.uint8, np.int64, np.float32, np.float64]))
    elements = (st.integers(0, 255) if dtype in (np.uint8, np.int64) else
                st.floats(0, draw(st.sampled_from([1, 255])), width=32))
    x = draw(hnp.arrays(dtype, shape, elements=elements))
    y = np.arange(n) % k
    contents = {"x_train": x, "y_train": np.eye(k)[y] if draw(st.booleans()) else y}
    if draw(st.booleans()):
        contents |= {"x_val": x[:k], "y_val": y[:k]}
    if draw(st.booleans()):
        contents |= {"x_test": x[-k:], "y_test": y[-k:]}
    if draw(st.booleans()):
        contents["class_names"] = np.array([f"c{i}" for i in range(k)])
    mutation = draw(st.sampled_from([None] * 4 + ["drop", "nan", "label", "shape", "object"]))
    key = draw(st.sampled_from(sorted(contents)))
    numeric = key != "class_names"
    if mutation == "drop":
        del contents[key]
    elif mutation == "nan" and numeric:
        contents[key] = contents[key].astype(np.float32) * np.nan
    elif mutation == "label" and numeric:
        contents[key] = contents[key].astype(np.float64) + draw(st.sampled_from([-1, 1, k, 0.5]))
    elif mutation == "shape":
        contents[key] = contents[key].reshape(-1)[: draw(st.integers(0, 5))]
    elif mutation == "object":
        contents[key] = contents[key].astype(object)
    return contents


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(contents=st.one_of(_npz_contents(), _plausible_npz()),
       cut=st.one_of(st.none(), st.none(), st.integers(0, 400)),
       val=st.sampled_from([0.0, 0.2, 0.5]), test=st.sampled_from([0.0, 0.3]))
def test_fuzz_npz(contents, cut, val, test):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.npz"
        write_npz(path, **contents)
        if cut is not None:
            path.write_bytes(path.read_bytes()[:cut])
        try:
            data = load_data(path, val_split=val, test_split=test, seed=1)
        except DataError as exc:
            assert str(exc)
            event("DataError")
            return
    event("loaded")
    assert len(data.class_names) >= 2 and data.train is not None
    for split in data.splits().values():
        assert len(split) > 0 and split.array.dtype == np.uint8 and split.array.shape[-1] in (1, 3)
        assert np.bincount(split.labels, minlength=len(data.class_names)).min() >= 1
        assert split.labels.max() < len(data.class_names)
