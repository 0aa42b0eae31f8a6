"""TFLite export (automl.report.tflite): verified conversion, int8, predict on a .tflite export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

from automl.data import pipeline

SPACE = """\
backbone: efficientnet_lite0
image_size: 32
freeze_depth: 1.0
head_width: 32
dropout: 0.1
learning_rate: 3.0e-3
augmentation: none
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished trial on the embedded default (pretrained Lite0 at 32 px)."""
    root = tmp_path_factory.mktemp("tflite")
    (root / "space.yaml").write_text(SPACE)
    run_cli("search", "--space", root / "space.yaml", "--trials", "1", "--epochs", "3",
            "--results", root / "results")
    return root / "results"


def _test_images(count: int) -> tuple[np.ndarray, np.ndarray]:
    from automl.data.load import load_data

    data = load_data(None)
    images = np.stack(list(pipeline.images(data.test, 32).take(count).as_numpy_iterator()))
    return images, np.asarray(data.test.array[:count])


def test_float_tflite_predicts_what_the_keras_model_does(results: Path, tmp_path: Path) -> None:
    import tensorflow as tf
    from PIL import Image

    from automl.report.tflite import TFLiteModel

    lite, saved = tmp_path / "lite", tmp_path / "saved"
    printed = run_cli("export", "--results", results, "--out", lite, "--format", "tflite").out
    assert "exported trial 0 as TFLite (none)" in printed
    meta = json.loads((lite / "automl.json").read_text())
    measured = meta["measured"]
    assert meta["format"] == "tflite" and meta["image_size"] == 32
    assert measured["latency_ms"] > 0 and measured["size_mb"] > 1  # Lite0: about 3.4 M weights
    assert measured["max_abs_diff"] <= 1e-4
    assert measured["tflite_test_accuracy"] > 0.3  # 10 classes: chance is 0.1
    assert abs(measured["tflite_test_accuracy"] - measured["keras_test_accuracy"]) <= 1 / 1500
    # independently of the export's own check: the interpreter against the SavedModel
    run_cli("export", "--results", results, "--out", saved)
    images, originals = _test_images(64)
    got = TFLiteModel((lite / "model.tflite").read_bytes(), 1).probs(images)
    expected = tf.saved_model.load(str(saved))(tf.constant(images, tf.float32)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # predict resizes a file outside the graph as training did: the same answer as the SavedModel
    files = []
    for i in range(3):
        pixels = originals[i][..., 0] if originals[i].shape[-1] == 1 else originals[i]
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        files.append(tmp_path / f"{i}.png")
    from_lite = json.loads(run_cli("predict", lite, *files, "--json").out)
    from_saved = json.loads(run_cli("predict", saved, *files, "--json").out)
    for a, b in zip(from_lite, from_saved, strict=True):
        assert a["predictions"][0]["label"] == b["predictions"][0]["label"]
        assert a["predictions"][0]["probability"] == pytest.approx(
            b["predictions"][0]["probability"], abs=1e-4)


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
    (["--format", "onnx"], "error: --format onnx: expected savedmodel or tflite."),
    (["--quantize", "int8"], "error: --quantize int8 applies to --format tflite only."),
])
def test_bad_tflite_options_get_one_clear_line(results: Path, tmp_path: Path, extra: list[str],
                                               message: str) -> None:
    err = run_cli("export", "--results", results, "--out", tmp_path / "x", *extra, code=2).err
    assert err.strip() == message
    assert not (tmp_path / "x").exists()
