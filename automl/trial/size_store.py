"""The float32 ``.tflite`` sizes this machine has converted (TensorFlow-free: the search process
reads it too).

Converting a backbone takes 10-15 s and its float32 file does not depend on the image size, so
each (backbone, number of classes) is converted once per machine and TensorFlow version and kept
in ``<AUTOML_HOME>/cost/tflite_bytes.json``. A search without limits converts in a background
process (:mod:`automl.trial.background_sizes`); a search with limits, in the trial worker.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

from automl.atomic import write_atomic
from automl.paths import automl_home


def store_path() -> Path:
    return automl_home() / "cost" / "tflite_bytes.json"


def tensorflow_version() -> str:
    """The installed TensorFlow's version, read without importing it."""
    for name in ("tensorflow", "tensorflow-cpu", "tensorflow-macos"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def _key(backbone: str, n_classes: int) -> str:
    return f"{backbone}|classes={int(n_classes)}|tensorflow={tensorflow_version()}"


def _read() -> dict[str, int]:
    try:
        known = json.loads(store_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def known_bytes(backbone: str, n_classes: int) -> int | None:
    """The remembered float32 ``.tflite`` size, or None if it was never converted here."""
    value = _read().get(_key(backbone, n_classes))
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def remember(backbone: str, n_classes: int, nbytes: int) -> None:
    """Keep a converted size, merged with what other processes keep (two search workers on one
    machine convert at once: the read and the write hold a lock); a read-only home just
    converts again next time."""
    store = store_path()
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        with open(store.with_suffix(".lock"), "a") as lock:
            _lock(lock)
            known = _read()
            known[_key(backbone, n_classes)] = int(nbytes)
            write_atomic(store, lambda p: p.write_text(json.dumps(known, indent=1),
                                                       encoding="utf-8"))
    except OSError:
        pass


def _lock(handle: Any) -> None:
    """An exclusive lock on an open file until it is closed (POSIX; elsewhere none)."""
    try:
        import fcntl
    except ImportError:
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
