"""The exported graph (automl.trial.serving): a temperature inside it calibrates softmax and
sigmoid outputs as automl.report.calibrate computes them, and never changes the argmax."""

from __future__ import annotations

import numpy as np
import pytest

from automl.report.calibrate import calibrated
from automl.report.metrics import as_multiclass


@pytest.mark.parametrize(("classes", "temperature"), [(2, 1.7), (5, 0.6), (5, 2.5)])
def test_temperature_in_the_graph_matches_numpy(classes: int, temperature: float) -> None:
    import keras
    import tensorflow as tf

    from automl.trial.serving import serving_module

    keras.utils.set_random_seed(0)
    units, activation = (1, "sigmoid") if classes == 2 else (classes, "softmax")
    image = keras.Input((8, 8, 3))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 32)(image))
    model = keras.Model(image, keras.layers.Dense(units, activation=activation)(x))
    images = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3)).astype(np.float32)
    plain = as_multiclass(model.predict(images, verbose=0))
    served = serving_module(model, 8, classes, temperature)(tf.constant(images)).numpy()
    np.testing.assert_allclose(served, calibrated(plain, temperature), atol=1e-6)
    assert np.array_equal(served.argmax(axis=1), plain.argmax(axis=1))
    assert served.shape == (16, classes)
    untouched = serving_module(model, 8, classes)(tf.constant(images)).numpy()
    np.testing.assert_allclose(untouched, plain, atol=1e-6)
