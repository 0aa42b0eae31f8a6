"""cifar10 / cifar100 / mnist / fashion_mnist through ``keras.datasets`` (needs internet once)."""

from __future__ import annotations

import socket

import numpy as np

from automl.data.sources import KERAS_DATASETS, RawData, array_pool
from automl.errors import DataError


def read_keras_dataset(name: str) -> RawData:
    """cifar10 / cifar100 / mnist / fashion_mnist via keras (downloads once, then cached)."""
    import keras

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # urlretrieve has no timeout of its own: never hang forever
    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as exc:
        raise DataError(f"Downloading the '{name}' dataset with keras.datasets failed ({exc}). "
                        "It needs internet access the first time; offline, pass --data with a "
                        "folder of class sub-folders or an .npz file instead.") from exc
    finally:
        socket.setdefaulttimeout(previous)

    def to_images(x: np.ndarray) -> np.ndarray:
        return x[..., None] if x.ndim == 3 else x

    return RawData(list(KERAS_DATASETS[name]), {
        "train": array_pool(f"{name} training images", to_images(x_train), y_train.reshape(-1),
                             "x_train"),
        "test": array_pool(f"{name} test images", to_images(x_test), y_test.reshape(-1),
                            "x_test"),
    })
