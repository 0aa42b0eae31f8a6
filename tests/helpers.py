"""What the tests share: tiny data sets, reading results (CSV, study), running the CLI.

Import it as ``from helpers import ...`` (pytest puts ``tests/`` on the path). Nothing here
imports TensorFlow at module level; :func:`animal_mnist_npz` with ``from_splits`` and
:func:`run_model` import it when called.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

# ---------------------------------------------------------------------------------- data sets


def animal_mnist_npz(path: Path, train: int = 40, val: int = 10, test: int = 20, *,
                     classes: Sequence[str] | None = None, seed: int | None = 0,
                     from_splits: bool = False, every: int | None = None) -> Path:
    """A small .npz of the embedded Animal-MNIST (``x_``/``y_train``, ``_val``, ``_test`` and
    ``class_names``), written to ``path``; returns ``path``.

    By default the images come from its raw pool (28x28x1 grayscale, no TensorFlow): per class
    (``classes``, in that order and numbered 0.., default all ten), ``train`` then ``val`` then
    ``test`` consecutive images after shuffling them with ``seed`` (``None``: pool order).

    With ``from_splits`` they come from the stratified train/validation/test splits that
    ``load_data(None)`` carves, as 28 px RGB through the input pipeline (imports TensorFlow):
    the first ``train``/``val``/``test`` images of each class of the matching split, in split
    order, or with ``every=k`` every k-th image of each split.
    """
    from automl.data.sources import ANIMAL_MNIST_CLASSES

    arrays: dict[str, np.ndarray] = {}
    counts = {"train": train, "val": val, "test": test}
    if from_splits:
        if classes is not None:
            raise ValueError("classes= picks from the raw pool only, not from_splits")
        from automl.data import pipeline
        from automl.data.load import load_data

        full = load_data(None)
        for key, split in (("train", full.train), ("val", full.validation), ("test", full.test)):
            if every is not None:
                keep = np.arange(len(split))[::every]
            else:
                keep = np.sort(np.concatenate([np.flatnonzero(split.labels == c)[:counts[key]]
                                               for c in range(len(full.class_names))]))
            images = np.stack(list(pipeline.images(split, 28).as_numpy_iterator()))
            arrays[f"x_{key}"], arrays[f"y_{key}"] = images[keep], split.labels[keep]
        names = full.class_names
    else:
        if every is not None:
            raise ValueError("every= applies to from_splits only")
        from automl.data.sources import read_animal_mnist

        pool = read_animal_mnist().pools["train"]
        names = list(classes) if classes is not None else ANIMAL_MNIST_CLASSES
        rng = np.random.default_rng(seed) if seed is not None else None
        chunks: dict[str, list[np.ndarray]] = {key: [] for key in counts}
        for name in names:
            index = np.flatnonzero(pool.labels == ANIMAL_MNIST_CLASSES.index(name))
            if rng is not None:
                index = rng.permutation(index)
            start = 0
            for key, n in counts.items():
                chunks[key].append(index[start:start + n])
                start += n
        for key, parts in chunks.items():
            index = np.concatenate(parts)
            arrays[f"x_{key}"] = pool.array[index]
            arrays[f"y_{key}"] = np.repeat(np.arange(len(names), dtype=pool.labels.dtype),
                                           [len(p) for p in parts])
    return write_npz(path, **arrays, class_names=np.array(names))


def plain_carve(labels: np.ndarray, fractions: dict[str, float], seed: int,
                classes: int) -> dict[str, np.ndarray]:
    """The carve automl used before the grouped one (issue 17), kept as a reference: per class,
    shuffle with the seed, then take round(n * fraction) (at least 1) per split."""
    import math

    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], **{name: [] for name in fractions}}
    for c in range(classes):
        members = rng.permutation(np.flatnonzero(labels == c))
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


def write_npz(path: Path, **arrays: Any) -> Path:
    """``np.savez(path, **arrays)``; returns ``path`` (to build data sources inline)."""
    np.savez(path, **arrays)
    return path


def image_folder(root: Path, images: Mapping[str, Sequence[np.ndarray]]) -> Path:
    """An image-folder data set: ``root/<class>/<i>.png`` for each class's uint8 arrays (i from
    0 in each class); returns ``root``."""
    from PIL import Image

    for name, arrays in images.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, array in enumerate(arrays):
            Image.fromarray(np.asarray(array, np.uint8)).save(root / name / f"{i}.png")
    return root


def jpeg_copy(image: np.ndarray, side: int, quality: int) -> bytes:
    """A grey uint8 image (h, w) upscaled to ``side`` x ``side`` (bicubic) and saved as an RGB
    JPEG of ``quality``: a near copy that no content hash matches."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).resize((side, side), Image.BICUBIC).convert("RGB").save(
        buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_leaky_folder(root: Path, data: Any, copies: int,
                       seed: int) -> tuple[dict[str, np.ndarray], set[tuple[str, str]]]:
    """``data``'s splits (28x28x1 arrays) as ``root/<split>/<class>/<i>.png`` with ``copies``
    test images (drawn with ``seed``) replaced by copies of training images, each a
    :func:`jpeg_copy` at a random 42-84 px and quality 60-90, in its source's class folder
    (what ``benchmarks/leakage.py`` and the leakage tests find); returns each file's original
    28x28 pixels and the injected (train file, test file) pairs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels: dict[str, np.ndarray] = {}
    sources = rng.choice(len(data.train), copies, replace=False)
    replaced = set(rng.choice(len(data.test), copies, replace=False).tolist())
    names = data.class_names
    for split_name, split in data.splits().items():
        for i, (image, label) in enumerate(zip(split.array, split.labels, strict=True)):
            if split_name == "test" and i in replaced:
                continue
            path = root / split_name / names[label] / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0]).save(path)
            pixels[str(path)] = image[..., 0]
    injected = set()
    for k, (source, target) in enumerate(zip(sources, sorted(replaced), strict=True)):
        image = data.train.array[source, ..., 0]
        copy = jpeg_copy(image, int(rng.integers(42, 85)), int(rng.integers(60, 91)))
        label = names[data.train.labels[source]]
        path = root / "test" / label / f"copy{k:02d}_{target:05d}.jpg"
        path.write_bytes(copy)
        pixels[str(path)] = image
        injected.add((str(root / "train" / label / f"{source:05d}.png"), str(path)))
    return pixels, injected


def score_leaks(pairs: Any, injected: set[tuple[str, str]],
                pixels: dict[str, np.ndarray]) -> tuple[int, int]:
    """(injected pairs found, false pairs across splits) of ``pairs`` (``source_a, split_a,
    source_b, split_b`` columns) for :func:`write_leaky_folder`'s files: a pair is false only if
    it is neither injected nor near-identical in the original pixels (cosine >= 0.99)."""
    across = pairs[pairs["split_a"] != pairs["split_b"]]
    found = set(zip(across["source_a"], across["source_b"], strict=True))

    def unit(path: str) -> np.ndarray:
        v = pixels[path].astype(np.float64).ravel()
        return v / max(np.linalg.norm(v), 1e-12)

    false = [p for p in found - injected if unit(p[0]) @ unit(p[1]) < 0.99]
    return len(found & injected), len(false)


def folder_data(root: Path) -> Any:
    """The class folders under ``root/train``, ``validation`` [and ``test``] as the given splits
    ``load_data(root)`` makes of them (same order, names and content hashes), without
    TensorFlow: every file is taken as decodable (write only valid images there)."""
    from automl.data.sources import read_directory
    from automl.data.splits import Datasets, Split

    raw = read_directory(root, lambda paths: ([True] * len(paths), [False] * len(paths)))
    splits = {name: Split(name, pool.labels, paths=pool.paths, use_pil=pool.use_pil,
                          index=np.arange(len(pool.labels)), hashes=pool.content_hashes())
              for name, pool in raw.pools.items()}
    return Datasets(raw.class_names, splits["train"], splits["validation"], splits.get("test"),
                    str(root), "unchecked-folder")


# ------------------------------------------------------------------------- reading the results


def csv_rows(path: Path, *, missing_ok: bool = False) -> list[dict[str, str]]:
    """The rows of a CSV file (a leaderboard, a summary) as dicts of strings; with
    ``missing_ok`` a file that does not exist (yet) has no rows."""
    if missing_ok and not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def load_study(results: Path | None = None, study: str = "default", *,
               storage: str | None = None) -> Any:
    """The Optuna study a search wrote: ``<results>/<study>/study.db`` read by plain Optuna, or
    with ``storage`` (a database URL or ``journal:FILE``) through automl's own opener."""
    if storage is not None:
        from automl.search.study import open_study

        return open_study(Path(results or "."), study, storage, create=False)
    import optuna

    return optuna.load_study(study_name=study,
                             storage=f"sqlite:///{Path(results) / study / 'study.db'}")


# ----------------------------------------------------------------------------- running the CLI


class Printed(NamedTuple):
    """What a CLI run printed."""

    out: str
    err: str


def run_cli(*args: str | Path, code: int = 0) -> Printed:
    """Run ``automl *args`` in this process, assert its exit code and return what it printed.

    A refusal (``code=2``) must be one clear message: stderr starts with ``error: `` and holds
    no traceback.
    """
    from automl.cli import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            got = main([str(a) for a in args])
    finally:  # and again where pytest captures it, to be shown when the test fails
        sys.stdout.write(out.getvalue())
        sys.stderr.write(err.getvalue())
    printed = Printed(out.getvalue(), err.getvalue())
    assert got == code, f"automl exited {got}, not {code}:\n{printed.err[-2000:]}"
    if code == 2:
        assert printed.err.startswith("error: ") and "Traceback" not in printed.err, printed.err
    return printed


def cli_command(*args: str | Path) -> list[str]:
    """The command line that runs ``automl *args`` in a new Python process (for Popen)."""
    return [sys.executable, "-m", "automl.cli", *map(str, args)]


def run_cli_process(*args: str | Path, code: int = 0, env: Mapping[str, str] | None = None,
                    timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``automl *args`` in a new process (``env`` added to this one's environment), assert
    its exit code and return it with its output as text."""
    done = subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env} if env is not None else None)
    assert done.returncode == code, (f"automl exited {done.returncode}, not {code}:\n"
                                     f"{done.stderr[-2000:]}")
    return done


# --------------------------------------------------------------------- converted exports

TINY_LITE0 = """\
backbone: efficientnet_lite0
image_size: 32
freeze_depth: 1.0
head_width: 32
dropout: 0.1
learning_rate: 3.0e-3
augmentation: none
"""


#: test images of :func:`tiny_lite0_search`'s data (20 a class)
TINY_TEST_IMAGES = 200


def tiny_lite0_search(root: Path) -> Path:
    """One finished trial (pretrained Lite0 at 32 px, 3 epochs) on 40/10/20 Animal-MNIST
    images a class in ``root/results``; returns that folder (what the converted-export tests
    export: their test-split checks run over 200 images, not the default's 1,500)."""
    (root / "space.yaml").write_text(TINY_LITE0)
    data = animal_mnist_npz(root / "tiny.npz", 40, 10, TINY_TEST_IMAGES // 10)
    run_cli("search", "--space", root / "space.yaml", "--data", data, "--trials", "1",
            "--epochs", "3", "--results", root / "results")
    return root / "results"


def default_test_images(count: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` test images of the embedded default at ``size`` (as the pipeline
    resizes them) and the same images as stored (28x28x1 uint8)."""
    from automl.data import pipeline
    from automl.data.load import load_data

    data = load_data(None)
    images = np.stack(list(pipeline.images(data.test, size).take(count).as_numpy_iterator()))
    return images, np.asarray(data.test.array[:count])


def export_verified(results: Path, out: Path, fmt: str) -> tuple[str, dict[str, Any]]:
    """``automl export --format fmt`` (float32) of :func:`tiny_lite0_search`'s trial to ``out``,
    asserting what its automl.json must hold; returns what it printed and what it measured."""
    import json

    printed = run_cli("export", "--results", results, "--out", out, "--format", fmt).out
    meta = json.loads((out / "automl.json").read_text())
    measured = meta["measured"]
    assert meta["format"] == fmt and meta["image_size"] == 32
    assert measured["latency_ms"] > 0 and measured["size_mb"] > 1  # Lite0: about 3.4 M weights
    assert measured["max_abs_diff"] <= 1e-4
    accuracy = measured[f"{fmt}_test_accuracy"]
    assert accuracy > 0.3  # 10 classes: chance is 0.1
    assert abs(accuracy - measured["keras_test_accuracy"]) <= 1 / TINY_TEST_IMAGES  # one image
    return printed, measured


def assert_same_predictions(exported: Path, saved: Path, originals: np.ndarray,
                            folder: Path) -> None:
    """``automl predict`` on ``exported`` gives the SavedModel ``saved``'s top labels (and
    probabilities within 1e-4) for ``originals`` written as PNG files into ``folder``."""
    import json

    import pytest
    from PIL import Image

    files = []
    for i, original in enumerate(originals):
        pixels = original[..., 0] if original.shape[-1] == 1 else original
        Image.fromarray(pixels).save(folder / f"{i}.png")
        files.append(folder / f"{i}.png")
    from_exported = json.loads(run_cli("predict", exported, *files, "--json").out)
    from_saved = json.loads(run_cli("predict", saved, *files, "--json").out)
    for a, b in zip(from_exported, from_saved, strict=True):
        assert a["predictions"][0]["label"] == b["predictions"][0]["label"]
        assert a["predictions"][0]["probability"] == pytest.approx(
            b["predictions"][0]["probability"], abs=1e-4)


# ------------------------------------------------------------------------------------- models


def run_model(model: Any, x: Any) -> np.ndarray:
    """A Keras model's output on ``x`` in inference mode, as numpy (a direct call: ``predict``
    compiles a graph, slower for one batch)."""
    import keras

    return keras.ops.convert_to_numpy(model(x, training=False))
