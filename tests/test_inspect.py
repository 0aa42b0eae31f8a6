"""`automl inspect`, the search's leak warning, calibrated export and the report's trust
sections (issue 17), on one small real search whose given test split leaks two training images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import plain_carve, run_cli, write_npz

from automl.data.load import load_data
from automl.data.sources import read_animal_mnist
from automl.data.twins import thumbnails
from automl.report.inspect import find_pairs, pair_counts
from automl.search.run import leak_message

pytestmark = pytest.mark.slow
LEAKED = [(3, 5), (40, 17)]  # (x_train index, x_test index) of the byte-identical copies


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(results, data, stderr) of a 1-trial search on 30/8/8 images per class of the embedded
    data (images it holds once) whose x_test holds two x_train images (2 of 80: 2.5%)."""
    tmp = tmp_path_factory.mktemp("inspect")
    pool = read_animal_mnist().pools["train"]
    hashes = pool.content_hashes()
    unique = np.isin(hashes, np.unique(hashes, return_counts=True)[0][
        np.unique(hashes, return_counts=True)[1] == 1])  # images the data holds once
    rng = np.random.default_rng(0)
    index = {key: [] for key in ("train", "val", "test")}
    for c in range(10):
        members = rng.permutation(np.flatnonzero((pool.labels == c) & unique))
        for key, (start, stop) in (("train", (0, 30)), ("val", (30, 38)), ("test", (38, 46))):
            index[key].extend(members[start:stop].tolist())
    arrays = {}
    for key, idx in index.items():
        arrays[f"x_{key}"], arrays[f"y_{key}"] = pool.array[idx], pool.labels[idx]
    for a, b in LEAKED:
        arrays["x_test"][b] = arrays["x_train"][a]
        arrays["y_test"][b] = arrays["y_train"][a]
    data = write_npz(tmp / "leaky.npz", **arrays)
    space = tmp / "space.yaml"
    space.write_text("backbone: efficientnet_lite0\nimage_size: 32\n")
    results = tmp / "results"
    printed = run_cli("search", "--data", data, "--space", space, "--results", results,
                      "--trials", "1", "--epochs", "3", "--fine-tune-epochs", "0", "--quiet")
    return results, data, printed.err


def test_search_warns_once_when_the_test_split_leaks(searched) -> None:
    err = searched[2]
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert "2 of the 80 test images (2.5%) are byte-identical to a training image" in warnings[0]


def test_inspect_writes_every_image_ranked_and_the_pairs(searched) -> None:
    results, data, _ = searched
    out = run_cli("inspect", "--results", results).out
    assert "efficientnet_lite0 at 32 px (pooled activations from the feature cache)" in out
    assert "train-test: " in out and "2 test image(s) (2.5%) have a twin in train" in out
    folder = results / "default"
    labels = pd.read_csv(folder / "label_issues.csv")
    assert {"source", "split", "given", "suggested", "score"} <= set(labels.columns)
    assert len(labels) == 300 + 80 and labels["score"].is_monotonic_increasing
    assert sorted(labels.loc[labels.split == "train", "source"]) == sorted(
        f"x_train[{i}]" for i in range(300))
    assert set(labels.loc[labels.split == "validation", "source"]) == {
        f"x_val[{i}]" for i in range(80)}
    pairs = pd.read_csv(folder / "duplicates.csv")
    assert list(pairs.columns[:2]) == ["source_a", "source_b"]
    exact = pairs[pairs.exact & (pairs.split_a == "train") & (pairs.split_b == "test")]
    assert set(zip(exact.source_a, exact.source_b, strict=True)) == {
        (f"x_train[{a}]", f"x_test[{b}]") for a, b in LEAKED}
    summary = json.loads((folder / "inspect.json").read_text())
    assert summary["trial"] == 0 and summary["image_size"] == 32


def test_export_is_calibrated_and_equals_the_report(searched, tmp_path: Path) -> None:
    import tensorflow as tf

    from automl.data import pipeline
    from automl.report.report import build_report

    results, data, _ = searched
    out = run_cli("export", "--results", results, "--out", tmp_path / "model").out
    assert "calibrated: temperature" in out and "ECE (15 bins)" in out
    meta = json.loads((tmp_path / "model" / "automl.json").read_text())
    fit = meta["calibration"]
    assert fit["measured_on"] == "test" and fit["bins"] == 15
    assert fit["nll_after"] <= fit["nll_before"]
    assert 0 <= fit["ece_after"] <= 1 and 0 <= fit["ece_before"] <= 1

    run_cli("inspect", "--results", results)
    report = build_report(results, "default")
    assert report.test is not None and report.test.calibration is not None
    assert report.test.calibration.temperature == pytest.approx(fit["temperature"], rel=1e-6)
    test = load_data(data).test
    saved = tf.saved_model.load(str(tmp_path / "model"))
    images = np.stack(list(pipeline.images(test, 32).as_numpy_iterator()))
    served = saved(tf.constant(images, tf.float32)).numpy()
    np.testing.assert_allclose(served, report.test.calibrated, atol=1e-5)
    assert np.array_equal(served.argmax(axis=1), report.test.probs.argmax(axis=1))
    page = report.html.read_text()
    assert 'class="scroll"' in page and "Calibration (test split)" in page
    assert 'href="label_issues.csv"' in page and 'href="duplicates.csv"' in page
    assert {"reliability", "label_issues", "duplicates"} <= set(report.images)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_float_converted_exports_are_calibrated_as_the_report(searched, tmp_path: Path,
                                                              fmt: str) -> None:
    """A float32 TFLite or ONNX export holds the SavedModel's temperature: its probabilities
    over the real test images are the report's calibrated ones within 1e-5."""
    from automl.data import pipeline
    from automl.report.export import MODEL_FILES
    from automl.report.report import build_report

    if fmt == "onnx":
        pytest.importorskip("tf2onnx")
        pytest.importorskip("onnxruntime")
        from automl.report.onnx_export import OnnxModel as Model
    else:
        from automl.report.tflite import TFLiteModel as Model
    results, data, _ = searched
    out = run_cli("export", "--results", results, "--out", tmp_path / fmt, "--format", fmt).out
    assert "calibrated: temperature" in out and "ECE (15 bins)" in out
    meta = json.loads((tmp_path / fmt / "automl.json").read_text())
    fit = meta["calibration"]
    assert fit["measured_on"] == "test" and fit["nll_after"] <= fit["nll_before"]
    assert "calibration" not in meta["measured"] and meta["measured"]["max_abs_diff"] <= 1e-5
    report = build_report(results, "default")
    assert report.test.calibration.temperature == pytest.approx(fit["temperature"], rel=1e-6)
    images = np.stack(list(pipeline.images(load_data(data).test, 32).as_numpy_iterator()))
    served = Model((tmp_path / fmt / MODEL_FILES[fmt]).read_bytes(), 1).probs(images)
    np.testing.assert_allclose(served, report.test.calibrated, atol=1e-5)
    assert np.array_equal(served.argmax(axis=1), report.test.probs.argmax(axis=1))
    print(f"{fmt}: max difference from the report's calibrated probabilities "
          f"{np.max(np.abs(served - report.test.calibrated)):.3g}")


def test_inspect_on_data_that_moved_is_one_error(searched) -> None:
    results, data, _ = searched
    moved = data.with_name("moved.npz")
    data.rename(moved)
    try:
        err = run_cli("inspect", "--results", results, code=2).err
    finally:
        moved.rename(data)
    assert "cannot be loaded from where the search read it" in err and "--data" in err
    assert err.count("\n") == 1


def test_the_old_default_carve_has_62_test_images_twinned_in_train(tmp_path: Path) -> None:
    """The default split before the grouped carve, given as an .npz (so used as given): the
    exact-duplicate check reports its 62 test/train twins, and the search would warn."""
    pool = read_animal_mnist().pools["train"]
    parts = plain_carve(pool.labels, {"validation": 0.15, "test": 0.15}, 0, 10)
    keys = {"train": "train", "validation": "val", "test": "test"}
    arrays = {}
    for name, idx in parts.items():
        arrays[f"x_{keys[name]}"], arrays[f"y_{keys[name]}"] = pool.array[idx], pool.labels[idx]
    data = load_data(write_npz(tmp_path / "old.npz", **arrays))
    assert data.test_twins() == 62
    assert leak_message(data).startswith("62 of the 1500 test images (4.1%)")
    thumbs = thumbnails(data)
    pairs = find_pairs(data, thumbs, thumbs)  # thumbnails stand in for activations here
    counts = pair_counts(pairs, data).set_index(["split_a", "split_b"])
    assert counts.loc[("train", "test"), "exact"] == 62
    assert counts.loc[("train", "validation"), "exact"] == 62
    exact = pairs[pairs.exact & (pairs.split_b == "test") & (pairs.split_a == "train")]
    for row in exact.itertuples():
        a, b = int(row.source_a[8:-1]), int(row.source_b[7:-1])  # x_train[a], x_test[b]
        assert np.array_equal(arrays["x_train"][a], arrays["x_test"][b])
    assert load_data(None).test_twins() == 0  # the grouped carve: none
