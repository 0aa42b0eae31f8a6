"""The keras-tuner driver: the space it samples; tiny real searches through resume and export."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from helpers import csv_rows, load_study, run_cli

from automl.config import RunConfig
from automl.data import pipeline
from automl.errors import ConfigError
from automl.search.drivers.kerastuner_driver import budget_epochs, make_oracle, max_budget
from automl.search.drivers.kerastuner_space import from_value, from_values, to_hyperparameters
from automl.search.drivers.optuna_driver import suggest
from automl.space import Categorical, Fixed, FloatRange, IntRange, SearchSpace

WIDE = {
    "backbone": {"choices": ["efficientnet_lite0", "efficientnet_lite1"]},
    "image_size": {"low": 32, "high": 64, "step": 8},
    "freeze_depth": {"choices": [1.0, 0.9, 0.75]},
    "head_width": {"low": 16, "high": 256, "log": True},
    "dropout": {"low": 0.0, "high": 0.5, "step": 0.1},
    "learning_rate": {"low": 1.0e-5, "high": 1.0e-2, "log": True},
    "augmentation": {"choices": ["none", "flip"]},
}


def _allowed(space: SearchSpace, params: dict[str, Any]) -> list[str]:
    """Every value of ``params`` the YAML does not allow (exact type, bounds, grid)."""
    bad = []
    for name, p in space.params.items():
        v = params[name]
        if isinstance(p, Fixed):
            ok = v == p.value and type(v) is type(p.value)
        elif isinstance(p, Categorical):
            ok = v in p.choices and type(v) is type(p.choices[0])
        elif isinstance(p, IntRange):
            ok = type(v) is int and p.low <= v <= p.high and (p.log or (v - p.low) % p.step == 0)
        else:
            ok = type(v) is float and p.low <= v <= p.high
            if ok and p.step is not None:
                k = round((v - p.low) / p.step)
                ok = math.isclose(v, p.low + k * p.step, rel_tol=1e-9, abs_tol=1e-12)
        if not ok:
            bad.append(f"{name}={v!r}")
    return bad


def _score(params: dict[str, Any]) -> float:
    """A made-up objective that pulls the Bayesian oracle towards the upper bounds."""
    return params["head_width"] / 256 + params["dropout"] + math.log10(params["learning_rate"])


# ------------------------------------------------------------------------- space translation

def test_each_param_kind_becomes_the_matching_keras_tuner_hyperparameter() -> None:
    hp = to_hyperparameters(SearchSpace.from_dict(WIDE))
    config = {p["config"]["name"]: (p["class_name"], p["config"])
              for p in hp.get_config()["space"]}
    assert config["backbone"][0] == "Choice" and config["backbone"][1]["values"] == [
        "efficientnet_lite0", "efficientnet_lite1"]
    assert config["freeze_depth"][1]["values"] == [1.0, 0.9, 0.75]
    assert config["freeze_depth"][1]["ordered"] is True
    assert config["image_size"][0] == "Int"
    assert (config["image_size"][1]["min_value"], config["image_size"][1]["max_value"],
            config["image_size"][1]["step"]) == (32, 64, 8)
    assert config["head_width"][1]["sampling"] == "log" and config["head_width"][1]["step"] is None
    assert config["learning_rate"][0] == "Float"
    assert config["learning_rate"][1]["sampling"] == "log"
    assert config["dropout"][1]["step"] == 0.1
    fixed = to_hyperparameters(SearchSpace.from_dict({}))
    assert {p.__class__.__name__ for p in fixed.space} == {"Fixed"}
    assert fixed.values["backbone"] == "efficientnet_lite0" and fixed.values["image_size"] == 96


def test_values_keras_tuner_gets_wrong_are_brought_back_into_the_space() -> None:
    import keras_tuner as kt

    # keras-tuner's log-sampled Int reaches max + 1 at the top of its range (the Bayesian oracle
    # proposes exactly that); its stepped Float drops the top end: 0.5 // 0.1 == 4.0
    assert kt.engine.hyperparameters.Int("w", 16, 256, sampling="log").prob_to_value(1.0) == 257
    assert max(kt.engine.hyperparameters.Float("d", 0.0, 0.5, step=0.1).values) < 0.5
    assert from_value(IntRange("head_width", 16, 256, 1, True), 257) == 256
    assert from_value(FloatRange("dropout", 0.0, 0.5, 0.1), 0.30000000000000004) == 0.3
    assert from_value(FloatRange("dropout", 0.0, 0.5, 0.1), 0.55) == 0.5
    assert from_value(FloatRange("learning_rate", 1e-5, 1e-2, None, True), 0.010000000000000002
                      ) == 0.01
    assert from_value(IntRange("image_size", 32, 64, 8), 60) == 56
    with pytest.raises(ConfigError, match=r"key 'augmentation': keras-tuner proposed 'heavy', "
                       r"which is not one of the space's choices \['none', 'flip'\]"):
        from_value(Categorical("augmentation", ("none", "flip")), "heavy")


def _drive(oracle: Any, space: SearchSpace, n: int) -> list[tuple[dict, dict]]:
    """Ask ``oracle`` for ``n`` trials, scoring each; (raw values, translated params) pairs."""
    from keras_tuner.engine.trial import TrialStatus

    seen = []
    for _ in range(n):
        trial = oracle.create_trial("test")
        assert trial.status == TrialStatus.RUNNING
        params = from_values(space, trial.hyperparameters.values)
        seen.append((dict(trial.hyperparameters.values), params))
        oracle.update_trial(trial.trial_id, {"val_accuracy": _score(params)})
        trial.status = TrialStatus.COMPLETED
        oracle.end_trial(trial)
    return seen


@pytest.mark.parametrize("algorithm", ["random", "hyperband"])
def test_keras_tuner_oracles_sample_only_values_the_yaml_allows(algorithm: str,
                                                               tmp_path: Path) -> None:
    space = SearchSpace.from_dict(WIDE)
    oracle = make_oracle(algorithm, space, RunConfig(epochs=3, fine_tune_epochs=6))
    oracle.verbose = 0
    oracle._set_project_dir(str(tmp_path), "p")
    seen = _drive(oracle, space, 120)
    for _, params in seen:
        assert _allowed(space, params) == []
    # the whole space is reachable: every choice, both ends of the stepped and int ranges
    for name in ("backbone", "freeze_depth", "augmentation"):
        assert {p[name] for _, p in seen} == set(space.params[name].choices)
    assert {p["dropout"] for _, p in seen} == {0.0, 0.1, 0.2, 0.3, 0.4, 0.5}
    assert {p["image_size"] for _, p in seen} == {32, 40, 48, 56, 64}
    if algorithm == "hyperband":  # later rounds continue earlier configurations
        budgets = {raw["tuner/epochs"] for raw, _ in seen}
        assert budgets == {1, 3, 9}  # max budget 3 + 6 epochs, factor 3
        assert any("tuner/trial_id" in raw for raw, _ in seen)


def test_the_bayesian_oracle_samples_only_values_the_yaml_allows(tmp_path: Path) -> None:
    """Every vector the Gaussian process can propose (corners included) and real proposals."""
    space = SearchSpace.from_dict(WIDE)
    oracle = make_oracle("bayesian", space, RunConfig())
    oracle.verbose = 0
    oracle._set_project_dir(str(tmp_path), "p")
    rng = np.random.default_rng(0)
    vectors = [np.zeros(7), np.ones(7), *rng.uniform(size=(300, 7)),
               *rng.integers(0, 2, size=(60, 7)).astype(float)]
    raw_widths = set()
    for vector in vectors:
        values = oracle._vector_to_values(vector)  # what populate_space turns the GP optimum into
        raw_widths.add(values["head_width"])
        assert _allowed(space, from_values(space, values)) == []
    assert max(raw_widths) == 257  # keras-tuner's own overshoot, which the translation clamps
    oracle.num_initial_points = 3
    seen = _drive(oracle, space, 4)  # three random points, then one Gaussian-process proposal
    assert all(_allowed(space, params) == [] for _, params in seen)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_the_optuna_driver_samples_only_values_the_yaml_allows(sampler: str) -> None:
    space = SearchSpace.from_dict(WIDE)
    study = optuna.create_study(direction="maximize", sampler=(
        optuna.samplers.RandomSampler(seed=0) if sampler == "random"
        else optuna.samplers.TPESampler(seed=0, n_startup_trials=10)))
    seen = []
    for _ in range(80):
        trial = study.ask()
        params = suggest(space, trial)
        seen.append(params)
        assert _allowed(space, params) == [], params
        study.tell(trial, _score(params))
    assert {p["dropout"] for p in seen} <= {0.0, 0.1, 0.2, 0.3, 0.4, 0.5} | {
        0.30000000000000004}
    assert max(p["head_width"] for p in seen) <= 256


def test_hyperband_budgets_fill_the_head_phase_first() -> None:
    run = RunConfig(epochs=10, fine_tune_epochs=5)
    assert [budget_epochs(b, run) for b in (2, 5, 10, 12, 15)] == [
        (2, 0), (5, 0), (10, 0), (10, 2), (10, 5)]
    space = SearchSpace.from_dict(WIDE)
    assert max_budget(space, run) == 15
    assert max_budget(SearchSpace.from_dict({**WIDE, "freeze_depth": 1.0}), run) == 10


# ------------------------------------------------------------------- real searches end to end

SPACE = """\
backbone: efficientnet_lite0
image_size: 32
freeze_depth: 0.98
head_width: {choices: [0, 32]}
dropout: {low: 0.0, high: 0.3, step: 0.1}
learning_rate: {low: 1.0e-3, high: 1.0e-2, log: true}
augmentation: none
"""
EPOCHS = {"random": ["--epochs", "2", "--fine-tune-epochs", "1"],
          "bayesian": ["--epochs", "2", "--fine-tune-epochs", "1"],
          # max budget 3 = 1 head + 2 fine-tuning epochs: 3 trials of 1 epoch, then the best of
          # them continued with 3
          "hyperband": ["--epochs", "1", "--fine-tune-epochs", "2"]}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["random", "bayesian", "hyperband"])
def test_search_resume_and_export(algorithm: str, tiny_npz: Path, tmp_path: Path) -> None:
    import tensorflow as tf

    from automl.data.load import load_data
    from automl.trial.run import scores

    (tmp_path / "space.yaml").write_text(SPACE)
    results = tmp_path / "results"
    argv = ["search", "--driver", "keras-tuner", "--algorithm", algorithm, "--data", str(tiny_npz),
            "--space", str(tmp_path / "space.yaml"), "--results", str(results),
            "--batch-size", "64", *EPOCHS[algorithm]]
    board = results / "default" / "leaderboard.csv"
    project = results / "default" / "keras_tuner" / algorithm

    run_cli(*argv, "--trials", "2")
    assert [r["trial"] for r in csv_rows(board)] and len(csv_rows(board)) == 2
    # resume: only the two missing trials run
    assert "2 of 4 trials finished" in run_cli(*argv, "--trials", "4").out
    rows = csv_rows(board)
    assert sorted(int(r["trial"]) for r in rows) == [0, 1, 2, 3]
    assert {r["state"] for r in rows} == {"COMPLETE"}
    accuracies = [float(r["val_accuracy"]) for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)

    # every study trial is one keras-tuner trial of the project, with the same score
    study = load_study(results)
    kt_ids = [t.user_attrs["kt_trial_id"] for t in study.trials]
    assert kt_ids == ["0000", "0001", "0002", "0003"]
    assert sorted(p.name for p in project.glob("trial_*")) == [f"trial_{i}" for i in kt_ids]
    for t in study.trials:
        kt_trial = json.loads((project / f"trial_{t.user_attrs['kt_trial_id']}" / "trial.json"
                               ).read_text())
        assert kt_trial["status"] == "COMPLETED" and kt_trial["score"] == t.value
        assert t.user_attrs["config"]["head_width"] in (0, 32)
        kept = results / "default" / "trials" / t.user_attrs["weights"]
        assert kept.parent.name == f"trial_{t.number:04d}" and kept.is_file()  # as Optuna's
    oracle = json.loads((project / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {} and oracle["retry_queue"] == []

    if algorithm == "hyperband":
        # three trials with a budget of 1 epoch (head only), then the best of them continued
        # with 3: its head phase is taken over and it fine-tunes for 2 epochs
        assert [t.user_attrs["kt_budget"] for t in study.trials] == [1, 1, 1, 3]
        assert [t.user_attrs["stage"] for t in study.trials] == ["hyperband r0"] * 3 + [
            "hyperband r1"]
        first = study.trials[:3]
        best = max(first, key=lambda t: (t.value, -t.number))
        last = study.trials[3]
        assert last.user_attrs["kt_continues"] == best.user_attrs["kt_trial_id"]
        assert last.user_attrs["refines"] == best.number
        assert last.user_attrs["config"] == best.user_attrs["config"]
        history = last.user_attrs["history"]
        assert history[:1] == best.user_attrs["history"]
        assert [row["phase"] for row in history[1:]] in ([2], [2, 2])
    else:
        assert {t.user_attrs["stage"] for t in study.trials} == {algorithm}

    # the same command again: nothing to do, nothing changes
    before = board.read_bytes()
    run_cli(*argv, "--trials", "4")
    assert board.read_bytes() == before
    assert len(list(project.glob("trial_*"))) == 4

    # export the best trial; the reloaded SavedModel reproduces its test accuracy
    out = tmp_path / "model"
    run_cli("export", "--results", results, "--out", out)
    best_row = rows[0]
    assert json.loads((out / "automl.json").read_text())["trial"] == int(best_row["trial"])
    model = tf.saved_model.load(str(out))
    data = load_data(str(tiny_npz))
    images = np.stack(list(pipeline.images(data.test, 32).as_numpy_iterator()))
    probs = model(tf.constant(images, tf.float32)).numpy()
    assert scores(probs, data.test.labels)[1] == pytest.approx(
        float(best_row["test_accuracy"]), abs=1e-6)
    # leaderboard and predict read the study as they do after an Optuna search
    printed = run_cli("leaderboard", "--results", results, "--top", "4").out
    assert printed.count("COMPLETE") == 4 and "best_val_accuracy" in printed
    from PIL import Image

    Image.fromarray(images[0]).save(tmp_path / "first.png")
    predicted = json.loads(run_cli("predict", out, tmp_path / "first.png", "--json").out)[0][
        "predictions"][0]
    assert predicted["label"] == data.class_names[int(np.argmax(probs[0]))]
    assert predicted["probability"] == pytest.approx(float(np.max(probs[0])), abs=1e-5)

    # the other driver, another algorithm or another space: refused, nothing touched
    other = "random" if algorithm != "random" else "hyperband"
    for changed, message in (
            (["--driver", "optuna"], f"study 'default' was searched with --driver keras-tuner "
             f"--algorithm {algorithm}; this run asks for --driver optuna."),
            (["--driver", "keras-tuner", "--algorithm", other], f"this run asks for --driver "
             f"keras-tuner --algorithm {other}.")):
        cut = [a for a in argv if a not in ("--driver", "keras-tuner", "--algorithm", algorithm)]
        assert message in run_cli(*cut, *changed, "--trials", "5", code=2).err
    (tmp_path / "space2.yaml").write_text(SPACE.replace("[0, 32]", "[0, 64]"))
    assert "differs from the one the keras-tuner project" in run_cli(
        *argv, "--space", tmp_path / "space2.yaml", "--trials", "5", code=2).err
    assert board.read_bytes() == before
    assert len(list(project.glob("trial_*"))) == 4
    if algorithm == "hyperband":  # its budgets are tied to the epochs it started with
        assert (f"the Hyperband project {project} was started with a budget of 3 epochs "
                "(--epochs + --fine-tune-epochs); this run asks for 4.") in run_cli(
            *argv, "--epochs", "2", "--trials", "5", code=2).err
        assert board.read_bytes() == before
    if algorithm == "random":  # a damaged project is named, not a traceback
        (project / "oracle.json").write_text('{"ongoing_trials": {}}')
        assert (f"the keras-tuner project {project} cannot be reloaded: its oracle.json or a "
                "trial.json is damaged (KeyError: 'hyperparameters')") in run_cli(
            *argv, "--trials", "5", code=2).err
        assert board.read_bytes() == before


@pytest.mark.parametrize(("argv", "message"), [
    (["--algorithm", "random"], "--algorithm random: only --driver keras-tuner takes an "
     "algorithm"),
    (["--driver", "keras-tuner", "--pruner", "none"], "--pruner applies to --driver optuna only"),
    (["--driver", "keras-tuner", "--screen-fraction", "0.5"],
     "--screen-fraction applies to --driver optuna only"),
])
def test_driver_flags_that_do_not_go_together(argv: list[str], message: str,
                                              tmp_path: Path) -> None:
    err = run_cli("search", *argv, "--results", tmp_path, code=2).err
    assert err.startswith(f"error: {message}")
    assert not any(tmp_path.iterdir())


def test_an_unknown_algorithm_is_an_argparse_choice_error(capsys: pytest.CaptureFixture) -> None:
    from automl.cli import main

    with pytest.raises(SystemExit) as exit_info:  # argparse exits itself: main, not run_cli
        main(["search", "--driver", "keras-tuner", "--algorithm", "grid"])
    assert exit_info.value.code == 2
    assert "argument --algorithm: invalid choice: 'grid' (choose from 'random', 'bayesian', " \
           "'hyperband')" in capsys.readouterr().err


def test_trials_left_waiting_by_a_stopped_process_are_closed(tmp_path: Path) -> None:
    from automl.search.drivers.kerastuner_driver import _fail_waiting

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}",
                                direction="maximize")
    study.enqueue_trial({"head_width": 64}, user_attrs={"kt_trial_id": "0007"})
    _fail_waiting(study)
    stale = study.trials[0]
    assert stale.state.name == "FAIL" and stale.user_attrs["state_detail"] == "INTERRUPTED"
    # the next enqueue-and-ask gets its own entry, not the stale one
    study.enqueue_trial({"head_width": 32}, user_attrs={"kt_trial_id": "0008"})
    trial = study.ask({"head_width": optuna.distributions.CategoricalDistribution([32, 64])})
    assert trial.params == {"head_width": 32} and trial.user_attrs["kt_trial_id"] == "0008"
