"""ONNX export (automl.report.onnx_export): verified conversion, predict on an ONNX export, and
the refusals (quantization, converter not installed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    assert_same_predictions,
    default_test_images,
    export_verified,
    run_cli,
    tiny_lite0_search,
)

needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("tf2onnx", "onnx", "onnxruntime")),
    reason="needs automl[onnx] (in automl[test])")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished trial on the embedded default (pretrained Lite0 at 32 px)."""
    return tiny_lite0_search(tmp_path_factory.mktemp("onnx"))


@needs_onnx
def test_onnx_predicts_what_the_saved_model_does(results: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    from automl.report.onnx_export import OnnxModel

    exported, saved = tmp_path / "onnx", tmp_path / "saved"
    printed, measured = export_verified(results, exported, "onnx")
    assert "exported trial 0 as ONNX" in printed
    assert measured["converter"].startswith("tf2onnx ")
    # independently of the export's own check: onnxruntime against the SavedModel, any batch
    run_cli("export", "--results", results, "--out", saved)
    images, originals = default_test_images(64)
    model = OnnxModel((exported / "model.onnx").read_bytes(), 1)
    expected = tf.saved_model.load(str(saved))(tf.constant(images, tf.float32)).numpy()
    np.testing.assert_allclose(model.probs(images), expected, atol=1e-4)
    np.testing.assert_allclose(model.probs(images[:1]), expected[:1], atol=1e-4)
    # predict resizes a file outside the graph as training did: the same answer as the SavedModel
    assert_same_predictions(exported, saved, originals[:3], tmp_path)


@needs_onnx
@pytest.mark.parametrize("temperature", [None, 1.7])
def test_two_classes_give_two_columns(temperature: float | None) -> None:
    """A sigmoid head is exported as [1 - p, p], as the SavedModel and TFLite answer, and
    calibrated alike with a temperature."""
    from automl.backbones.registry import get_spec
    from automl.config import TrialConfig
    from automl.report.converted import keras_probs
    from automl.report.onnx_export import OnnxModel, to_onnx
    from automl.trial.model import build_model, reset_keras

    reset_keras(0)
    config = TrialConfig.from_params({
        "backbone": "efficientnet_lite0", "image_size": 32, "freeze_depth": 1.0,
        "head_width": 0, "dropout": 0.0, "learning_rate": 1e-3, "augmentation": "none"})
    tm = build_model(config, get_spec("efficientnet_lite0"), 2, None)
    model = OnnxModel(to_onnx(tm.inference, 32, True, temperature)[0], 1)
    images = np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 3)).astype(np.float32)
    got = model.probs(images)
    assert got.shape == (5, 2)
    np.testing.assert_allclose(got, keras_probs(tm.inference, images, True, temperature),
                               atol=1e-5)


def test_quantized_onnx_gets_one_clear_line(tmp_path: Path) -> None:
    err = run_cli("export", "--results", tmp_path / "results", "--out", tmp_path / "x",
                  "--format", "onnx", "--quantize", "int8", code=2).err
    assert err.strip() == "error: --quantize int8 applies to --format tflite only."
    assert not (tmp_path / "x").exists()


def test_without_the_converter_onnx_is_refused_with_how_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if not installed
    err = run_cli("export", "--results", tmp_path / "results", "--out", tmp_path / "x",
                  "--format", "onnx", code=2).err
    assert err.strip() == ("error: --format onnx needs tf2onnx, which is not installed: "
                           "pip install 'automl[onnx]'")
    assert not (tmp_path / "x").exists()
    # an ONNX export, read where onnxruntime is missing
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "model.onnx").write_bytes(b"")
    (tmp_path / "x" / "labels.txt").write_text("a\nb\n")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    err = run_cli("predict", tmp_path / "x", tmp_path / "image.png", code=2).err
    assert "needs onnxruntime, which is not installed: pip install 'automl[onnx]'" in err
