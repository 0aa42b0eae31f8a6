"""TensorFlow imported without its start-up chatter (the CLI and the trial worker call it)."""

from __future__ import annotations

import logging
import os
import sys

_TF_NOISE = ("cudart_stub", "cuInit", "cuda_platform", "absl::InitializeLog", "oneDNN",
             "cpu_feature_guard", "TF_ENABLE_ONEDNN_OPTS", "rebuild TensorFlow")


def quiet_tensorflow() -> None:
    """Import TensorFlow with its start-up chatter about missing GPUs filtered out of stderr."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("absl").setLevel(logging.ERROR)
    import tempfile
    import warnings

    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
            tf.get_logger().setLevel(logging.ERROR)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        for line in capture.read().decode(errors="replace").splitlines():
            if line.strip() and not any(noise in line for noise in _TF_NOISE):
                print(line, file=sys.stderr)
