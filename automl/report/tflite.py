"""TFLite export of a trained trial, verified: convert, run the converted model over the test
split next to the Keras model, measure its latency and size, write what was measured.

The ``.tflite`` model takes one float32 image ``[1, S, S, 3]`` (RGB, 0..255) at the trial's
size ``S`` and returns class probabilities (two columns for two classes), calibrated inside
the graph by the temperature the SavedModel export holds (fitted on the validation split);
``automl predict`` resizes images to ``S`` outside the graph, as the training pipeline does.
Augmentation layers are never part of the exported graph (the inference model has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from automl.report.converted import ConvertedModel, check, default_threads, write_export
from automl.trial.tflite_convert import convert

TFLITE_NOTE = ("model.tflite: image [1, S, S, 3] float32 RGB 0..255 at the trial's size S "
               "-> probabilities, calibrated (softmax(log p / temperature))")
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
    max_abs_diff: float          # TFLite against calibrated Keras probabilities (check images)
    float32_size_mb: float       # the float32 conversion of the same model, for comparison
    float32_latency_ms: float
    calibration: Any = None      # automl.report.calibrate.Calibration in the graph, or None


def interpreter_class() -> tuple[Any, str]:
    """The LiteRT interpreter (``ai-edge-litert``) where it is installed, else TensorFlow's."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai-edge-litert"
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter, f"tensorflow {tf.__version__} tf.lite"


class TFLiteModel(ConvertedModel):
    """A converted model in an interpreter (fixed batch 1)."""

    def __init__(self, content: bytes, threads: int) -> None:
        cls, self.name = interpreter_class()
        self.threads = threads
        self._it = cls(model_content=content, num_threads=threads)
        self._it.allocate_tensors()
        self._in = self._it.get_input_details()[0]
        self._out = self._it.get_output_details()[0]
        self.size = int(self._in["shape"][1])

    def _call(self, images: np.ndarray) -> np.ndarray:
        self._it.set_tensor(self._in["index"], images)
        self._it.invoke()
        return np.array(self._it.get_tensor(self._out["index"]))


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
                  calibration: np.ndarray | None, fit: Any = None,
                  threads: int | None = None) -> TFLiteReport:
    """Write ``out`` (model.tflite, labels.txt, automl.json) after verifying the conversion.

    ``calibration``: training images for int8 quantization. ``fit`` (a
    :class:`~automl.report.calibrate.Calibration`, or None): its temperature goes inside the
    graph and its T, NLL and ECE into automl.json. The converted model runs over
    ``check_images`` and the test split (images at the trial's size, labels) next to the Keras
    model, calibrated alike. A float32 conversion must give the Keras model's probabilities
    within 1e-4, else nothing is written; a quantized one records both test accuracies.
    Latency is measured with ``threads`` interpreter threads for the written model and for the
    float32 conversion of the same model (its size too), to compare.
    """
    size = int(row["image_size"])
    binary = len(class_names) == 2
    threads = threads or default_threads()
    temperature = None if fit is None else fit.temperature
    float_content = convert(tm.inference, size, binary, "none", temperature=temperature)
    content = float_content if quantize == "none" else convert(
        tm.inference, size, binary, quantize, calibration, temperature)
    model = TFLiteModel(content, threads)
    checked = check(model, tm.inference, binary, check_images, test, "TFLite",
                    exact=quantize == "none", temperature=temperature)
    float_latency = checked.latency_ms if quantize == "none" else \
        TFLiteModel(float_content, threads).latency_ms(check_images[0])
    report = TFLiteReport(
        str(out), int(row["trial"]), quantize, model.name, threads, len(content) / 1e6,
        checked.latency_ms, checked.keras_test_accuracy, checked.test_accuracy,
        checked.max_abs_diff, len(float_content) / 1e6, float_latency, fit)
    write_export(Path(out), {"model.tflite": content}, class_names, row, "tflite", TFLITE_NOTE,
                 report)
    return report
