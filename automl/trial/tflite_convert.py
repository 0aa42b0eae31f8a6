"""Keras model -> ``.tflite`` flatbuffer: the one converter, for ``automl export --format
tflite`` and for the float32 size the cost measurement records (:mod:`automl.trial.cost`)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from automl.errors import ConfigError

QUANTIZATIONS = ("none", "float16", "int8")


def convert(inference: Any, size: int, binary: bool, quantize: str,
            calibration: np.ndarray | None = None, temperature: float | None = None) -> bytes:
    """The inference model as a ``.tflite`` flatbuffer with a fixed ``[1, S, S, 3]`` input.

    Its output is :func:`automl.trial.serving.probabilities`: two columns for a binary model,
    calibrated inside the graph by ``temperature`` when given (as the SavedModel is).

    ``int8``: post-training quantization of weights and activations, calibrated on
    ``calibration`` (training images at the trial's size); input and output stay float32.
    ``float16``: weights stored as float16.
    """
    import tensorflow as tf

    if quantize not in QUANTIZATIONS:
        raise ConfigError(f"--quantize {quantize}: expected one of {', '.join(QUANTIZATIONS)}.")

    import keras

    from automl.trial.serving import probabilities

    def serve(image: Any) -> Any:
        return probabilities(inference(image, training=False), binary, temperature)

    # Written out with Keras' ExportArchive, which tracks the model's tf.Variables themselves.
    # A tf.Module holding the Keras 3 model (``self.model = inference``) saves a SavedModel
    # whose restore op fills copies of the variables (keras Variable._export_to_saved_model_graph
    # makes a new tf.Variable per weight) while the signature reads the originals: fine for
    # tf.saved_model.load, but the converter loads the SavedModel into a TF1 session, finds the
    # signature's variables uninitialized and leaves them as VAR_HANDLE/READ_VARIABLE ops with
    # no value, so the interpreter reads uninitialised memory (NaN). keras-team/keras#20095.
    archive = keras.export.ExportArchive()
    archive.track(inference)
    archive.add_endpoint("serving_default", serve, input_signature=[
        tf.TensorSpec([1, size, size, 3], tf.float32, name="image")])
    with tempfile.TemporaryDirectory(prefix="automl-tflite-") as folder:
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        return _convert(converter, quantize, calibration)


def _convert(converter: Any, quantize: str, calibration: np.ndarray | None) -> bytes:
    """Set the converter up for ``quantize`` and convert."""
    import tensorflow as tf

    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if calibration is None or not len(calibration):
            raise ConfigError("int8 quantization needs training images to calibrate on.")

        def representative() -> Iterator[list[np.ndarray]]:
            for image in calibration:
                yield [image[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
    try:
        return converter.convert()
    except Exception as exc:  # the converter's own errors are many and unexported
        raise ConfigError(f"TFLite conversion failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}).") from exc
