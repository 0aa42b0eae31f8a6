"""TFLite export of a trained trial, verified: convert, run the converted model over the test
split next to the Keras model, measure its latency and size, write what was measured.

The ``.tflite`` model takes one float32 image ``[1, S, S, 3]`` (RGB, 0..255) at the trial's
size ``S`` and returns class probabilities (two columns for two classes, as the SavedModel);
``automl predict`` resizes images to ``S`` outside the graph, as the training pipeline does.
Augmentation layers are never part of the exported graph (the inference model has none).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from automl.errors import ConfigError
from automl.trial.tflite_convert import convert

TFLITE_NOTE = ("model.tflite: image [1, S, S, 3] float32 RGB 0..255 at the trial's size S "
               "-> probabilities")
#: batch-1 calls timed (after the warm-up calls) for a latency figure: their median
LATENCY_CALLS, LATENCY_WARMUP = 50, 10
CALIBRATION_IMAGES = 200  # training images that calibrate int8 post-training quantization


@dataclass(frozen=True)
class TFLiteReport:
    """What a TFLite export wrote and measured (also written to ``automl.json``)."""

    out: str
    trial: int
    quantize: str
    interpreter: str
    threads: int
    size_mb: float
    latency_ms: float
    keras_test_accuracy: float | None
    tflite_test_accuracy: float | None
    max_abs_diff: float          # TFLite against Keras probabilities, on the check images
    float32_size_mb: float       # the float32 conversion of the same model, for comparison
    float32_latency_ms: float


def interpreter_class() -> tuple[Any, str]:
    """The LiteRT interpreter (``ai-edge-litert``) where it is installed, else TensorFlow's."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter, f"tensorflow {tf.__version__} tf.lite"


class TFLiteModel:
    """A converted model in an interpreter: probabilities and batch-1 latency."""

    def __init__(self, content: bytes, threads: int) -> None:
        cls, self.name = interpreter_class()
        self.threads = threads
        self._it = cls(model_content=content, num_threads=threads)
        self._it.allocate_tensors()
        self._in = self._it.get_input_details()[0]
        self._out = self._it.get_output_details()[0]
        self.size = int(self._in["shape"][1])

    def _call(self, image: np.ndarray) -> np.ndarray:
        self._it.set_tensor(self._in["index"], image[None].astype(np.float32))
        self._it.invoke()
        return np.array(self._it.get_tensor(self._out["index"])[0])

    def probs(self, images: np.ndarray) -> np.ndarray:
        """Probabilities of ``[n, S, S, 3]`` images (0..255), one interpreter call each."""
        return np.stack([self._call(image) for image in images])

    def latency_ms(self, image: np.ndarray) -> float:
        """Median wall time of a batch-1 call (after warm-up calls), in milliseconds."""
        for _ in range(LATENCY_WARMUP):
            self._call(image)
        times = []
        for _ in range(LATENCY_CALLS):
            start = time.perf_counter()
            self._call(image)
            times.append(time.perf_counter() - start)
        return 1000.0 * statistics.median(times)


def calibration_images(split: Any, size: int, count: int = CALIBRATION_IMAGES,
                       seed: int = 0) -> np.ndarray:
    """``count`` training images at ``size``, drawn evenly at random (seeded)."""
    from automl.data import pipeline

    images = pipeline.resized_tensor(split, size).numpy() if split.array is not None else \
        np.stack(list(pipeline.images(split, size).as_numpy_iterator()))
    pick = np.random.default_rng(seed).permutation(len(images))[:count]
    return images[np.sort(pick)]


def export_tflite(tm: Any, row: Any, class_names: list[str], out: Path, quantize: str,
                  check_images: np.ndarray, test: tuple[np.ndarray, np.ndarray] | None,
                  calibration: np.ndarray | None, threads: int | None = None) -> TFLiteReport:
    """Write ``out`` (model.tflite, labels.txt, automl.json) after verifying the conversion.

    The converted model runs over ``check_images`` and the test split (images at the trial's
    size, labels) next to the Keras model. A float32 conversion must give the Keras model's
    probabilities within 1e-4, else nothing is written; a quantized one records both test
    accuracies. Latency is measured with ``threads`` interpreter threads for the written model
    and for the float32 conversion of the same model (its size too), to compare.
    """
    from automl.trial.run import scores

    size = int(row["image_size"])
    binary = len(class_names) == 2
    threads = threads or min(4, os.cpu_count() or 1)

    def keras_probs(images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        out = [tm.inference(tf.constant(images[i:i + 64], tf.float32), training=False).numpy()
               for i in range(0, len(images), 64)]
        p = np.concatenate(out)
        return np.concatenate([1.0 - p, p], axis=1) if binary else p

    float_content = convert(tm.inference, size, binary, "none")
    content = float_content if quantize == "none" else convert(
        tm.inference, size, binary, quantize, calibration)
    model = TFLiteModel(content, threads)
    reference = model if quantize == "none" else TFLiteModel(float_content, threads)
    diff = float(np.max(np.abs(model.probs(check_images) - keras_probs(check_images))))
    if quantize == "none" and not diff <= 1e-4:
        raise ConfigError(f"export check failed: the TFLite model's probabilities differ from "
                          f"the Keras model's by {diff:.3g}; nothing was written.")
    keras_acc = tflite_acc = None
    if test is not None:
        images, labels = test
        keras_acc = scores(keras_probs(images), labels)[1]
        tflite_acc = scores(model.probs(images), labels)[1]
    latency = model.latency_ms(check_images[0])
    report = TFLiteReport(
        str(out), int(row["trial"]), quantize, model.name, threads, len(content) / 2**20,
        latency, keras_acc, tflite_acc, diff, len(float_content) / 2**20,
        latency if reference is model else reference.latency_ms(check_images[0]))
    _write(Path(out), content, class_names, row, report)
    return report


def _write(out: Path, content: bytes, class_names: list[str], row: Any,
           report: TFLiteReport) -> None:
    """model.tflite, labels.txt and automl.json into ``out`` at once (a staging folder)."""
    from automl.config import TrialConfig

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent.resolve()))
    try:
        (staging / "model.tflite").write_bytes(content)
        (staging / "labels.txt").write_text("\n".join(class_names) + "\n", encoding="utf-8")
        meta = {"trial": report.trial, "format": "tflite",
                "config": TrialConfig.from_params(row.to_dict()).as_dict(),
                "classes": class_names, "image_size": int(row["image_size"]),
                "input": TFLITE_NOTE, "measured": asdict(report)}
        (staging / "automl.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def resized_for(model: TFLiteModel, image: np.ndarray) -> np.ndarray:
    """One RGB image of any size as the model's ``[1, S, S, 3]`` input, resized exactly as the
    training pipeline resizes (:func:`automl.data.images.resize_images`)."""
    from automl.data.images import resize_images

    return np.asarray(resize_images(image[None], model.size), np.float32)
