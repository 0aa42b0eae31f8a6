"""Tests for automl.trial.model, .layers and .train on a small EfficientNet-Lite0."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import pytest
from helpers import run_model

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from keras.applications import imagenet_utils  # noqa: E402

from automl.backbones.build import build_backbone  # noqa: E402
from automl.backbones.registry import get_spec  # noqa: E402
from automl.config import TrialConfig  # noqa: E402
from automl.errors import TrialFailed  # noqa: E402
from automl.trial.layers import Preprocess, augmentation_layers  # noqa: E402
from automl.trial.model import (  # noqa: E402
    Cut,
    TransferModel,
    block_cuts,
    build_model,
    choose_cut,
    reset_keras,
)
from automl.trial.train import Phase, TrainLog, train_two_phase  # noqa: E402

pytestmark = pytest.mark.filterwarnings(  # keras get_weights on TF variables, numpy 2
    "ignore:__array__ implementation doesn.t accept a copy keyword:DeprecationWarning")

SPEC = get_spec("efficientnet_lite0")
SIZE = 32
BN = keras.layers.BatchNormalization


def _config(**over: object) -> TrialConfig:
    base = {"backbone": "efficientnet_lite0", "image_size": SIZE, "freeze_depth": 0.8,
            "head_width": 16, "dropout": 0.2, "learning_rate": 1e-3, "augmentation": "none"}
    return TrialConfig.from_params({**base, **over})


def _build(n_classes: int = 3, seed: int = 0, **over: object) -> TransferModel:
    reset_keras(seed)
    return build_model(_config(**over), SPEC, n_classes, weights=None, seed=seed)


def _images(n: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)



def _layers(tm: TransferModel) -> list[keras.layers.Layer]:
    """Every backbone layer with weights (bottom and top), each once."""
    seen: dict[int, keras.layers.Layer] = {}
    for part in (tm.bottom, tm.top):
        for layer in part.layers if part is not None else []:
            if layer.weights:
                seen[id(layer)] = layer
    return list(seen.values())


def _values(layers: list[keras.layers.Layer]) -> dict[str, np.ndarray]:
    return {w.path: keras.ops.convert_to_numpy(w).copy() for layer in layers
            for w in layer.weights}


@pytest.fixture(scope="module")
def tm3() -> TransferModel:
    """3 classes, freeze_depth 0.8, head_width 16: shared by the read-only tests."""
    return _build(3)


@pytest.fixture(scope="module")
def flat2() -> TransferModel:
    """2 classes, freeze_depth 1.0, head_width 0: read-only."""
    return _build(2, freeze_depth=1.0, head_width=0)


@pytest.fixture(scope="module")
def tm3_cuts() -> list[Cut]:
    reset_keras(0)
    return block_cuts(build_backbone(SPEC, (SIZE, SIZE, 3), None), SPEC.block_pattern)


# --- structure


def test_phase1_only_the_head_trains(tm3: TransferModel) -> None:
    tm3.set_phase(1)
    head = tm3.head.trainable_weights
    assert len(head) == 4  # head_dense and predictions: kernel + bias each
    assert {id(w) for w in tm3.inference.trainable_weights} == {id(w) for w in head}
    assert tm3.bottom.trainable_weights == [] and tm3.top.trainable_weights == []


def test_phase2_trains_the_top_without_batch_norm(tm3: TransferModel) -> None:
    tm3.set_phase(2)
    try:
        assert tm3.cut.layer == "block6b_add"
        assert 0.75 < tm3.cut.depth < 0.85
        top_layers = [la for la in tm3.top.layers if la.weights]
        assert top_layers, "freeze_depth 0.8 left nothing to fine-tune"
        assert tm3.bottom.trainable_weights == []
        for layer in tm3.bottom.layers:
            assert not layer.trainable or not layer.weights, layer.name
        for layer in top_layers:
            assert layer.trainable is (not isinstance(layer, BN)), layer.name
        for layer in _layers(tm3):
            if isinstance(layer, BN):
                assert layer.trainable is False, layer.name
        expected = sum(len(la.weights) for la in top_layers if not isinstance(la, BN))
        expected += len(tm3.head.trainable_weights)
        assert len(tm3.inference.trainable_weights) == expected
        top_names = {la.name for la in top_layers}
        assert {"block6c_expand_conv", "block7a_project_conv", "top_conv"} <= top_names
        assert "block6b_project_conv" not in top_names  # before the cut: bottom
    finally:
        tm3.set_phase(1)


def test_phase2_after_phase1_after_phase2_is_stable(tm3: TransferModel) -> None:
    counts = []
    for phase in (2, 1, 2, 1):
        tm3.set_phase(phase)
        counts.append(len(tm3.inference.trainable_weights))
    assert counts[0] == counts[2] > counts[1] == counts[3] == 4
    assert all(not la.trainable for la in _layers(tm3) if isinstance(la, BN))


def test_freeze_depth_one_has_no_top(flat2: TransferModel) -> None:
    tm = flat2
    assert tm.top is None
    assert tm.cut == Cut("top_activation", 1.0)
    tm.set_phase(2)
    assert len(tm.inference.trainable_weights) == 2  # predictions only: head_width 0
    tm.set_phase(1)
    with pytest.raises(ValueError, match="no top to fine-tune"):
        tm.top_model()
    assert "head_dense" not in [la.name for la in tm.head.layers]
    assert [type(la).__name__ for la in tm.head.layers] == ["InputLayer", "Dropout", "Dense"]
    # features at the cut are the (unpooled) backbone output
    feats = run_model(tm.feature_model(at_cut=True), _images(2))
    assert feats.shape == (2, 1, 1, 1280)


def test_freeze_depth_zero_fine_tunes_the_whole_backbone() -> None:
    tm = _build(3, freeze_depth=0.0)
    assert tm.cut == Cut(None, 0.0)
    tm.set_phase(2)
    non_bn = [la for la in _layers(tm) if not isinstance(la, BN)]
    assert len(tm.inference.trainable_weights) == (
        sum(len(la.weights) for la in non_bn) + len(tm.head.trainable_weights))
    x = _images(2, seed=3)
    # at the cut = before the first layer: the cached "activation" is the preprocessed image
    np.testing.assert_allclose(run_model(tm.feature_model(at_cut=True), x), x / 127.5 - 1.0,
                               atol=1e-6)
    np.testing.assert_allclose(run_model(tm.top_model(), x / 127.5 - 1.0),
                               run_model(tm.inference, x), atol=1e-5)


def test_block_cuts_of_the_backbone(tm3_cuts: list[Cut]) -> None:
    assert tm3_cuts[0] == Cut(None, 0.0) and tm3_cuts[-1] == Cut("top_activation", 1.0)
    assert [c.layer for c in tm3_cuts[1:4]] == ["stem_activation", "block1a_project_bn",
                                               "block2a_project_bn"]
    depths = [c.depth for c in tm3_cuts]
    assert depths == sorted(set(depths))


def test_choose_cut_snaps_to_the_nearest_boundary(tm3_cuts: list[Cut]) -> None:
    cuts = [Cut(None, 0.0), Cut("a", 0.25), Cut("b", 0.5), Cut("c", 1.0)]
    assert choose_cut(cuts, 0.0) == cuts[0]
    assert choose_cut(cuts, 0.1) == cuts[0]
    assert choose_cut(cuts, 0.3) == cuts[1]
    assert choose_cut(cuts, 0.375) == cuts[2]  # a tie goes to the deeper cut
    assert choose_cut(cuts, 0.125) == cuts[1]
    assert choose_cut(cuts, 0.7) == cuts[2]
    assert choose_cut(cuts, 0.75) == cuts[3]
    assert choose_cut(cuts, 1.0) == cuts[3]
    for depth in (0.0, 0.33, 0.5, 0.8, 0.9, 0.99, 1.0):
        chosen = choose_cut(tm3_cuts, depth)
        assert chosen in tm3_cuts
        assert abs(chosen.depth - depth) == min(abs(c.depth - depth) for c in tm3_cuts)


def test_binary_has_one_sigmoid_unit(flat2: TransferModel) -> None:
    tm = flat2
    assert tm.binary
    out = tm.head.get_layer("predictions")
    assert out.units == 1
    assert out.activation is keras.activations.sigmoid
    probs = run_model(tm.inference, _images(4, seed=1))
    assert probs.shape == (4, 1)
    assert np.all((probs > 0) & (probs < 1))


def test_multiclass_softmax(tm3: TransferModel) -> None:
    assert not tm3.binary
    out = tm3.head.get_layer("predictions")
    assert out.units == 3 and out.activation is keras.activations.softmax
    assert tm3.head.get_layer("head_dense").units == 16
    assert tm3.head.get_layer("head_dropout").rate == pytest.approx(0.2)
    probs = run_model(tm3.inference, _images(3, seed=2))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_inference_feature_and_top_paths_agree(tm3: TransferModel) -> None:
    x = _images(4, seed=4)
    probs = run_model(tm3.inference, x)
    assert probs.shape == (4, 3)
    # pooled features -> head
    pooled = run_model(tm3.feature_model(at_cut=False), x)
    assert pooled.shape == (4, 1280)
    np.testing.assert_allclose(run_model(tm3.head, pooled), probs, atol=1e-5)
    # activation at the cut -> top and head
    at_cut = run_model(tm3.feature_model(at_cut=True), x)
    assert at_cut.shape[1:] == tuple(tm3.bottom.output.shape[1:])
    np.testing.assert_allclose(run_model(tm3.top_model(), at_cut), probs, atol=1e-5)
    # by hand: preprocess -> bottom -> top -> pool -> head
    manual = run_model(tm3.bottom, x / 127.5 - 1.0)
    np.testing.assert_allclose(manual, at_cut, atol=1e-5)
    pooled_by_hand = run_model(tm3.top, manual).mean(axis=(1, 2))
    np.testing.assert_allclose(run_model(tm3.head, pooled_by_hand), probs, atol=1e-5)
    # no augmentation: phase 2 trains the inference model itself; phase 1 runs the frozen top
    # in inference mode, with the same outputs
    assert tm3.train_model(2) is tm3.inference
    np.testing.assert_allclose(run_model(tm3.train_model(1), x), probs, atol=1e-6)


# --- layers


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_preprocess_matches_keras(mode: str) -> None:
    x = _images(3, seed=5, size=8)
    expected = imagenet_utils.preprocess_input(x.copy(), mode=mode)
    got = keras.ops.convert_to_numpy(Preprocess(mode)(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert not np.allclose(got, x)


def test_preprocess_none_and_bad_mode() -> None:
    x = _images(2, seed=6, size=4).astype("uint8")
    got = keras.ops.convert_to_numpy(Preprocess("none")(x))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x.astype(np.float32))
    with pytest.raises(ValueError, match="preprocess mode must be one of"):
        Preprocess("bgr")
    layer = Preprocess("torch", name="pp")
    clone = Preprocess.from_config(layer.get_config())
    assert (clone.mode, clone.name) == ("torch", "pp")


@pytest.mark.parametrize("policy, types", [
    ("none", []),
    ("flip", ["RandomFlip"]),
    ("light", ["RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation"]),
    ("heavy", ["RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
               "RandomContrast"]),
])
def test_augmentation_layers_per_policy(policy: str, types: list[str]) -> None:
    layers = augmentation_layers(policy, seed=3)
    assert [type(la).__name__ for la in layers] == types
    x = _images(4, seed=7, size=16)
    y = x
    for layer in layers:
        y = layer(y, training=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(y), x)
    if policy != "none":
        assert layers[0].mode == "horizontal"
    if policy == "light":
        assert layers[1].factor == (-0.05, 0.05)  # ±18°
    if policy == "heavy":
        assert layers[1].factor == pytest.approx((-30 / 360, 30 / 360))  # ±30°
        assert layers[4].value_range == (0, 255)


def test_heavy_augmentation_changes_images_in_training() -> None:
    x = _images(8, seed=8, size=16)
    y = x
    for layer in augmentation_layers("heavy", seed=0):
        y = layer(y, training=True)
    assert not np.allclose(keras.ops.convert_to_numpy(y), x)


def test_unknown_augmentation_policy() -> None:
    with pytest.raises(ValueError, match="unknown augmentation policy 'blur'"):
        augmentation_layers("blur", seed=0)


def test_train_model_with_augmentation_is_inference_at_inference(flat2: TransferModel) -> None:
    tm = dataclasses.replace(flat2, augment=augmentation_layers("heavy", seed=0))
    train = tm.train_model()
    assert train is not tm.inference
    assert [type(la).__name__ for la in train.layers][1:6] == [
        "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast"]
    x = _images(2, seed=9)
    np.testing.assert_allclose(run_model(train, x), run_model(tm.inference, x), atol=1e-6)
    assert _config(augmentation="heavy").augmentation == "heavy"


# --- training


def _dataset(x: np.ndarray, y: np.ndarray, batch: int = 8) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def _task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dark images are class 0, bright ones class 1: obvious even to a random backbone."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.uniform(0, 90, (n, SIZE, SIZE, 3)) + 165 * y[:, None, None, None]
    return x.astype(np.float32), y.astype(np.float32).reshape(-1, 1)


@pytest.fixture(scope="module")
def trained() -> dict[str, object]:
    """Two-phase training of a binary model on cached features, with snapshots in between.

    ImageNet weights (converted once per session): with random weights and batch norm frozen in
    inference mode the activations at the cut are ~1e-10 and phase 2 cannot move the top.
    """
    from automl.backbones.lite import converted_weights

    reset_keras(1)
    tm = build_model(_config(freeze_depth=0.8, head_width=8, dropout=0.0), SPEC, 2,
                     weights=converted_weights(0), seed=1)
    x_train, y_train = _task(128, seed=1)
    x_val, y_val = _task(64, seed=2)
    pooled, at_cut = tm.feature_model(at_cut=False), tm.feature_model(at_cut=True)
    backbone = _layers(tm)
    state: dict[str, object] = {"tm": tm, "before": _values(backbone), "phase2_calls": 0}
    reports: list[tuple[int, int]] = []

    def make_phase(number: int) -> Phase | None:
        tm.set_phase(number)
        if number == 1:
            return Phase(tm.head, _dataset(run_model(pooled, x_train), y_train),
                         _dataset(run_model(pooled, x_val), y_val), learning_rate=1e-2,
                         max_epochs=3)
        state["phase2_calls"] = int(state["phase2_calls"]) + 1
        state["after_phase1"] = _values(backbone)
        return Phase(tm.top_model(), _dataset(run_model(at_cut, x_train), y_train),
                     _dataset(run_model(at_cut, x_val), y_val), learning_rate=1e-3, max_epochs=2)

    log = train_two_phase(make_phase, patience=10, binary=True,
                          reporter=lambda epoch, row: reports.append((epoch, row["phase"])))
    state.update(log=log, reports=reports, after_phase2=_values(backbone), backbone=backbone,
                 x_val=x_val, y_val=y_val)
    return state


def test_phase1_leaves_the_backbone_bit_identical(trained: dict) -> None:
    assert trained["phase2_calls"] == 1
    before, after = trained["before"], trained["after_phase1"]
    assert before.keys() == after.keys() and len(before) > 100
    for path, value in before.items():
        assert np.array_equal(value, after[path]), path


def test_phase2_changes_only_the_tops_non_bn_weights(trained: dict) -> None:
    tm: TransferModel = trained["tm"]
    start, end = trained["after_phase1"], trained["after_phase2"]
    top = {id(la) for la in tm.top.layers}
    changed_top = 0
    for layer in trained["backbone"]:
        for w in layer.weights:
            same = np.array_equal(start[w.path], end[w.path])
            if isinstance(layer, BN):
                assert same, f"batch norm weight {w.path} changed in phase 2"
            elif id(layer) in top:
                changed_top += not same
            else:
                assert same, f"bottom weight {w.path} changed in phase 2"
    top_weights = sum(len(la.weights) for la in tm.top.layers
                      if la.weights and not isinstance(la, BN))
    assert changed_top == top_weights > 0


def test_epochs_are_numbered_continuously(trained: dict) -> None:
    log: TrainLog = trained["log"]
    assert trained["reports"] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]
    assert [row["epoch"] for row in log.epochs] == [1, 2, 3, 4, 5]
    assert [row["phase"] for row in log.epochs] == [1, 1, 1, 2, 2]
    assert log.best_phase in (1, 2)
    assert log.seconds > 0
    for row in log.epochs:
        assert set(row) == {"epoch", "phase", "phase_epoch", "loss", "accuracy", "val_loss",
                            "val_accuracy", "learning_rate"}
    assert [row["phase_epoch"] for row in log.epochs] == [1, 2, 3, 1, 2]
    assert log.epochs[0]["learning_rate"] == pytest.approx(1e-2)
    assert log.epochs[3]["learning_rate"] == pytest.approx(1e-3)


def test_the_task_was_learned(trained: dict) -> None:
    tm: TransferModel = trained["tm"]
    probs = run_model(tm.inference, trained["x_val"])
    accuracy = float(np.mean((probs > 0.5) == (trained["y_val"] > 0.5)))
    assert accuracy >= 0.8  # 64 images; chance is 0.5
    assert max(row["val_accuracy"] for row in trained["log"].epochs) >= 0.8


class Stop(Exception):
    pass


def _head_phase(tm: TransferModel, x: np.ndarray, y: np.ndarray, lr: float = 1e-2,
                epochs: int = 20) -> Callable[[int], Phase | None]:
    calls: list[int] = []

    def make_phase(number: int) -> Phase | None:
        calls.append(number)
        if number == 2:
            raise AssertionError("phase 2 must not start")
        tm.set_phase(1)
        return Phase(tm.head, _dataset(x, y), _dataset(x, y), learning_rate=lr,
                     max_epochs=epochs)

    return make_phase


@pytest.fixture(scope="module")
def small_head() -> TransferModel:
    return _build(2, seed=2, freeze_depth=1.0, head_width=0)


def test_a_raising_reporter_stops_training(small_head: TransferModel) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 1280)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)
    seen: list[int] = []

    def reporter(epoch: int, row: dict[str, float]) -> None:
        seen.append(epoch)
        if epoch == 2:
            raise Stop(f"pruned at epoch {epoch}")

    log = TrainLog()
    with pytest.raises(Stop, match="pruned at epoch 2"):
        train_two_phase(_head_phase(small_head, x, y), patience=10, binary=True,
                        reporter=reporter, log=log)
    assert seen == [1, 2]
    assert [row["epoch"] for row in log.epochs] == [1, 2]  # the log survives the exception
    assert log.seconds > 0


@pytest.mark.parametrize("poison", ["inf_input", "nan_input"])
def test_nan_loss_fails_the_trial_quickly(small_head: TransferModel, poison: str) -> None:
    x = np.ones((16, 1280), dtype=np.float32)
    x[3, 5] = np.inf if poison == "inf_input" else np.nan
    y = np.zeros((16, 1), dtype=np.float32)
    reported: list[int] = []
    log = TrainLog()
    saved = small_head.head.get_weights()
    start = time.perf_counter()
    try:
        with pytest.raises(TrialFailed) as info:
            train_two_phase(_head_phase(small_head, x, y, epochs=1000), patience=1000,
                            binary=True, reporter=lambda epoch, row: reported.append(epoch),
                            log=log)
    finally:
        elapsed = time.perf_counter() - start
        small_head.head.set_weights(saved)  # the NaN step poisoned them; others use this head
    assert str(info.value) == ("the loss became NaN or infinite at epoch 1 (phase 1); try a "
                               "lower learning rate")
    assert reported == [] and log.epochs == []
    assert elapsed < 60


def test_best_epoch_is_kept_and_an_unhelpful_phase2_is_undone(small_head: TransferModel) -> None:
    """Validation labels are the training labels flipped: the better the fit, the worse the
    validation loss, so the first epoch is the best one of both phases."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(32, 1280)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)
    head = small_head.head
    train, val = _dataset(x, y), _dataset(x, 1.0 - y)
    per_epoch: dict[int, list[np.ndarray]] = {}
    snapshots: list[list[np.ndarray]] = []
    restored: list[list[np.ndarray]] = []

    def make_phase(number: int) -> Phase:
        small_head.set_phase(1)
        return Phase(head, train, val, learning_rate=1e-2, max_epochs=3)

    def snapshot() -> list[np.ndarray]:
        snapshots.append(head.get_weights())
        return snapshots[-1]

    def restore(saved: list[np.ndarray]) -> None:
        restored.append(saved)
        head.set_weights(saved)

    log = train_two_phase(make_phase, patience=10, binary=True, snapshot=snapshot,
                          restore=restore,
                          reporter=lambda epoch, row: per_epoch.update({epoch: head.get_weights()}))
    losses = [row["val_loss"] for row in log.epochs]
    assert [row["epoch"] for row in log.epochs] == [1, 2, 3, 4, 5, 6]
    best1 = int(np.argmin(losses[:3]))
    assert best1 != 2, f"validation loss did not get worse: {losses}"
    # phase 1 ended on its best epoch's weights, which phase 2 started from (the snapshot)
    assert len(snapshots) == 1
    for got, want in zip(snapshots[0], per_epoch[best1 + 1], strict=True):
        np.testing.assert_array_equal(got, want)
    # phase 2 never beat phase 1: its weights were replaced by the snapshot
    assert min(losses[3:]) >= min(losses[:3])
    assert log.best_phase == 1
    assert len(restored) == 1 and restored[0] is snapshots[0]
    for got, want in zip(head.get_weights(), snapshots[0], strict=True):
        np.testing.assert_array_equal(got, want)
