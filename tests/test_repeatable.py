"""Seeds make a trial repeatable, and cached activations train exactly what live images do."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from helpers import animal_mnist_npz

from automl.backbones.weights import WeightsResolver
from automl.config import RunConfig, TrialConfig
from automl.data.load import load_data
from automl.trial.features import FeatureCache
from automl.trial.run import SearchContext, TrialResult, run_trial
from automl.trial.trainlog import TrainLog

CONFIG = TrialConfig("efficientnet_lite0", 32, 0.98, 64, 0.2, 3e-3, "none")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a Datasets
    """A fifth of the embedded default (as an .npz), to keep the live-path trial short."""
    path = tmp_path_factory.mktemp("data") / "animals.npz"
    return load_data(str(animal_mnist_npz(path, from_splits=True, every=5)))


def _trial(data, tmp: Path, cache: FeatureCache, cached: bool) -> TrialResult:  # noqa: ANN001
    run = RunConfig(epochs=2, fine_tune_epochs=1, batch_size=128, feature_cache=cached)
    ctx = SearchContext(data, run, WeightsResolver(), cache, tmp)
    return run_trial(CONFIG, ctx, number=3)


@pytest.mark.slow
def test_same_seed_same_result_whether_the_cache_was_cold_or_warm(data, tmp_path: Path,
                                                                  ) -> None:  # noqa: ANN001
    cache = FeatureCache(tmp_path / "features", 1 << 30)
    cold = _trial(data, tmp_path / "a", cache, cached=True)
    warm = _trial(data, tmp_path / "b", cache, cached=True)
    assert cache.misses > 0 and cache.hits > 0
    assert (cold.val_accuracy, cold.val_loss, cold.test_accuracy, cold.epochs) == (
        warm.val_accuracy, warm.val_loss, warm.test_accuracy, warm.epochs)
    assert [r["val_loss"] for r in cold.history] == [r["val_loss"] for r in warm.history]


@pytest.mark.slow
def test_cached_training_matches_the_live_path(data, tmp_path: Path) -> None:  # noqa: ANN001
    cached = _trial(data, tmp_path / "a", FeatureCache(None, 1 << 30), cached=True)
    live = _trial(data, tmp_path / "b", FeatureCache(None, 1 << 30), cached=False)
    assert cached.best_phase == live.best_phase and cached.epochs == live.epochs
    for a, b in zip(cached.history, live.history, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-4)
    one_image = 1.0 / len(data.validation)
    assert abs(cached.val_accuracy - live.val_accuracy) <= one_image + 1e-9


@pytest.mark.slow
def test_a_trial_is_heavy_exactly_when_the_backbone_runs(data, tmp_path: Path,
                                                         ) -> None:  # noqa: ANN001
    """The flag the trial worker's replacement rule reads (oneDNN keeps memory after these)."""
    cache = FeatureCache(tmp_path / "features", 1 << 30)
    head_only = replace(CONFIG, freeze_depth=1.0)
    heavy = []
    for config, cached in ((head_only, True),   # extracts the activations
                           (head_only, True),   # a head on them: light
                           (CONFIG, True),      # extracts at the cut, fine-tunes the top
                           (CONFIG, True),      # the same from cached activations: fine-tunes
                           (head_only, False)):  # trains on images
        run = RunConfig(epochs=1, fine_tune_epochs=1, batch_size=128, feature_cache=cached)
        log = TrainLog()
        run_trial(config, SearchContext(data, run, WeightsResolver(), cache, tmp_path), 3,
                  log=log)
        heavy.append(log.heavy)
    assert heavy == [True, False, True, True, True]
