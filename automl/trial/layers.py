"""Keras layers automl puts inside every model, so exported models carry their preprocessing."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
MODES = ("caffe", "tf", "torch", "none")


@keras.saving.register_keras_serializable(package="automl")
class Preprocess(keras.layers.Layer):
    """Map RGB pixels in 0..255 to what a backbone family expects.

    Same arithmetic as ``keras.applications.imagenet_utils.preprocess_input``: "caffe" (BGR minus
    the ImageNet mean), "tf" (scale to -1..1), "torch" (0..1 then ImageNet mean/std), "none"
    (the backbone scales its input itself).
    """

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"preprocess mode must be one of {MODES}; got {mode!r}")
        self.mode = mode

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, "float32")
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(_IMAGENET_MEAN, "float32")
            std = ops.convert_to_tensor(_IMAGENET_STD, "float32")
            return (x / 255.0 - mean) / std
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, "float32")
        return x

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="automl")
class Probabilities(keras.layers.Layer):
    """The exported output step (:func:`automl.trial.serving.probabilities`) as a layer: a
    binary model's sigmoid column as two columns, calibrated by ``temperature`` when given. It
    ends ``model.keras`` and the ONNX graph, so they serve what the SavedModel serves."""

    def __init__(self, binary: bool, temperature: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.binary = bool(binary)
        self.temperature = None if temperature is None else float(temperature)

    def call(self, p: Any) -> Any:
        from automl.trial.serving import probabilities

        return probabilities(p, self.binary, self.temperature)

    def compute_output_shape(self, shape: Any) -> Any:
        return (*shape[:-1], 2) if self.binary else tuple(shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "binary": self.binary, "temperature": self.temperature}


def with_probabilities(inference: keras.Model, binary: bool,
                       temperature: float | None) -> keras.Model:
    """``inference`` ending with :class:`Probabilities` (itself when that changes nothing)."""
    if not binary and temperature is None:
        return inference
    image = keras.Input(inference.inputs[0].shape[1:], name="image")
    p = inference(image, training=False)
    return keras.Model(image, Probabilities(binary, temperature, name="probabilities")(p),
                       name=f"{inference.name}_served")


def augmentation_layers(policy: str, seed: int) -> list[keras.layers.Layer]:
    """The Keras preprocessing layers of an augmentation policy (active only in training).

    flip = horizontal flip; light = flip + ~10% rotation, zoom and shift; heavy = flip + 30°
    rotation + 20% zoom + 10% shift + contrast.
    """
    L = keras.layers
    if policy == "none":
        return []
    layers: list[keras.layers.Layer] = [L.RandomFlip("horizontal", seed=seed)]
    if policy == "light":
        layers += [L.RandomRotation(0.1 / 2, fill_mode="nearest", seed=seed + 1),  # ±18°
                   L.RandomZoom(0.1, fill_mode="nearest", seed=seed + 2),
                   L.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed + 3)]
    elif policy == "heavy":
        layers += [L.RandomRotation(30 / 360, fill_mode="nearest", seed=seed + 1),
                   L.RandomZoom(0.2, fill_mode="nearest", seed=seed + 2),
                   L.RandomTranslation(0.1, 0.1, fill_mode="nearest", seed=seed + 3),
                   L.RandomContrast(0.2, value_range=(0, 255), seed=seed + 4)]
    elif policy != "flip":
        raise ValueError(f"unknown augmentation policy {policy!r}")
    return layers
