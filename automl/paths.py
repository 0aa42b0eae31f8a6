"""Where automl keeps its caches (converted weights) on the user's machine."""

from __future__ import annotations

import os
from pathlib import Path


def automl_home() -> Path:
    """The cache root: $AUTOML_HOME, else <Keras home>/automl (Keras home: $KERAS_HOME)."""
    explicit = os.environ.get("AUTOML_HOME")
    if explicit:
        return Path(explicit).expanduser()
    keras_home = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    return Path(keras_home).expanduser() / "automl"


def keras_models_dir() -> Path:
    """The folder where Keras keeps downloaded application weights (``keras.utils.get_file``)."""
    keras_home = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    return Path(keras_home).expanduser() / "models"
