"""Label issues (automl.trust.labels): k-fold out-of-sample heads on real pooled activations,
ranked by cleanlab's label-quality score."""

from __future__ import annotations

import numpy as np
import pytest

from automl.trust.labels import (
    label_issue_table,
    out_of_sample_probabilities,
    rank_label_issues,
)

PER_CLASS = 200  # 2,000 training images of the embedded default


@pytest.fixture(scope="module")
def pooled() -> tuple[np.ndarray, np.ndarray]:
    """Lite0 pooled activations at 96 px (ImageNet weights, offline) of the first 200 training
    images of each class of the default split, and their labels."""
    from automl.backbones.registry import get_spec
    from automl.backbones.weights import WeightsResolver
    from automl.config import TrialConfig
    from automl.data.load import load_data
    from automl.data.splits import Split
    from automl.trial.model import build_model
    from automl.trial.run import extract_features

    train = load_data(None).train
    keep = np.sort(np.concatenate([np.flatnonzero(train.labels == c)[:PER_CLASS]
                                   for c in range(10)]))
    subset = Split("train", train.labels[keep], array=train.array[keep])
    config = TrialConfig("efficientnet_lite0", 96, 1.0, 0, 0.0, 1e-3, "none")
    spec = get_spec(config.backbone)
    weights = WeightsResolver().resolve(spec, 96).weights
    model = build_model(config, spec, 10, weights).feature_model(at_cut=False)
    return extract_features(model, subset, 96, 64), subset.labels.astype(np.int64)


def flip(labels: np.ndarray, fraction: float, classes: int, seed: int) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """(noisy labels, flipped indices): ``fraction`` of them, each to another class drawn
    uniformly."""
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(labels), int(round(fraction * len(labels))), replace=False)
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, classes, len(flipped))) % classes
    return noisy, flipped


def test_top_five_percent_recovers_most_flipped_labels(pooled) -> None:
    x, y = pooled
    noisy, flipped = flip(y, 0.05, 10, seed=0)
    assert np.all(noisy[flipped] != y[flipped])
    table = rank_label_issues(x, noisy, 10, seed=0)
    assert len(table) == len(y) and sorted(table["index"]) == list(range(len(y)))
    assert table["score"].is_monotonic_increasing
    top = table["index"].to_numpy()[:len(flipped)]
    recovered = np.isin(flipped, top).mean()
    assert recovered >= 0.5, recovered
    # the suggestion of a recovered flip is mostly its true label
    hits = table.head(len(flipped))
    hits = hits[np.isin(hits["index"], flipped)]
    assert (hits["suggested"].to_numpy() == y[hits["index"]]).mean() >= 0.8
    np.testing.assert_array_equal(table["given"].to_numpy(), noisy[table["index"]])


def test_probabilities_are_out_of_sample_and_repeatable() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    x = rng.normal(size=(120, 8)) + y[:, None] * 0.8
    probs = out_of_sample_probabilities(x, y, 3, seed=1)
    assert probs.shape == (120, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert 0.6 <= (probs.argmax(axis=1) == y).mean() < 1.0  # held-out accuracy, not memorised
    np.testing.assert_array_equal(probs, out_of_sample_probabilities(x, y, 3, seed=1))
    assert not np.array_equal(probs, out_of_sample_probabilities(x, y, 3, seed=2))


def test_a_class_absent_from_the_labels_gets_a_zero_column() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 2], 10)
    x = rng.normal(size=(20, 4)) + y[:, None] * 3.0
    probs = out_of_sample_probabilities(x, y, 3, folds=5)
    assert probs.shape == (20, 3) and np.all(probs[:, 1] == 0)
    assert (probs.argmax(axis=1) == y).all()


def test_table_orders_by_self_confidence() -> None:
    probs = np.array([[0.7, 0.3], [0.1, 0.9], [0.5, 0.5], [0.95, 0.05]])
    table = label_issue_table(np.array([0, 0, 1, 0]), probs)
    assert table["index"].tolist() == [1, 2, 0, 3]
    assert table["suggested"].tolist() == [1, 0, 0, 0]
    np.testing.assert_allclose(table["score"], [0.1, 0.5, 0.7, 0.95])


@pytest.mark.parametrize("labels", [np.array([0, 1, 3]), np.array([0.0, 1.0, 1.0]),
                                    np.array([0, 1])])
def test_bad_labels_are_refused(labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="labels"):
        label_issue_table(labels, np.full((3, 3), 1 / 3))
