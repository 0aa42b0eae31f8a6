"""Test settings: quiet TensorFlow, no network probes, caches in a per-session folder; tiny data.

Shared helpers (data sets, reading results, running the CLI) are in ``helpers.py``.
"""

import atexit
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from helpers import animal_mnist_npz

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["AUTOML_OFFLINE"] = "1"  # tests never try a download, with or without internet
# a suite started in the background of a non-interactive shell inherits SIGINT ignored, and so
# would every search the Ctrl-C tests start (Python keeps an ignored SIGINT ignored)
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# converted weights are cached once per test session, never in the user's ~/.keras
# (pytest-xdist's workers inherit it from the main process, which removes it at exit)
if "AUTOML_HOME" not in os.environ:
    os.environ["AUTOML_HOME"] = tempfile.mkdtemp(prefix="automl-test-home-")
    atexit.register(shutil.rmtree, os.environ["AUTOML_HOME"], True)


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16/6/6 images per class of the embedded default's own splits (28 px RGB), as an .npz."""
    return animal_mnist_npz(tmp_path_factory.mktemp("data") / "tiny.npz", 16, 6, 6,
                            from_splits=True)
