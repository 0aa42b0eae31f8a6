"""What an architecture costs to serve, measured on this machine once, outside any trial.

Cost depends on the architecture (backbone, image size, head width), not on the weights, so the
backbone is built with random weights (no weights file read) and measured once per (backbone,
image size) as the exported graph serves it (:func:`automl.trial.serving.serving_module`:
resize, preprocessing, backbone, pooling, a linear head):

- ``latency_ms``: the median of ``LATENCY_CALLS`` batch-1 calls on an image already at the
  size, after ``LATENCY_WARMUP`` warm-up calls;
- ``throughput_ips``: images a second at batch ``THROUGHPUT_BATCH``;
- ``tflite_bytes``: the float32 ``.tflite`` file of that graph at a fixed [1, S, S, 3] input.
  Its weights do not depend on S, and converting takes ~10 s, so it is converted once per
  backbone and number of classes and kept (:mod:`automl.trial.size_store`) for every later
  search on this machine. A search without limits converts in a niced background process
  (:mod:`automl.trial.background_sizes`) and ``measure`` only looks the size up.

A hidden head layer of width w (:func:`head_costs`) adds its parameters (4 bytes each in the
float32 file) and its own measured batch-1 latency. :func:`measure` returns both parts; the
search process (:mod:`automl.search.cost`) keeps them in the study and adds them up.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from automl.backbones.registry import get_spec
from automl.config import TrialConfig
from automl.trial import size_store

LATENCY_CALLS, LATENCY_WARMUP = 50, 10
THROUGHPUT_BATCH, THROUGHPUT_CALLS = 32, 3
_HEAD_REPEATS, _HEAD_CALLS = 200, 5


def median_ms(call: Callable[[], Any], calls: int = LATENCY_CALLS,
              warmup: int = LATENCY_WARMUP) -> float:
    """Median wall time of ``calls`` calls of ``call`` (after ``warmup`` untimed ones), in ms:
    the one latency rule of the cost measurement and of the verified exports."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def _config(backbone: str, image_size: int, head_width: int) -> TrialConfig:
    return TrialConfig.from_params({"backbone": backbone, "image_size": image_size,
                                    "freeze_depth": 1.0, "head_width": head_width,
                                    "dropout": 0.0, "learning_rate": 1e-3,
                                    "augmentation": "none"})


def convert_size(backbone: str, image_size: int, n_classes: int,
                 model: Any | None = None) -> int:
    """The float32 .tflite size of ``backbone``'s inference graph as ``automl export --format
    tflite`` converts it (``model``: one built already, else built with random weights),
    converted once per machine, backbone and number of classes, then remembered."""
    from automl.trial.tflite_convert import convert

    known = size_store.known_bytes(backbone, n_classes)
    if known is not None:
        return known
    if model is None:
        from automl.trial.model import build_model

        model = build_model(_config(backbone, image_size, 0), get_spec(backbone), n_classes,
                            None).inference
    with contextlib.redirect_stdout(io.StringIO()):  # the converter's chatter
        nbytes = len(convert(model, image_size, n_classes == 2, "none"))
    size_store.remember(backbone, n_classes, nbytes)
    return nbytes


def head_costs(features: int, widths: list[int], n_classes: int) -> dict[int, dict[str, float]]:
    """Per head width, against a linear head: the parameters a hidden layer adds (its own, and
    the output layer's change from ``features`` to ``width`` inputs) and its batch-1 latency.

    A hidden layer costs microseconds, less than one call into TensorFlow, so it is timed
    ``_HEAD_REPEATS`` times in one compiled loop, each application depending on the last.
    """
    import keras
    import tensorflow as tf

    out: dict[int, dict[str, float]] = {}
    x = tf.constant(np.zeros((1, features), np.float32))
    for width in widths:
        if width <= 0:
            out[width] = {"params": 0, "latency_ms": 0.0}
            continue
        hidden = keras.layers.Dense(width, activation="relu")
        output = keras.layers.Dense(n_classes)
        hidden.build((None, features))
        output.build((None, width))
        linear = keras.layers.Dense(n_classes)
        linear.build((None, features))

        def chained(v: Any, head: Any) -> Any:
            def body(i: Any, acc: Any) -> tuple[Any, Any]:
                return i + 1, acc + tf.reduce_sum(head(v + acc * 0.0))
            return tf.while_loop(lambda i, _: i < _HEAD_REPEATS, body,
                                 (tf.constant(0), tf.constant(0.0)))[1]

        hidden_fn = tf.function(lambda v, h=hidden, o=output: chained(v, lambda u: o(h(u))))
        linear_fn = tf.function(lambda v, lin=linear: chained(v, lin))
        with_hidden = median_ms(lambda f=hidden_fn: f(x).numpy(), _HEAD_CALLS, 2)
        without = median_ms(lambda f=linear_fn: f(x).numpy(), _HEAD_CALLS, 2)
        extra = features * width + width + (width - features) * n_classes
        out[width] = {"params": int(extra),
                      "latency_ms": max(0.0, with_hidden - without) / _HEAD_REPEATS}
    return out


def measure(backbone: str, image_size: int, n_classes: int, head_widths: list[int],
            features: int | None = None, convert: bool = True) -> dict[str, Any]:
    """The cost of (backbone, image size) with a linear head, and of each hidden head width.

    ``{"backbone": {latency_ms, throughput_ips, params, tflite_bytes} | None, "features": F,
    "heads": {width: {params, latency_ms}}, "seconds": s}``. Given ``features`` (the backbone's
    output width, from an earlier measurement) only the heads are measured: no backbone is built.
    ``convert`` False: the size is only looked up (None until :func:`convert_size` ran, in the
    background process of a search without limits).
    """
    import tensorflow as tf

    from automl.trial.model import build_model, reset_keras
    from automl.trial.serving import serving_module

    start = time.perf_counter()
    reset_keras(0)
    part = None
    if features is None:
        tm = build_model(_config(backbone, image_size, 0), get_spec(backbone), n_classes, None)
        features = int(tm.head.inputs[0].shape[-1])
        module = serving_module(tm.inference, image_size, n_classes)
        call = module.__call__.get_concrete_function()
        rng = np.random.default_rng(0)
        one = tf.constant(rng.uniform(0, 255, (1, image_size, image_size, 3)), tf.float32)
        many = tf.constant(rng.uniform(0, 255, (THROUGHPUT_BATCH, image_size, image_size, 3)),
                           tf.float32)
        latency = median_ms(lambda: call(one).numpy())
        batch_ms = median_ms(lambda: call(many).numpy(), THROUGHPUT_CALLS, 1)
        part = {"latency_ms": latency, "throughput_ips": THROUGHPUT_BATCH * 1000.0 / batch_ms,
                "params": int(tm.inference.count_params()),
                "tflite_bytes": (convert_size(backbone, image_size, n_classes, tm.inference)
                                 if convert else size_store.known_bytes(backbone, n_classes))}
    heads = head_costs(features, head_widths, n_classes)
    seconds = time.perf_counter() - start
    reset_keras(0)
    return {"backbone": part, "features": features, "heads": heads, "seconds": seconds}
