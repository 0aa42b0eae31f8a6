"""Serving cost measured once per architecture; limits a search keeps to (end to end)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from helpers import csv_rows, load_study, run_cli

from automl.backbones.registry import get_spec
from automl.config import TrialConfig
from automl.paths import automl_home


def _count(backbone: str, size: int, width: int, classes: int) -> int:
    from automl.trial.model import build_model, count_params

    config = TrialConfig.from_params({"backbone": backbone, "image_size": size,
                                      "freeze_depth": 1.0, "head_width": width, "dropout": 0.0,
                                      "learning_rate": 1e-3, "augmentation": "none"})
    return count_params(build_model(config, get_spec(backbone), classes, None).inference)


def test_measure_counts_the_exported_model_and_converts_each_backbone_once() -> None:
    from automl.trial.cost import measure

    got = measure("efficientnet_lite0", 32, 3, [0, 16])
    part = got["backbone"]
    assert part["params"] == _count("efficientnet_lite0", 32, 0, 3)
    heads = {int(k): v for k, v in got["heads"].items()}
    assert heads[16]["params"] == (_count("efficientnet_lite0", 32, 16, 3)
                                   - _count("efficientnet_lite0", 32, 0, 3))
    assert heads[0] == {"params": 0, "latency_ms": 0.0} and heads[16]["latency_ms"] >= 0.0
    # float32 weights, BatchNormalization folded into the convolutions: a little under 4 B each
    assert 3.5 * part["params"] < part["tflite_bytes"] < 4.1 * part["params"]
    assert part["latency_ms"] > 0 and part["throughput_ips"] > 0 and got["seconds"] > 0
    # with the backbone's output width known, only a new head width is measured: no backbone
    heads_only = measure("efficientnet_lite0", 32, 3, [16], features=1280)
    assert heads_only["backbone"] is None and heads_only["features"] == 1280
    assert {int(k): v["params"] for k, v in heads_only["heads"].items()} == {
        16: heads[16]["params"]}
    store = json.loads((automl_home() / "cost" / "tflite_bytes.json").read_text())
    assert any(k.startswith("efficientnet_lite0|classes=3|") and v == part["tflite_bytes"]
               for k, v in store.items())


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, tiny_npz: Path) -> Path:
    """A search over Lite0 and Lite2 with --max-size-mb between their float32 .tflite sizes."""
    root = tmp_path_factory.mktemp("limited")
    space = root / "space.yaml"
    space.write_text("backbone: {choices: [efficientnet_lite0, efficientnet_lite2]}\n"
                     "image_size: 32\nfreeze_depth: 1.0\nhead_width: {choices: [0, 16]}\n"
                     "augmentation: none\n")
    run_cli("search", "--data", tiny_npz, "--space", space, "--results", root / "results",
            "--trials", "6", "--epochs", "2", "--fine-tune-epochs", "0",
            "--max-size-mb", "16")
    return root


def test_trials_over_the_limit_are_recorded_infeasible_and_not_trained(limited: Path) -> None:
    rows = csv_rows(limited / "results" / "default" / "leaderboard.csv")
    assert {r["backbone"] for r in rows} == {"efficientnet_lite0", "efficientnet_lite2"}
    for row in rows:
        assert float(row["latency_ms"]) > 0 and float(row["size_mb"]) > 0
        assert int(row["params"]) > 1_000_000
        lite2 = row["backbone"] == "efficientnet_lite2"
        assert (row["state"] == "INFEASIBLE") == lite2, row
        assert (float(row["size_mb"]) > 16) == lite2
        if lite2:
            assert row["reason"].startswith("not trained: size ") and "> --max-size-mb 16" \
                in row["reason"] and row["epochs"] == ""
    assert any(r["pareto"] == "True" for r in rows if r["state"] == "COMPLETE")
    study = load_study(limited / "results")
    for trial in study.get_trials():
        config = trial.user_attrs["config"]
        over = trial.constraints["size_mb"] > 0
        assert over == (config["backbone"] == "efficientnet_lite2")
        assert (trial.state == optuna.trial.TrialState.PRUNED) or not over
    # measured once per architecture, kept in the study
    assert set(k for k in study.user_attrs if k.startswith("cost:")) == {
        "cost:efficientnet_lite0@32", "cost:efficientnet_lite2@32"}


def test_export_picks_the_most_accurate_feasible_trial(limited: Path) -> None:
    out = run_cli("export", "--results", limited / "results", "--out", limited / "model").out
    meta = json.loads((limited / "model" / "automl.json").read_text())
    assert meta["config"]["backbone"] == "efficientnet_lite0", out


def test_a_study_keeps_its_limits(limited: Path, tiny_npz: Path) -> None:
    err = run_cli("search", "--data", tiny_npz, "--space", limited / "space.yaml", "--results",
                  limited / "results", "--trials", "7", "--max-size-mb", "30", code=2).err
    assert err.startswith("error: study 'default' was started with --max-size-mb 16; this run "
                          "asks for --max-size-mb 30.")
    assert err.count("\n") == 1


def test_when_no_trial_is_feasible_the_search_says_so_and_writes_the_board(
        limited: Path, tiny_npz: Path) -> None:
    out = run_cli("search", "--data", tiny_npz, "--space", limited / "space.yaml", "--results",
                  limited / "results", "--study", "tight", "--trials", "2", "--epochs", "1",
                  "--max-latency-ms", "0.001").out
    assert "no trial finished within --max-latency-ms 0.001: the fastest architecture measured" \
        in out
    rows = csv_rows(limited / "results" / "tight" / "leaderboard.csv")
    assert [r["state"] for r in rows] == ["INFEASIBLE", "INFEASIBLE"]
