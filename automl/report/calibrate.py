"""Temperature scaling of a trained model (issue 17): one temperature fitted on the validation
split's probabilities, measured on the test split (NLL and 15-bin ECE before and after).

``automl export`` fits it with :func:`calibrate_model` and keeps it inside every exported graph
(:func:`automl.trial.serving.probabilities`: the SavedModel, the TFLite and the ONNX model);
``automl report`` fits it again the same way on the same model, so the report's calibrated
probabilities are the exported model's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from automl.data import pipeline
from automl.report import metrics
from automl.trust.calibration import (
    DEFAULT_BINS,
    calibration_bins,
    expected_calibration_error,
    fit_temperature,
    logits_from_probabilities,
    nll,
    softmax,
)

__all__ = ["Calibration", "calibrate", "calibrate_model", "calibrated", "predict_probabilities",
           "reliability"]


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and what it does on the split it is measured on."""

    temperature: float
    fitted_on: str        # "validation"
    measured_on: str      # "test" ("validation" when the data has no test split)
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    bins: int = DEFAULT_BINS

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line: T, then NLL and ECE before -> after."""
        return (f"temperature {self.temperature:.4g} (fitted on the {self.fitted_on} split); "
                f"{self.measured_on} NLL {self.nll_before:.4f} -> {self.nll_after:.4f}, "
                f"ECE ({self.bins} bins) {self.ece_before:.4f} -> {self.ece_after:.4f}")


def predict_probabilities(tm: Any, split: Any, size: int) -> np.ndarray:
    """(n, k) probabilities of a rebuilt trial model over a split (binary: two columns)."""
    import tensorflow as tf

    batches = pipeline.dataset(split, size, 256).map(lambda x, y: x)
    return metrics.as_multiclass(tm.inference.predict(batches.prefetch(tf.data.AUTOTUNE),
                                                      verbose=0))


def calibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): what the exported graph computes (float64 here)."""
    return softmax(logits_from_probabilities(probabilities), temperature)


def calibrate(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray | None,
              test_labels: np.ndarray | None) -> Calibration:
    """Fit T on the validation probabilities; NLL and ECE on the test split before and after
    (on the validation split when there is no test split)."""
    val_labels = np.asarray(val_labels, np.int64)
    t = fit_temperature(logits_from_probabilities(val_probs), val_labels)
    where = "test" if test_probs is not None else "validation"
    probs = test_probs if test_probs is not None else val_probs
    labels = np.asarray(test_labels if test_probs is not None else val_labels, np.int64)
    logits = logits_from_probabilities(probs)
    return Calibration(t, "validation", where, nll(logits, labels), nll(logits, labels, t),
                       expected_calibration_error(softmax(logits), labels),
                       expected_calibration_error(softmax(logits, t), labels))


def calibrate_model(tm: Any, validation: Any, test: Any | None, size: int) -> Calibration:
    """:func:`calibrate` a rebuilt trial model: T fitted on its probabilities over the
    ``validation`` split, measured on the ``test`` split (a ``Split``, or None)."""
    return calibrate(predict_probabilities(tm, validation, size), validation.labels,
                     None if test is None else predict_probabilities(tm, test, size),
                     None if test is None else test.labels)


def reliability(probs: np.ndarray, labels: np.ndarray, temperature: float) -> pd.DataFrame:
    """Reliability-diagram bins before and after: columns of :func:`calibration_bins` plus
    ``which`` ("before" / "after")."""
    labels = np.asarray(labels, np.int64)
    before = calibration_bins(probs, labels).assign(which="before")
    after = calibration_bins(calibrated(probs, temperature), labels).assign(which="after")
    return pd.concat([before, after], ignore_index=True)
