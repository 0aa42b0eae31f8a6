"""The exported inference graph: any RGB batch in, resized as training resized it, class
probabilities out. ``automl export`` saves it as the SavedModel; the cost measurement times it."""

from __future__ import annotations

from typing import Any

import tensorflow as tf


def serving_module(inference: Any, image_size: int, n_classes: int) -> Any:
    """A tf.Module whose __call__ resizes any RGB batch and returns class probabilities."""
    binary = n_classes == 2

    class Classifier(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = inference

        def _probs(self, images: tf.Tensor) -> tf.Tensor:
            x = tf.cast(images, tf.float32)
            x = tf.image.resize(x, (image_size, image_size), method="bilinear")
            x = tf.clip_by_value(tf.round(x), 0.0, 255.0)  # as the training pipeline stores it
            p = self.model(x, training=False)
            return tf.concat([1.0 - p, p], axis=-1) if binary else p

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images: tf.Tensor) -> tf.Tensor:
            return self._probs(images)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def predict_uint8(self, images: tf.Tensor) -> tf.Tensor:
            return self._probs(images)

    return Classifier()
