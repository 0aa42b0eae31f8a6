"""`automl report` on a small real search: every section filled, images real, numbers consistent."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import animal_mnist_npz, csv_rows, load_study, run_cli
from PIL import Image

# every trial fine-tunes (freeze 0.9 < 1), so the best trial's curves have a phase 2 to mark
SPACE = """\
backbone: efficientnet_lite0
image_size: 48
freeze_depth: 0.9
head_width: {choices: [0, 64]}
dropout: 0.1
learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}
augmentation: none
"""
SECTIONS = {"history", "cost", "importances", "dimensions", "curves", "confusion",
            "reliability", "mistakes", "gradcam"}
TEST_IMAGES = 10 * 20


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 3-trial search (Lite0, 48 px, 2 + 1 epochs) on 400/100/200 Animal-MNIST images, then
    its report."""
    root = tmp_path_factory.mktemp("report")
    (root / "space.yaml").write_text(SPACE)
    data = animal_mnist_npz(root / "tiny.npz")
    results = root / "results"
    search_out = run_cli("search", "--space", root / "space.yaml", "--data", data, "--trials",
                         "3", "--results", results, "--epochs", "2", "--fine-tune-epochs", "1",
                         "--screen-fraction", "1").out
    report_out = run_cli("report", "--results", results).out
    folder = results / "default"
    return {"root": root, "results": results, "folder": folder,
            "board": csv_rows(folder / "leaderboard.csv"), "search_out": search_out,
            "report_out": report_out, "html": (folder / "report.html").read_text(encoding="utf-8")}


def _png(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"), dtype=np.float64)


def test_every_section_has_a_real_png_embedded_in_the_page(run: dict) -> None:
    folder, page = run["folder"], run["html"]
    files = {p.stem: p for p in (folder / "report").glob("*.png")}
    assert set(files) == SECTIONS
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="[^"]*" '
                          r'data-file="(\w+)\.png">', page)
    assert {name for _, name in embedded} == SECTIONS
    for encoded, name in embedded:
        data = base64.b64decode(encoded)
        assert data == files[name].read_bytes(), name  # the page shows exactly the file
        pixels = _png(data)
        height, width, _ = pixels.shape
        assert width >= 300 and height >= 200, name
        assert pixels.std() > 5, f"{name} is blank"
    # self-contained: nothing is loaded from anywhere else
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_images_are_of_the_right_kind(run: dict) -> None:
    report = run["folder"] / "report"
    shape = {name: _png((report / f"{name}.png").read_bytes()).shape[:2] for name in SECTIONS}
    h, w = shape["confusion"]
    assert 0.7 < w / h < 1.4  # a square matrix (plus colour bar)
    for name in ("history", "curves", "gradcam", "mistakes"):
        h, w = shape[name]
        assert w > 1.5 * h, name  # strips and wide plots
    # Grad-CAM overlays use the jet colour map over grey images: clearly red (evidence) and
    # clearly blue (none) regions
    cam = _png((report / "gradcam.png").read_bytes())
    red, blue = cam[..., 0] - cam[..., 2] > 60, cam[..., 2] - cam[..., 0] > 60
    assert red.mean() > 0.005 and blue.mean() > 0.02
    # the confusion matrix uses shades of blue: many pixels clearly bluer than red
    conf = _png((report / "confusion.png").read_bytes())
    assert ((conf[..., 2] - conf[..., 0]) > 60).mean() > 0.05


def test_confusion_matrix_agrees_with_the_leaderboard(run: dict) -> None:
    from automl.report.report import build_report

    report = build_report(run["results"], "default")
    best = run["board"][0]
    test = report.test
    assert test is not None and test.trial == int(best["trial"])
    assert test.confusion.shape == (10, 10)
    assert int(test.confusion.sum()) == TEST_IMAGES
    assert test.confusion.sum(axis=1).tolist() == [20] * 10  # 20 test images per class
    recorded = float(best["test_accuracy"])
    assert np.trace(test.confusion) / TEST_IMAGES == pytest.approx(recorded, abs=1e-6)
    assert test.recorded_accuracy == pytest.approx(recorded, abs=1e-6)
    assert f"Test accuracy of trial {test.trial}: {recorded:.4f}" in run["html"]
    # per-class table: recall is the diagonal over the row, precision over the column
    table = report.per_class
    diag = np.diag(test.confusion)
    np.testing.assert_allclose(table["recall"], diag / 20)
    cols = test.confusion.sum(axis=0)
    np.testing.assert_allclose(table["precision"], np.where(cols > 0, diag / np.maximum(cols, 1),
                                                             0))
    assert table["support"].sum() == TEST_IMAGES
    assert "<th>precision</th>" in run["html"] and "<th>f1</th>" in run["html"]
    assert f"best trial {test.trial}: test accuracy {recorded:.4f} (200 test images)" in \
        run["report_out"]


def test_sections_and_curves_of_the_best_trial(run: dict) -> None:
    page = run["html"]
    for title in ("Leaderboard (top 20)", "Per-backbone summary", "Optimisation history",
                  "Accuracy against serving cost", "Parameter importances",
                  "Validation accuracy against each search dimension",
                  "Best trial: training curves", "Best trial on the test split",
                  "Per-class precision, recall and F1", "Most confident mistakes",
                  "Grad-CAM"):
        assert f"<h2>{title}" in page, title
    assert 'class="note"' not in page  # nothing was left out
    assert "no fine-tuning phase" not in page
    assert "optuna-dashboard sqlite:///" in page
    # without limits each architecture is measured after its first trial; every row has it
    assert all(float(r["latency_ms"]) > 0 and float(r["size_mb"]) > 0 for r in run["board"])
    study = load_study(run["results"])
    assert [k for k in study.user_attrs if k.startswith("cost:")] == [
        "cost:efficientnet_lite0@48"]
    # the Pareto front's table: the finished trials nothing beats on accuracy and latency
    front = [r for r in run["board"] if r["pareto"] == "True"]
    assert front and all(r["state"] == "COMPLETE" for r in front)
    section = page.split("<h2>Accuracy against serving cost")[1].split("<h2>")[0]
    assert all(f"<td>{r['trial']}</td>" in section for r in front)
    # the best trial's history (stored with the study) has both phases
    best = load_study(run["results"]).trials[int(run["board"][0]["trial"])]
    phases = [row["phase"] for row in best.user_attrs["history"]]
    assert phases[0] == 1 and phases[-1] == 2


def test_non_terminal_search_prints_one_line_per_trial(run: dict) -> None:
    lines = [line for line in run["search_out"].splitlines() if line.startswith("[")]
    assert [line.split(" trial ")[0] for line in lines] == ["[1/3]", "[2/3]", "[3/3]"]
    for line in lines:
        assert re.search(r"trial \d COMPLETE val_acc=0\.\d{4} \| best 0\.\d{4} \(trial \d\) \| "
                         r"backbone=efficientnet_lite0 .* \| (\d+m)?\d+s elapsed"
                         r"(, ~(\d+m)?\d+s left)?$", line)
    assert "\x1b[" not in run["search_out"]  # no terminal escapes in a log


def test_study_loads_with_the_url_the_readme_gives(run: dict, monkeypatch) -> None:
    """`optuna-dashboard sqlite:///results/<study>/study.db` works from the project folder."""
    import optuna

    monkeypatch.chdir(run["results"].parent)
    study = optuna.load_study(study_name="default", storage="sqlite:///results/default/study.db")
    assert len(study.trials) == 3 and study.best_trial.number == int(run["board"][0]["trial"])


def test_report_of_a_missing_study_is_a_clear_error(tmp_path: Path) -> None:
    err = run_cli("report", "--results", tmp_path, "--study", "nope", code=2).err
    assert err.startswith("error: there is no study 'nope' in ")
    assert not (tmp_path / "nope").exists()


def test_importances_of_small_studies_are_a_note(tmp_path: Path) -> None:
    """One complete trial, or trials whose parameters never differ: a note, no exception."""
    import optuna

    from automl.report.report import importance_groups

    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3}, distributions=dist,
                                              value=0.5, user_attrs={"stage": "screen"}))
    groups, notes = importance_groups(study)
    assert groups == []
    assert notes == ["screening trials: 1 complete trial(s) only; parameter importances need at "
                     "least 2 complete trials whose sampled parameters differ."]
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3}, distributions=dist,
                                              value=0.6, user_attrs={"stage": "screen"}))
    assert importance_groups(study)[1] == [
        "screening trials: 2 complete trial(s) with no parameter that varies; parameter "
        "importances need at least 2 complete trials whose sampled parameters differ."]
    for lr, value in ((1e-2, 0.9), (1e-1, 0.95)):
        study.add_trial(optuna.trial.create_trial(params={"lr": lr}, distributions=dist,
                                                  value=value, user_attrs={"stage": "screen"}))
    groups, notes = importance_groups(study)
    assert notes == [] and groups == [("screening trials (4 complete)", {"lr": 1.0})]


def test_missing_weights_leave_a_note_and_the_other_sections(run: dict, tmp_path: Path) -> None:
    import shutil

    from automl.report.report import build_report

    results = tmp_path / "results"
    shutil.copytree(run["results"], results)
    best = int(run["board"][0]["trial"])
    weights = results / "default" / "trials" / f"trial_{best:04d}" / "model.weights.h5"
    weights.unlink()
    # the copied study records the original artefact folder: point it at the copy
    report = build_report(results, "default", artifacts=str(results / "default" / "trials"))
    assert report.test is None
    assert report.notes == [f"The test-split sections are missing: the weights of trial {best} "
                            f"({weights}) are missing; they may have been deleted. Re-run the "
                            "search to rebuild them."]
    assert set(report.images) == {"history", "cost", "importances", "dimensions", "curves"}
    assert sorted(p.stem for p in (results / "default" / "report").glob("*.png")) == sorted(
        report.images)  # the earlier report's test figures are gone with it
    assert 'class="note"' in report.html.read_text(encoding="utf-8")
