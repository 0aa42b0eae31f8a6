"""Calibrated probabilities: temperature scaling fitted on validation logits, negative
log-likelihood, expected calibration error (equal-width bins) and reliability-diagram bins.

Logits are (n, k) pre-softmax scores; a model that outputs probabilities gives them through
:func:`logits_from_probabilities` (log p: softmax(log p / T) is p sharpened or softened).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["calibration_bins", "expected_calibration_error", "fit_temperature",
           "logits_from_probabilities", "nll", "softmax"]

DEFAULT_BINS = 15


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float64, stable).

    >>> softmax(np.array([[0.0, np.log(3.0)]])).round(3).tolist()
    [[0.25, 0.75]]
    """
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def logits_from_probabilities(probabilities: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """log p, clipped at ``eps``; one sigmoid column p becomes the two columns (1 - p, p)."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = np.concatenate([1.0 - p, p], axis=1)
    return np.log(np.clip(p, eps, 1.0))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``.

    >>> round(nll(np.array([[0.0, 0.0]]), np.array([1])), 4)  # log 2
    0.6931
    """
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    y = _labels(labels, z)
    top = z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(log_norm - z[np.arange(len(y)), y]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray,
                    bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T in ``bounds`` minimising :func:`nll` (a bounded search over log T).

    The NLL at the returned T is never above the NLL at T = 1 (when 1 is within ``bounds``).
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    _labels(labels, z)
    if not 0 < bounds[0] < bounds[1]:
        raise ValueError(f"bounds must be 0 < low < high, got {bounds!r}")
    found = minimize_scalar(lambda log_t: nll(z, labels, float(np.exp(log_t))),
                            bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                            options={"xatol": 1e-6})
    t = float(np.exp(found.x))
    if bounds[0] <= 1.0 <= bounds[1] and nll(z, labels, 1.0) < nll(z, labels, t):
        return 1.0
    return t


def calibration_bins(probabilities: np.ndarray, labels: np.ndarray,
                     bins: int = DEFAULT_BINS) -> pd.DataFrame:
    """Reliability-diagram data: per equal-width bin of top-class confidence (right-closed,
    the first also holds 0), its ``lower`` and ``upper`` edge, ``count``, mean ``confidence``
    and ``accuracy`` (NaN when empty)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = _labels(labels, p)
    if bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(which, confidence, minlength=bins) / count
        acc = np.bincount(which, correct, minlength=bins) / count
    return pd.DataFrame({"lower": edges[:-1], "upper": edges[1:], "count": count,
                         "confidence": conf, "accuracy": acc})


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray,
                               bins: int = DEFAULT_BINS) -> float:
    """ECE: sum over bins of (count / n) * |accuracy - confidence| (:func:`calibration_bins`).

    >>> probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.3, 0.7]])
    >>> round(expected_calibration_error(probs, np.array([0, 1, 1, 1])), 4)
    0.375
    """
    table = calibration_bins(probabilities, labels, bins)
    used = table[table["count"] > 0]
    n = used["count"].sum()
    return float((used["count"] / n * (used["accuracy"] - used["confidence"]).abs()).sum())


def _labels(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"expected (n, k >= 2) scores, got shape {scores.shape}")
    y = np.asarray(labels)
    if y.shape != (len(scores),) or y.dtype.kind not in "iu":
        raise ValueError(f"labels must be {len(scores)} integers, got shape {y.shape} "
                         f"dtype {y.dtype}")
    if len(y) == 0:
        raise ValueError("no labels given")
    if y.min() < 0 or y.max() >= scores.shape[1]:
        raise ValueError(f"labels must lie in [0, {scores.shape[1]}), got {y.min()}..{y.max()}")
    return y.astype(np.int64)
