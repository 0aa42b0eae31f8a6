"""What the converted exports (TFLite, ONNX) share: a converted model in its runtime, its check
against the Keras model (calibrated by the temperature the converted graph holds), and writing
the export folder at once (:func:`describe`: the labels and automl.json that every export, the
SavedModel too, writes).

A converted model takes float32 RGB images (0..255) already at the trial's size ``S``;
:func:`resized_for` brings an image of any size there exactly as training resized it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from automl.atomic import staged_folder
from automl.errors import ConfigError
from automl.trial.cost import median_ms

MAX_DIFF = 1e-4  # a float32 conversion's probabilities must equal the Keras model's within this


def default_threads() -> int:
    """Runtime threads for a converted model's latency: the machine's cores, at most 4."""
    return min(4, os.cpu_count() or 1)


class ConvertedModel:
    """A converted model in its runtime: probabilities of images at its size, batch-1 latency.

    Subclasses set ``name`` (the runtime), ``threads``, ``size`` (S) and ``batch`` (images per
    runtime call in :meth:`probs`; 1 for a fixed-batch model) and implement :meth:`_call`.
    """

    name: str
    threads: int
    size: int
    batch: int = 1

    def _call(self, images: np.ndarray) -> np.ndarray:
        """Probabilities of a float32 ``[n, S, S, 3]`` batch (``n`` at most ``batch``)."""
        raise NotImplementedError

    def probs(self, images: np.ndarray) -> np.ndarray:
        """Probabilities of ``[n, S, S, 3]`` images (0..255)."""
        images = np.asarray(images, np.float32)
        return np.concatenate([self._call(images[i:i + self.batch])
                               for i in range(0, len(images), self.batch)])

    def latency_ms(self, image: np.ndarray) -> float:
        """Median wall time of a batch-1 call (after warm-up calls), in milliseconds."""
        one = np.asarray(image, np.float32)[None]
        return median_ms(lambda: self._call(one))

    def predict_image(self, image: np.ndarray) -> np.ndarray:
        """Probabilities of one RGB image of any size (resized as training resized it)."""
        return self.probs(resized_for(self.size, image))[0]


def resized_for(size: int, image: np.ndarray) -> np.ndarray:
    """One RGB image of any size as a ``[1, size, size, 3]`` float32 input, resized exactly as
    the training pipeline resizes (:func:`automl.data.images.resize_images`)."""
    from automl.data.images import resize_images

    return np.asarray(resize_images(image[None], size), np.float32)


def keras_probs(inference: Any, images: np.ndarray, binary: bool,
                temperature: float | None = None) -> np.ndarray:
    """The Keras inference model's probabilities, two columns for two classes (as exported),
    calibrated by ``temperature`` when given (:func:`automl.report.calibrate.calibrated`: the
    report's calibrated probabilities)."""
    import tensorflow as tf

    from automl.report.calibrate import calibrated

    out = [inference(tf.constant(images[i:i + 64], tf.float32), training=False).numpy()
           for i in range(0, len(images), 64)]
    p = np.concatenate(out)
    p = np.concatenate([1.0 - p, p], axis=1) if binary else p
    return p if temperature is None else calibrated(p, temperature)


@dataclass(frozen=True)
class Checked:
    """A converted model measured next to the Keras model."""

    max_abs_diff: float                 # probabilities against Keras', on the check images
    keras_test_accuracy: float | None
    test_accuracy: float | None         # the converted model's
    latency_ms: float


def check(model: ConvertedModel, inference: Any, binary: bool, check_images: np.ndarray,
          test: tuple[np.ndarray, np.ndarray] | None, what: str, exact: bool,
          temperature: float | None = None) -> Checked:
    """Run ``model`` over ``check_images`` and the test split (images at its size, labels) next
    to the Keras ``inference`` model, calibrated by ``temperature`` when the converted graph
    is, and time it. ``exact`` (a float32 conversion): a difference above :data:`MAX_DIFF`
    raises ConfigError naming ``what`` (the format)."""
    from automl.trial.run import scores

    diff = float(np.max(np.abs(model.probs(check_images)
                               - keras_probs(inference, check_images, binary, temperature))))
    if exact and not diff <= MAX_DIFF:
        raise ConfigError(f"export check failed: the {what} model's probabilities differ from "
                          f"the {'calibrated ' if temperature is not None else ''}Keras model's "
                          f"by {diff:.3g}; nothing was written.")
    keras_acc = acc = None
    if test is not None:
        images, labels = test
        keras_acc = scores(keras_probs(inference, images, binary, temperature), labels)[1]
        acc = scores(model.probs(images), labels)[1]
    return Checked(diff, keras_acc, acc, model.latency_ms(check_images[0]))


def describe(folder: Path, class_names: list[str], row: Any, **fields: Any) -> None:
    """labels.txt (class names in output order) and automl.json (the trial, its format and
    configuration, the classes, its image size and ``fields``) in an export ``folder``."""
    from automl.config import TrialConfig

    (folder / "labels.txt").write_text("\n".join(class_names) + "\n", encoding="utf-8")
    meta = {"trial": int(row["trial"]), "format": fields.pop("format"),
            "config": TrialConfig.from_params(row.to_dict()).as_dict(),
            "classes": class_names, "image_size": int(row["image_size"]), **fields}
    (folder / "automl.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def write_export(out: Path, files: dict[str, bytes], class_names: list[str], row: Any,
                 fmt: str, input_note: str, report: Any) -> None:
    """``files``, labels.txt and automl.json into ``out`` at once: written to a staging folder
    beside it, which then replaces ``out``. ``report`` (the export's report, a dataclass) goes
    into automl.json as ``measured``, except its ``calibration`` (a
    :class:`~automl.report.calibrate.Calibration` or None), which is written as the SavedModel
    export writes it: ``calibration`` (T, NLL and ECE before and after)."""
    measured = asdict(report)
    calibration = measured.pop("calibration", None)
    with staged_folder(out) as staging:
        for name, content in files.items():
            (staging / name).write_bytes(content)
        describe(staging, class_names, row, format=fmt, input=input_note,
                 calibration=calibration, measured=measured)
