"""Transfer learning needs the pretrained weights: pretrained Lite0 must beat random init widely."""

from __future__ import annotations

from pathlib import Path

import pytest

from automl.backbones.weights import WeightsResolver
from automl.config import RunConfig, TrialConfig
from automl.data.load import load_data
from automl.trial.features import FeatureCache
from automl.trial.run import SearchContext, run_trial


@pytest.fixture(scope="module")
def data():  # noqa: ANN201 - a Datasets
    return load_data(None)


def _accuracy(data, weights: str | None, tmp: Path) -> float:  # noqa: ANN001
    run = RunConfig(epochs=4, fine_tune_epochs=0, batch_size=128, weights=weights)
    ctx = SearchContext(data, run, WeightsResolver(weights), FeatureCache(None, 1 << 30), tmp)
    config = TrialConfig("efficientnet_lite0", 48, 1.0, 128, 0.1, 2e-3, "none")
    result = run_trial(config, ctx, number=0)
    assert result.test_accuracy is not None
    return result.test_accuracy


def test_pretrained_features_beat_random_weights_by_a_wide_margin(data, tmp_path: Path,
                                                                  ) -> None:  # noqa: ANN001
    pretrained = _accuracy(data, None, tmp_path / "a")
    random = _accuracy(data, "none", tmp_path / "b")
    assert pretrained > 0.85, pretrained          # frozen ImageNet features, 4 epochs of head
    assert pretrained - random > 0.3, (pretrained, random)
