"""Test settings: quiet TensorFlow, no network probes, caches in a per-session folder; tiny data."""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["AUTOML_OFFLINE"] = "1"  # tests never try a download, with or without internet
# converted weights are cached once per test session, never in the user's ~/.keras
# (pytest-xdist's workers inherit it from the main process, which removes it at exit)
if "AUTOML_HOME" not in os.environ:
    os.environ["AUTOML_HOME"] = tempfile.mkdtemp(prefix="automl-test-home-")
    atexit.register(shutil.rmtree, os.environ["AUTOML_HOME"], True)


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a Path
    """16/6/6 images per class of the embedded Animal-MNIST (28 px), as an .npz."""
    import numpy as np

    from automl.data import pipeline
    from automl.data.load import load_data

    full = load_data(None)
    arrays = {}
    for split, key, n in ((full.train, "train", 16), (full.validation, "val", 6),
                          (full.test, "test", 6)):
        keep = np.sort(np.concatenate([np.flatnonzero(split.labels == c)[:n] for c in range(10)]))
        arrays[f"x_{key}"] = np.stack(list(pipeline.images(split, 28).as_numpy_iterator()))[keep]
        arrays[f"y_{key}"] = split.labels[keep]
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, **arrays, class_names=np.array(full.class_names))
    return path
