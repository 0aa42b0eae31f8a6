"""Cached augmented views and head-only trials (automl.trial.run, automl.trial.train)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from automl.backbones.weights import WeightsResolver
from automl.config import RunConfig, TrialConfig
from automl.data import pipeline
from automl.data.load import load_data
from automl.trial.features import FeatureCache
from automl.trial.run import SearchContext, _Trainer, run_trial
from automl.trial.train import ArrayFeed, DrawnViews
from automl.trial.trainlog import TrainLog

RUN = RunConfig(epochs=2, fine_tune_epochs=1, batch_size=32, seed=0, augment_views=3)


@pytest.fixture(scope="module")
def ctx(tiny_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> SearchContext:
    tmp = tmp_path_factory.mktemp("views")
    return SearchContext(load_data(tiny_npz), RUN, WeightsResolver(),
                         FeatureCache(tmp / "features", 1 << 29), tmp / "trials")


def test_views_are_drawn_without_replacement_per_input() -> None:
    n, k = 50, 4
    feed = ArrayFeed(np.zeros((k, n, 3), np.float32), np.arange(n), 8, shuffle=True, seed=1,
                     views=True)
    for cycle in range(2):
        seen = np.stack([feed.epoch_rows(cycle * k + e) for e in range(k)])  # [k, n] rows
        view, image = seen // n, seen % n
        for i in range(n):
            assert sorted(view[image == i]) == list(range(k))  # each view of i exactly once
    assert not np.array_equal(feed.epoch_rows(0) % n, feed.epoch_rows(1) % n)  # reshuffled


def test_drawn_views_are_made_when_an_epoch_first_reads_them() -> None:
    """Independent draws: epoch e reads view e % K for every input, and a view is made only
    when an epoch first needs it (a trial pruned after two epochs made two views)."""
    n, k = 40, 3
    made: list[int] = []

    def maker(v: int):  # view v: every input's features are v (so the rows read show the view)
        def make() -> np.ndarray:
            made.append(v)
            return np.full((n, 2), float(v), np.float32)
        return make

    views = DrawnViews([maker(v) for v in range(k)])
    feed = ArrayFeed(views, np.zeros(n, np.int64), 8, shuffle=True, seed=1)
    assert feed.n == n and made == []
    for epoch in range(2):
        x, which = feed.epoch_inputs(epoch)
        assert which == epoch and set(x[feed.epoch_rows(epoch), 0]) == {float(epoch)}
    assert made == [0, 1]  # view 2 not made: no epoch read it yet
    assert feed.epoch_inputs(4)[1] == 1 and made == [0, 1]  # made once, read again
    assert sorted(set(feed.epoch_rows(0))) == list(range(n))  # every input once per epoch
    assert not np.array_equal(feed.epoch_rows(0), feed.epoch_rows(1))  # reshuffled


def _cached_views(cache: FeatureCache, policy: str) -> set[int]:
    """The views of ``policy`` whose activations are in the cache's folder."""
    import json

    keys = [json.loads(f.read_text()) for f in cache.directory.glob("*.json")
            if not f.name.startswith("arch-")]
    return {k["view"] for k in keys if k["augmentation"] == policy}


def test_a_view_made_mid_phase_keeps_the_trained_head(tiny_npz: Path, tmp_path: Path) -> None:
    """Pooled activations and view 0 cached, view 1 not: the head is built alone and trained for
    an epoch, then epoch 2's view makes the trial build the backbone around that same head. The
    trained head must go on: the same training, evaluation and kept weights as a run where every
    view was cached (which never builds the backbone), and the rebuilt model reproduces the
    recorded test accuracy. Views are made only when an epoch reads them."""
    from automl.report.export import build_trained
    from automl.trial.run import scores

    cache = FeatureCache(tmp_path / "features", 1 << 29)
    ctx = SearchContext(load_data(tiny_npz), RUN, WeightsResolver(), cache, tmp_path / "trials")
    run_trial(TrialConfig("efficientnet_lite0", 32, 1.0, 0, 0.1, 3e-3, "none"), ctx, 0)
    config = TrialConfig("efficientnet_lite0", 32, 1.0, 32, 0.1, 3e-3, "light")
    one_epoch = dataclasses.replace(ctx, run=dataclasses.replace(RUN, epochs=1))
    run_trial(config, one_epoch, 1)
    assert _cached_views(cache, "light") == {0}  # K = 3, one epoch: one view made
    cold = run_trial(config, SearchContext(ctx.data, RUN, ctx.resolver,
                                           FeatureCache(cache.directory, 1 << 29),
                                           ctx.trials_dir), 2)
    assert cold.kind == "view extraction" and cold.weights_kind == "model"
    assert _cached_views(cache, "light") == {0, 1}  # two epochs: view 2 never made
    warm = run_trial(config, ctx, 2)  # every view it reads is cached now: the head alone
    assert warm.weights_kind == "head"
    assert [r["val_loss"] for r in warm.history] == pytest.approx(
        [r["val_loss"] for r in cold.history], abs=1e-6)
    assert (warm.val_accuracy, warm.test_accuracy) == (cold.val_accuracy, cold.test_accuracy)
    assert warm.val_loss == pytest.approx(cold.val_loss, abs=1e-6)
    import pandas as pd

    row = pd.Series(config.as_dict())
    tm = build_trained(row, ctx.data.class_names, Path(cold.weights_file),
                       dataclasses.asdict(cold))
    images = pipeline.images(ctx.data.test, 32).batch(64)
    probs = tm.inference.predict(images, verbose=0)
    assert scores(probs, ctx.data.test.labels)[1] == pytest.approx(cold.test_accuracy)


def test_each_epoch_trains_on_its_own_drawn_view() -> None:
    """The engine reads epoch e's view (e mod K) for every input, not the first view always."""
    import keras

    from automl.trial.train import _Engine

    n = 32
    views = [np.full((n, 4), float(v + 1), np.float32) for v in range(3)]
    feed = ArrayFeed(DrawnViews([lambda v=v: views[v] for v in range(3)]),
                     np.zeros(n, np.int64), 8, shuffle=True, seed=0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    engine = _Engine(model, 1e-3, binary=False)
    for epoch in range(4):
        engine.train_epoch(feed, epoch)
    read = {key[1]: x.numpy() for key, (x, _) in engine._arrays.items()}
    assert sorted(read) == [0, 1, 2]
    for view, x in read.items():
        np.testing.assert_array_equal(x, views[view])


def test_flip_plus_frozen_part_equals_one_of_two_cached_views(ctx: SearchContext) -> None:
    import keras
    import tensorflow as tf

    config = TrialConfig("efficientnet_lite0", 32, 1.0, 0, 0.0, 1e-3, "flip")
    trainer = _Trainer(config, ctx, 0, TrainLog())
    views, is_views = trainer.train_features(at_cut=False)
    assert is_views and views.shape[:2] == (2, len(ctx.data.train))
    frozen = trainer.model().feature_model(at_cut=False)
    flip = keras.layers.RandomFlip("horizontal", seed=5)
    live_step = tf.function(lambda x: frozen(flip(x, training=True), training=False))
    images = pipeline.images(ctx.data.train, 32).batch(RUN.batch_size)
    live = np.concatenate([live_step(tf.cast(x, tf.float32)).numpy() for x in images])
    gaps = np.abs(live[None] - views).max(axis=2)  # [2, n]: distance to each view
    assert gaps.min(axis=0).max() <= 1e-5
    chosen = gaps.argmin(axis=0)
    assert set(chosen) == {0, 1}  # both views occur


def test_head_only_trial_never_builds_the_backbone(ctx: SearchContext,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    first = run_trial(TrialConfig("efficientnet_lite0", 32, 1.0, 32, 0.1, 3e-3, "none"), ctx, 1)
    assert first.weights_kind == "model"  # the first trial extracted: it built the model

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a head-only trial built the backbone")

    monkeypatch.setattr("automl.trial.model.build_backbone", refuse)
    for number, config in enumerate((
            TrialConfig("efficientnet_lite0", 32, 1.0, 0, 0.3, 1e-2, "none"),
            TrialConfig("efficientnet_lite0", 32, 1.0, 64, 0.2, 3e-3, "flip"),
            TrialConfig("efficientnet_lite0", 32, 1.0, 64, 0.2, 3e-3, "light")), start=2):
        if config.augmentation == "light":  # its views need one extraction: allowed once
            monkeypatch.undo()
            run_trial(config, ctx, 9)
            monkeypatch.setattr("automl.trial.model.build_backbone", refuse)
        result = run_trial(config, ctx, number)
        assert result.weights_kind == "head"
        assert result.params == first.params - 32 * 1281 - 33 * 10 + (
            config.head_width * 1281 + (config.head_width + 1) * 10 if config.head_width
            else 1281 * 10)
        assert result.val_accuracy > 0.3  # 10 classes: chance is 0.1
        assert Path(result.weights_file).name == "head.weights.h5"


def test_one_pass_caches_the_cuts_a_later_fine_tuning_trial_needs(tiny_npz: Path,
                                                                   tmp_path: Path) -> None:
    from dataclasses import replace

    run = replace(RUN, cut_depths=(0.9,))
    cache = FeatureCache(tmp_path / "features", 1 << 29)
    ctx = SearchContext(load_data(tiny_npz), run, WeightsResolver(), cache, tmp_path / "t")
    first = run_trial(TrialConfig("efficientnet_lite0", 32, 1.0, 0, 0.1, 3e-3, "none"), ctx, 0)
    assert first.kind == "extraction"
    misses = cache.misses
    tuned = run_trial(TrialConfig("efficientnet_lite0", 32, 0.9, 0, 0.1, 3e-3, "none"), ctx, 1)
    assert cache.misses == misses  # the activations at its cut came with the pooled ones
    assert tuned.kind == "fine-tuning" and tuned.weights_kind == "model"
    assert any(row["phase"] == 2 for row in tuned.history)
    # what was cached equals what the frozen part computes at that cut
    trainer = _Trainer(TrialConfig("efficientnet_lite0", 32, 0.9, 0, 0.1, 3e-3, "none"), ctx, 2,
                       TrainLog())
    cached = trainer.features(ctx.data.validation, at_cut=True)
    from automl.trial.run import extract_features

    direct = extract_features(trainer.model().feature_model(at_cut=True), ctx.data.validation,
                              32, run.batch_size)
    np.testing.assert_allclose(cached, direct, atol=1e-5)


def test_a_head_alone_trains_exactly_as_inside_the_whole_model(ctx: SearchContext) -> None:
    """The same frozen-backbone trial, once building the whole model (cold cache: it extracts)
    and once building the head alone (warm cache): same initial weights, same training."""
    config = TrialConfig("efficientnet_lite1", 32, 1.0, 32, 0.2, 3e-3, "none")
    cold = run_trial(config, ctx, 5)
    warm = run_trial(config, ctx, 5)
    assert (cold.weights_kind, warm.weights_kind) == ("model", "head")
    assert [r["val_loss"] for r in warm.history] == pytest.approx(
        [r["val_loss"] for r in cold.history], abs=1e-6)
    assert warm.test_accuracy == cold.test_accuracy and warm.params == cold.params


def test_an_augmented_search_exports_its_flip_trial(tiny_npz: Path, tmp_path: Path) -> None:
    """End to end with cached views: search (trial worker) -> leaderboard -> export (reload
    check against the recorded test accuracy) for trials trained on flip views."""
    from helpers import csv_rows, run_cli

    space = tmp_path / "space.yaml"
    space.write_text("backbone: efficientnet_lite0\nimage_size: 32\nfreeze_depth: 1.0\n"
                     "head_width: {choices: [0, 32]}\ndropout: 0.1\nlearning_rate: 3.0e-3\n"
                     "augmentation: flip\n")
    results = tmp_path / "results"
    run_cli("search", "--space", space, "--data", tiny_npz, "--trials", "2", "--epochs", "2",
            "--results", results)
    rows = csv_rows(results / "default" / "leaderboard.csv")
    assert [r["augmentation"] for r in rows] == ["flip", "flip"]
    assert {r["state"] for r in rows} == {"COMPLETE"}
    printed = run_cli("export", "--results", results, "--out", tmp_path / "m").out
    assert "reload check passed" in printed
