"""Bad input and failing trials: one clear message, exit code 2, nothing earlier lost."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
import yaml
from helpers import csv_rows, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from automl.errors import ConfigError
from automl.space import DIMENSIONS, SearchSpace

TINY = "backbone: efficientnet_lite0\nimage_size: 32\n"


def test_unwritable_results_folder(tmp_path: Path) -> None:
    if os.geteuid() == 0:  # root writes anywhere: use a path under a regular file instead
        blocker = tmp_path / "file"
        blocker.write_text("x")
        results = blocker / "results"
    else:
        results = tmp_path / "ro"
        results.mkdir(mode=0o500)
    space = tmp_path / "space.yaml"
    space.write_text(TINY)
    err = run_cli("search", "--space", space, "--results", results, "--trials", "1", code=2).err
    assert f"--results {results}" in err and "cannot create the folder" in err


def _study_with(tmp_path: Path, states: list[optuna.trial.TrialState]) -> None:
    from automl.search.study import open_study

    study = open_study(tmp_path, "s", None, create=True)
    for number, state in enumerate(states):
        trial = study.ask()
        trial.set_user_attr("config", {"backbone": "efficientnet_lite0", "image_size": 32,
                                       "freeze_depth": 1.0, "head_width": 0, "dropout": 0.0,
                                       "learning_rate": 1e-3, "augmentation": "none"})
        if state == optuna.trial.TrialState.COMPLETE:
            trial.set_user_attr("result", {"val_accuracy": 0.5, "val_loss": 1.0,
                                           "weights_file": str(tmp_path / f"w{number}")})
            study.tell(trial, 0.5)
        else:
            trial.set_user_attr("reason", "boom")
            study.tell(trial, state=state)


@pytest.mark.parametrize(("trial", "message"), [
    (1, "--trial 1: that trial is PRUNED, not COMPLETE"),
    (2, "--trial 2: that trial is FAIL, not COMPLETE"),
    (7, "--trial 7: the study has no trial 7 (trials: 0, 1, 2)"),
    (0, "--trial 0: its weights were not kept"),
])
def test_export_of_a_trial_without_weights_is_refused(tmp_path: Path, trial: int,
                                                      message: str) -> None:
    S = optuna.trial.TrialState
    _study_with(tmp_path, [S.COMPLETE, S.PRUNED, S.FAIL])
    out = tmp_path / "model"
    assert message in run_cli("export", "--results", tmp_path, "--study", "s", "--trial", trial,
                              "--out", out, code=2).err
    assert not out.exists()


def test_export_into_a_foreign_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert "is not an earlier export" in run_cli("export", "--results", tmp_path, "--out", out,
                                                 code=2).err
    assert (out / "notes.txt").read_text() == "keep me"


HUGE = 2_000_000_000  # a head of 2e9 units needs 10 TB: a real out-of-memory error, at once


def test_five_failing_trials_in_a_row_stop_the_search(tmp_path: Path) -> None:
    """Every trial runs out of memory: each is a FAIL row with its reason, then a clear stop."""
    space = tmp_path / "space.yaml"
    space.write_text(TINY + f"head_width: {HUGE}\nlearning_rate: {{low: 1.0e-3, high: 1.0e-2}}\n")
    results = tmp_path / "results"
    err = run_cli("search", "--space", space, "--results", results, "--trials", "20", code=2).err
    assert "5 trials failed in a row; the search stops. Last reason: ResourceExhaustedError" in err
    rows = csv_rows(results / "default" / "leaderboard.csv")
    assert [r["state"] for r in rows] == ["FAIL"] * 5
    assert all("OOM" in r["reason"] for r in rows)


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(TINY + f"head_width: {{choices: [0, {HUGE}]}}\n")
    results = tmp_path / "results"
    run_cli("search", "--space", space, "--results", results, "--trials", "3", "--epochs", "1",
            "--fine-tune-epochs", "0")
    rows = csv_rows(results / "default" / "leaderboard.csv")
    assert sum(r["state"] == "COMPLETE" for r in rows) == 3
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert failed and all(r["head_width"] == str(HUGE) and "OOM" in r["reason"] for r in failed)


_values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["efficientnet_lite0", "vgg16", "none", "flip", "1e-4"]))
_specs = st.one_of(
    _values,
    st.lists(_values, max_size=4),
    st.dictionaries(st.sampled_from(["choices", "low", "high", "log", "step", "other"]),
                    st.one_of(_values, st.lists(_values, max_size=4)), max_size=4),
)
_spaces = st.one_of(
    _values,
    st.lists(_values, max_size=3),
    st.dictionaries(st.sampled_from([*DIMENSIONS, "epochs", "Backbone"]), _specs, max_size=8),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_spaces)
def test_space_loader_fuzz_loads_or_raises_config_error(raw: object) -> None:
    try:
        SearchSpace.from_dict(raw, source="fuzz.yaml")
    except ConfigError as exc:
        assert "fuzz.yaml" in str(exc)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_space_file_fuzz_any_text_loads_or_raises_config_error(text: str, tmp_path_factory:
                                                               pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "space.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        SearchSpace.from_file(path)
    except ConfigError as exc:
        assert str(path) in str(exc)
    except yaml.YAMLError:  # pragma: no cover - must never escape
        pytest.fail("a YAML error escaped")
