"""Temperature scaling, NLL, ECE and reliability bins (automl.trust.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from automl.trust.calibration import (
    calibration_bins,
    expected_calibration_error,
    fit_temperature,
    logits_from_probabilities,
    nll,
    softmax,
)


def calibrated(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, k))
    p = softmax(logits)
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return logits, np.minimum(labels, k - 1)


@pytest.mark.parametrize("scale", [3.0, 0.4])
def test_temperature_undoes_over_and_underconfidence(scale: float) -> None:
    logits, labels = calibrated(20_000, 5, seed=0)
    skewed = logits * scale  # scale > 1: overconfident
    t = fit_temperature(skewed[:10_000], labels[:10_000])  # fit on "validation"
    assert t == pytest.approx(scale, rel=0.08)
    test, y = skewed[10_000:], labels[10_000:]
    assert nll(test, y, t) <= nll(test, y)
    before = expected_calibration_error(softmax(test), y)
    after = expected_calibration_error(softmax(test, t), y)
    assert after < 0.02 < before


def test_temperature_of_calibrated_logits_is_near_one_and_never_worse() -> None:
    logits, labels = calibrated(5_000, 3, seed=1)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(1.0, abs=0.06)
    assert nll(logits, labels, t) <= nll(logits, labels, 1.0)


def test_ece_and_bins_on_a_hand_checked_case() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.5, 0.5]])
    labels = np.array([0, 1, 1, 1, 1])
    bins = calibration_bins(probs, labels)
    assert len(bins) == 15 and bins["count"].sum() == 5
    used = bins[bins["count"] > 0]
    # 0.5 -> (7/15, 8/15]; 0.6 -> (8/15, 9/15] (0.6 is an edge: right-closed); 0.7; two at 0.9
    assert used["count"].tolist() == [1, 1, 1, 2]
    np.testing.assert_allclose(used["confidence"], [0.5, 0.6, 0.7, 0.9])
    np.testing.assert_allclose(used["accuracy"], [0.0, 1.0, 1.0, 0.5])  # tie: argmax is 0
    # (|0 - .5| + |1 - .6| + |1 - .7| + 2 |.5 - .9|) / 5 = (0.5 + 0.4 + 0.3 + 0.8) / 5
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4)
    assert np.isnan(bins.loc[0, "accuracy"])


def test_nll_and_logits_from_probabilities() -> None:
    probs = np.array([[0.2, 0.8], [0.6, 0.4]])
    z = logits_from_probabilities(probs)
    np.testing.assert_allclose(softmax(z), probs)
    assert nll(z, np.array([1, 1])) == pytest.approx(-(np.log(0.8) + np.log(0.4)) / 2)
    sigmoid = logits_from_probabilities(np.array([[0.8], [0.4]]))
    np.testing.assert_allclose(sigmoid, z)
    with pytest.raises(ValueError, match="labels"):
        nll(z, np.array([0, 2]))
