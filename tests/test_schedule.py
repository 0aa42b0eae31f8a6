"""The staged schedule: cheap screening first, then refinement of the best screened configs."""

from __future__ import annotations

import optuna
import pytest

from automl.search.drivers.optuna_driver import (
    START_HEADS,
    enqueue_start_trials,
    plan,
    start_trials,
)
from automl.space import Categorical, Fixed, FloatRange, SearchSpace

FULL = {
    "backbone": {"choices": ["efficientnet_lite0", "efficientnet_lite1"]},
    "image_size": {"choices": [64, 96]},
    "freeze_depth": {"choices": [1.0, 0.9, 0.8]},
    "head_width": {"choices": [0, 128]},
    "dropout": {"low": 0.0, "high": 0.5},
    "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
    "augmentation": {"choices": ["none", "flip"]},
}


def test_screening_fixes_the_expensive_dimensions_at_their_cheap_end() -> None:
    space = SearchSpace.from_dict(FULL)
    cheap = space.screening()
    assert cheap.params["freeze_depth"] == Fixed("freeze_depth", 1.0)
    assert cheap.params["augmentation"] == Fixed("augmentation", "none")
    assert cheap.params["backbone"] == space.params["backbone"]


def test_refinement_drops_the_fully_frozen_end() -> None:
    refine = SearchSpace.from_dict(FULL).refinement()
    # every (freeze depth, augmentation) pair but the screening rung's own (1.0, none)
    assert refine == {"variant": Categorical("variant", (
        "1+flip", "0.9+none", "0.9+flip", "0.8+none", "0.8+flip"))}
    ranged = SearchSpace.from_dict({**FULL, "freeze_depth": {"low": 0.6, "high": 1.0}})
    freeze = ranged.refinement()["freeze_depth"]
    assert isinstance(freeze, FloatRange) and freeze.low == 0.6 and freeze.high < 1.0
    # frozen depth fixed: refinement is augmentation only, never "none" again
    fixed = SearchSpace.from_dict({**FULL, "freeze_depth": 1.0}).refinement()
    assert fixed == {"variant": Fixed("variant", "1+flip")}


def test_a_space_without_expensive_options_is_not_staged() -> None:
    space = SearchSpace.from_dict({**FULL, "freeze_depth": 1.0, "augmentation": "none"})
    assert space.refinement() == {}
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    plan(space, study, trial, n_trials=10, screen_fraction=0.8)
    assert trial.user_attrs["stage"] == "full"


def _finish(study: optuna.Study, space: SearchSpace, value: float) -> optuna.trial.FrozenTrial:
    trial = study.ask()
    params = plan(space, study, trial, n_trials=5, screen_fraction=0.6)
    trial.set_user_attr("config", params)
    study.tell(trial, value)
    return study.trials[-1]


def test_plan_screens_then_refines_the_best_screened_configs() -> None:
    space = SearchSpace.from_dict(FULL)
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0))
    screened = [_finish(study, space, v) for v in (0.7, 0.9, 0.8)]  # ceil(0.6 * 5) = 3
    for t in screened:
        assert t.user_attrs["stage"] == "screen"
        assert t.user_attrs["config"]["freeze_depth"] == 1.0
        assert t.user_attrs["config"]["augmentation"] == "none"
    first, second = _finish(study, space, 0.95), _finish(study, space, 0.5)
    assert first.user_attrs["stage"] == second.user_attrs["stage"] == "refine"
    assert first.user_attrs["refines"] == screened[1].number   # the best screened trial
    assert second.user_attrs["refines"] == screened[2].number  # then the second best
    for t, base in ((first, screened[1]), (second, screened[2])):
        config, base_config = t.user_attrs["config"], base.user_attrs["config"]
        assert (config["freeze_depth"], config["augmentation"]) in (
            (1.0, "flip"), (0.9, "none"), (0.9, "flip"), (0.8, "none"), (0.8, "flip"))
        for name in ("backbone", "image_size", "head_width", "dropout", "learning_rate"):
            assert config[name] == base_config[name]
        assert set(t.params) == {"refine_variant"}


def test_screen_fraction_one_means_no_staging() -> None:
    """Every trial, also past the 3 of 5 a staged search would screen, samples the whole space:
    the expensive dimensions over all their choices, under their own names, nothing refined."""
    space = SearchSpace.from_dict(FULL)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    for value in (0.7, 0.9, 0.8, 0.95, 0.5):
        trial = study.ask()
        params = plan(space, study, trial, n_trials=5, screen_fraction=1.0)
        assert trial.user_attrs["stage"] == "full"
        assert trial.user_attrs.get("refines") is None
        assert params == trial.params  # every dimension sampled, none fixed or taken over
        assert trial.distributions["freeze_depth"].choices == (1.0, 0.9, 0.8)
        assert trial.distributions["augmentation"].choices == ("none", "flip")
        study.tell(trial, value)


def test_a_new_study_starts_at_the_start_point_then_tries_heads_on_its_input() -> None:
    space = SearchSpace.from_dict(FULL)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    enqueue_start_trials(study, start_trials(space, n_trials=10, screen_fraction=0.8))
    assert len(study.trials) == 1 + START_HEADS
    trial = study.ask()
    params = plan(space, study, trial, n_trials=10, screen_fraction=0.8)
    assert trial.user_attrs["stage"] == "screen" and trial.user_attrs["start"] == "start point"
    assert params == {"backbone": "efficientnet_lite0", "image_size": 96, "freeze_depth": 1.0,
                      "head_width": 128, "dropout": 0.2, "learning_rate": 1e-3,
                      "augmentation": "none"}
    study.tell(trial, 0.9)
    heads = []
    for _ in range(START_HEADS):  # the same cached activations, other heads
        trial = study.ask()
        heads.append(plan(space, study, trial, n_trials=10, screen_fraction=0.8))
        assert trial.user_attrs["start"] == "start point's input"
        assert trial.user_attrs["stage"] == "screen"
        study.tell(trial, 0.8)
    assert {(h["backbone"], h["image_size"], h["freeze_depth"]) for h in heads} == {
        ("efficientnet_lite0", 96, 1.0)}
    later = study.ask()  # the sampler picks everything from here on
    assert "start" not in later.user_attrs


@pytest.mark.parametrize(("n_trials", "fraction", "count"), [
    (1, 0.8, 1), (5, 0.8, 2), (8, 0.8, 3), (10, 0.8, 4), (50, 0.8, 4),  # half the screening
    (10, 0.2, 1), (8, 1.0, 4), (3, 1.0, 1)])
def test_start_trials_take_at_most_half_of_the_screening_trials(n_trials: int, fraction: float,
                                                                count: int) -> None:
    trials = start_trials(SearchSpace.from_dict(FULL), n_trials, fraction)
    assert len(trials) == count
    assert [label for _, label in trials[1:]] == ["start point's input"] * (count - 1)


def test_no_start_heads_when_nothing_else_varies_on_the_same_input() -> None:
    fixed_input = SearchSpace.from_dict({**FULL, "backbone": "efficientnet_lite0",
                                         "image_size": 96})
    assert [label for _, label in start_trials(fixed_input, 50, 0.8)] == ["start point"]
    only_input = SearchSpace.from_dict({"backbone": FULL["backbone"],
                                        "image_size": FULL["image_size"]})
    assert len(start_trials(only_input, 50, 0.8)) == 1
    assert start_trials(SearchSpace.from_dict({}), 50, 0.8) == []  # every dimension fixed


def test_the_start_point_of_an_unstaged_search_samples_the_whole_space() -> None:
    space = SearchSpace.from_dict({**FULL, "freeze_depth": {"choices": [0.8, 0.9]},
                                   "head_width": {"choices": [64, 32]}})
    study = optuna.create_study(direction="maximize")
    enqueue_start_trials(study, start_trials(space, n_trials=5, screen_fraction=1.0))
    trial = study.ask()
    params = plan(space, study, trial, n_trials=5, screen_fraction=1.0)
    assert trial.user_attrs["stage"] == "full"
    assert params["freeze_depth"] == 0.8 and params["head_width"] == 64  # first choices
