"""TFLite export (automl.report.tflite): verified conversion, int8, predict on a .tflite export."""

from __future__ import annotations

import json
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


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished trial on the embedded default (pretrained Lite0 at 32 px)."""
    return tiny_lite0_search(tmp_path_factory.mktemp("tflite"))


def test_float_tflite_predicts_what_the_keras_model_does(results: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    from automl.report.tflite import TFLiteModel

    lite, saved = tmp_path / "lite", tmp_path / "saved"
    printed, measured = export_verified(results, lite, "tflite")
    assert "exported trial 0 as TFLite (none)" in printed
    # independently of the export's own check: the interpreter against the SavedModel
    run_cli("export", "--results", results, "--out", saved)
    images, originals = default_test_images(64)
    got = TFLiteModel((lite / "model.tflite").read_bytes(), 1).probs(images)
    expected = tf.saved_model.load(str(saved))(tf.constant(images, tf.float32)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # predict resizes a file outside the graph as training did: the same answer as the SavedModel
    assert_same_predictions(lite, saved, originals[:3], tmp_path)


def test_int8_is_a_third_of_the_float_file_and_keeps_its_accuracy(results: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "int8"
    printed = run_cli("export", "--results", results, "--out", out, "--format", "tflite",
                      "--quantize", "int8").out
    assert "float32 conversion of the same model" in printed
    measured = json.loads((out / "automl.json").read_text())["measured"]
    assert measured["quantize"] == "int8" and measured["threads"] >= 1
    assert measured["size_mb"] <= measured["float32_size_mb"] / 3
    assert measured["latency_ms"] > 0 and measured["float32_latency_ms"] > 0
    # a small model at 32 px after 3 epochs: a loose bound here; the benchmark holds the 1 point
    assert abs(measured["tflite_test_accuracy"] - measured["keras_test_accuracy"]) <= 0.05


@pytest.mark.parametrize(("extra", "message"), [
    (["--format", "tflite", "--quantize", "int4"],
     "error: --quantize int4: expected one of none, float16, int8."),
    (["--format", "coreml"], "error: --format coreml: expected savedmodel, tflite or onnx."),
    (["--quantize", "int8"], "error: --quantize int8 applies to --format tflite only."),
])
def test_bad_tflite_options_get_one_clear_line(results: Path, tmp_path: Path, extra: list[str],
                                               message: str) -> None:
    err = run_cli("export", "--results", results, "--out", tmp_path / "x", *extra, code=2).err
    assert err.strip() == message
    assert not (tmp_path / "x").exists()
