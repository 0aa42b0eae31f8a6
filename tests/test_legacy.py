"""Results written by automl before the subpackage redesign still load, export, predict and resume.

The fixture (tests/fixtures/legacy_results.tar.xz, made by make_legacy_results.sh with the code
at 4a472a9) holds an Optuna study with COMPLETE, PRUNED and FAIL trials, a keras-tuner study,
the kept weights of a ``--weights none`` MobileNetV3-Small and an export of the best trial.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from helpers import csv_rows, load_study, run_cli

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_results.tar.xz"
pytestmark = pytest.mark.slow


@pytest.fixture()
def legacy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The unpacked fixture, as the current folder (its data path is relative)."""
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path, filter="data")
    root = tmp_path / "legacy"
    monkeypatch.chdir(root)
    return root


def _expected(root: Path) -> dict:
    return json.loads((root / "expected.json").read_text())


def _old_rows(root: Path, study: str) -> list[dict[str, str]]:
    return csv_rows(root / f"{study}_leaderboard.csv")


@pytest.mark.parametrize("study", ["legacy", "legacy_kt"])
def test_old_studies_give_the_same_leaderboard(legacy: Path, study: str) -> None:
    run_cli("leaderboard", "--study", study, "--results", "results", "--csv", "now.csv")
    now, old = csv_rows(legacy / "now.csv"), _old_rows(legacy, study)
    assert [r["trial"] for r in now] == [r["trial"] for r in old]
    for a, b in zip(now, old, strict=True):
        for column in ("state", "val_accuracy", "test_accuracy", "backbone", "head_width",
                       "learning_rate", "epochs", "params", "cut", "stage", "weights_kept",
                       "reason"):
            assert a[column] == b[column], (a["trial"], column)
    states = {r["state"] for r in now}
    if study == "legacy":
        assert states == {"COMPLETE", "PRUNED", "FAIL"}
        failed = next(r for r in now if r["state"] == "FAIL")
        assert "ResourceExhausted" in failed["reason"] or "memory" in failed["reason"].lower()


def test_an_old_trial_exports_and_predicts_as_before(legacy: Path) -> None:
    # the fixture was made in another folder: --data names where its data is now
    run_cli("export", "--study", "legacy", "--results", "results", "--data", "tiny.npz",
            "--out", "again")
    assert (legacy / "again" / "saved_model.pb").is_file()
    assert (legacy / "again" / "labels.txt").read_text() == (
        legacy / "results" / "export" / "labels.txt").read_text()
    expected = json.loads((legacy / "expected_predict.json").read_text())

    def predict(model: str) -> list[dict]:
        got = json.loads(run_cli("predict", model, "images/a.png", "images/b.png", "--top",
                                 "1000", "--json").out)
        assert [g["file"] for g in got] == [e["file"] for e in expected]
        return got

    old = predict("results/export")  # the old export itself predicts as it did
    for g, e in zip(old, expected, strict=True):
        assert g["predictions"][0]["label"] == e["predictions"][0]["label"]
        assert g["predictions"][0]["probability"] == pytest.approx(
            e["predictions"][0]["probability"], abs=1e-5)
    # re-exported, it serves the same model calibrated: softmax(log p / T), same top label
    from automl.report.calibrate import calibrated

    temperature = json.loads((legacy / "again" / "automl.json").read_text())["calibration"][
        "temperature"]
    names = (legacy / "again" / "labels.txt").read_text().splitlines()
    for before, after in zip(old, predict("again"), strict=True):
        p = {x["label"]: x["probability"] for x in before["predictions"]}
        q = {x["label"]: x["probability"] for x in after["predictions"]}
        want = calibrated(np.array([[p[n] for n in names]]), temperature)[0]
        np.testing.assert_allclose([q[n] for n in names], want, atol=1e-5)
        assert after["predictions"][0]["label"] == before["predictions"][0]["label"]


@pytest.mark.parametrize("study, driver", [("legacy", ()),
                                           ("legacy_kt", ("--driver", "keras-tuner",
                                                          "--algorithm", "random"))])
def test_an_old_study_resumes(legacy: Path, study: str, driver: tuple[str, ...]) -> None:
    old = load_study(legacy / "results", study)
    finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in old.trials)
    target = finished + 1
    printed = run_cli("search", "--study", study, "--results", "results", "--data", "tiny.npz",
                      "--space", "space.yaml", "--weights", "none", "--epochs", "3",
                      "--keep-weights", "1", "--trials", str(target), *driver)
    assert f"{finished} of {target} trials finished" in printed.out
    now = load_study(legacy / "results", study)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in now.trials) == target
    before = {t.number: (t.state, t.value) for t in old.trials}
    assert {t.number: (t.state, t.value) for t in now.trials if t.number in before} == before
    rows = csv_rows(legacy / "results" / study / "leaderboard.csv")
    assert len(rows) == len(now.trials)
    assert os.path.getsize(legacy / "results" / study / "study.db") > 0
