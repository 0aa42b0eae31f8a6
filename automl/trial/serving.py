"""The exported inference graph: any RGB batch in, resized as training resized it, class
probabilities out, calibrated by a temperature when given one. ``automl export`` saves it as the
SavedModel; the cost measurement times it (without a temperature). :func:`probabilities` is the
graph's output step, shared by every export (the TFLite and ONNX graphs end with it too)."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

LOG_EPS = 1e-12  # as automl.trust.calibration.logits_from_probabilities clips


def probabilities(p: Any, binary: bool, temperature: Any = None) -> Any:
    """The exported output from the model's output ``p``: a binary model's sigmoid column as
    the two columns (1 - p, p), then, with a temperature T (a float or a scalar tf.Variable),
    softmax(log p / T) as :func:`automl.report.calibrate.calibrated` computes it (log p clipped
    alike); the argmax never changes."""
    p = tf.concat([1.0 - p, p], axis=-1) if binary else p
    if temperature is None:
        return p
    logits = tf.math.log(tf.clip_by_value(p, LOG_EPS, 1.0))
    return tf.nn.softmax(logits / temperature, axis=-1)


def serving_module(inference: Any, image_size: int, n_classes: int,
                   temperature: float | None = None) -> Any:
    """A tf.Module whose __call__ resizes any RGB batch and returns class probabilities.

    With ``temperature`` T the probabilities p are calibrated inside the graph:
    softmax(log p / T), which is softmax(logits / T) for a softmax output (and for a binary
    model's sigmoid p, the two columns (1 - p, p) tempered alike; :func:`probabilities`).
    The module keeps T as the variable ``temperature``.
    """
    binary = n_classes == 2

    class Classifier(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = inference
            self.temperature = (None if temperature is None else
                                tf.Variable(float(temperature), trainable=False,
                                            name="temperature", dtype=tf.float32))

        def _probs(self, images: tf.Tensor) -> tf.Tensor:
            x = tf.cast(images, tf.float32)
            x = tf.image.resize(x, (image_size, image_size), method="bilinear")
            x = tf.clip_by_value(tf.round(x), 0.0, 255.0)  # as the training pipeline stores it
            return probabilities(self.model(x, training=False), binary, self.temperature)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images: tf.Tensor) -> tf.Tensor:
            return self._probs(images)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def predict_uint8(self, images: tf.Tensor) -> tf.Tensor:
            return self._probs(images)

    return Classifier()
