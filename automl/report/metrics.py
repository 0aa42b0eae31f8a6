"""Classification metrics of predicted probabilities: confusion matrix, per-class P/R/F1, mistakes.

>>> cm = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), 3)
>>> cm.tolist()
[[1, 1, 0], [0, 1, 0], [0, 0, 1]]
>>> per_class(cm, ["a", "b", "c"])["f1"].round(3).tolist()
[0.667, 0.667, 1.0]
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def as_multiclass(probs: np.ndarray) -> np.ndarray:
    """[n, k] probabilities; a binary model's single sigmoid column becomes [1 - p, p]."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 2 and probs.shape[1] == 1:
        return np.concatenate([1.0 - probs, probs], axis=1)
    return probs


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts [true class, predicted class] (rows: truth)."""
    labels = np.asarray(labels, dtype=np.int64)
    predicted = np.asarray(predicted, dtype=np.int64)
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (labels, predicted), 1)
    return cm


def per_class(cm: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (0 where a class is never predicted/present)."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(tp), where=total > 0)
    return pd.DataFrame({"class": class_names, "precision": precision, "recall": recall,
                         "f1": f1, "support": support})


def confident_mistakes(probs: np.ndarray, labels: np.ndarray, limit: int) -> np.ndarray:
    """Indices of wrong predictions, the most confident first (at most ``limit``)."""
    probs = as_multiclass(probs)
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != np.asarray(labels))
    confidence = probs[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:limit]
