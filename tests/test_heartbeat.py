"""Heartbeats on a shared storage: a silent worker's trial is failed and queued again with its
configuration; the trial quota over several workers. Real storages (journal file, SQLite)."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from automl.search import heartbeat
from automl.search.drivers.optuna_driver import _surplus, counts
from automl.search.study import Heartbeat, open_study

BEAT = Heartbeat(interval=1, grace=1, max_retry=2)
# these tests ask() directly, as our driver does (it filters Optuna's hint about optimize())
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed")


def _storages(tmp_path: Path) -> dict[str, str]:
    return {"journal": f"journal:{tmp_path / 'study.journal'}",
            "sqlite": f"sqlite:///{tmp_path / 'shared.db'}"}


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_silent_workers_trial_is_failed_and_retried_with_its_configuration(
        tmp_path: Path, kind: str) -> None:
    url = _storages(tmp_path)[kind]
    alive = open_study(tmp_path, "s", url, create=True, heartbeat=BEAT)
    dead = open_study(tmp_path, "s", url, create=True, heartbeat=BEAT)  # a second worker
    assert heartbeat.enabled(alive) and heartbeat.enabled(dead)
    trial = dead.ask()
    trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
    for key, value in {"config": {"learning_rate": trial.params["learning_rate"]},
                       "stage": "refine", "refines": 3, "host": "gone:1",
                       "history": [{"epoch": 1}]}.items():
        trial.set_user_attr(key, value)
    with heartbeat.beating(dead, trial):
        time.sleep(1.2)
        heartbeat.fail_stale(alive)  # beating: not stale
        assert alive.trials[trial.number].state == TrialState.RUNNING
    time.sleep(2.5)  # the worker is gone: no beat for longer than the grace period
    heartbeat.fail_stale(alive)
    trials = alive.trials
    assert trials[trial.number].state == TrialState.FAIL
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    queued = alive.ask()  # the next ask of any worker takes the queued copy
    assert queued.number == 1
    heartbeat.fail_stale(dead)  # taken over before its first beat: not stale (no old beat kept)
    assert dead.trials[1].state == TrialState.RUNNING
    assert queued.params == trial.params
    assert queued.user_attrs == {"config": {"learning_rate": trial.params["learning_rate"]},
                                 "stage": "refine", "refines": 3, "retry_of": 0}
    assert queued.suggest_float("learning_rate", 1e-4, 1e-2, log=True) == \
        trial.params["learning_rate"]


def test_without_a_heartbeat_the_storage_does_not_fail_running_trials(tmp_path: Path) -> None:
    url = _storages(tmp_path)["journal"]
    study = open_study(tmp_path, "s", url, create=True)
    study.ask()
    time.sleep(1.1)
    heartbeat.fail_stale(study)
    assert not heartbeat.enabled(study)
    assert [t.state for t in study.trials] == [TrialState.RUNNING]


def test_the_lower_numbered_of_two_trials_asked_at_once_for_the_last_slot_runs() -> None:
    study = optuna.create_study()
    for _ in range(3):
        study.tell(study.ask(), 0.5)
    first, second = study.ask(), study.ask()  # two workers, both saw 3 of 4 finished
    assert counts(study) == counts(study).__class__(finished=3, running=2, waiting=0)
    assert not _surplus(study, first, 4)
    assert _surplus(study, second, 4)
    assert not _surplus(study, second, 5)
    study.tell(first, state=TrialState.FAIL)  # the first one failed: the second is needed now
    assert not _surplus(study, second, 4)


def test_pruning_kept_weights_spares_a_screened_trial_a_running_refinement_needs(
        tmp_path: Path) -> None:
    import pandas as pd

    from automl.search.run import _keep_best_weights

    for number in range(4):
        (tmp_path / f"trial_{number:04d}").mkdir()
    board = pd.DataFrame({"trial": [0, 1, 2, 3], "state": ["COMPLETE"] * 3 + ["RUNNING"]})
    _keep_best_weights(board, tmp_path, keep=1, in_use={2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trial_0000", "trial_0002",
                                                          "trial_0003"]


def test_heartbeat_flags_are_checked() -> None:
    from automl.errors import ConfigError
    from automl.search.run import SearchRequest, validate

    with pytest.raises(ConfigError) as info:
        validate(SearchRequest(heartbeat=5, heartbeat_grace=5))
    assert str(info.value) == ("--heartbeat 5 --heartbeat-grace 5: expected whole seconds, the "
                               "interval at least 1 and the grace period longer than the "
                               "interval.")
    with pytest.raises(ConfigError, match=r"^--heartbeat 0: expected whole seconds"):
        validate(SearchRequest(heartbeat=0))
