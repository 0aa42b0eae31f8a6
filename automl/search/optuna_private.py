"""The few Optuna internals automl needs, each behind one function (TensorFlow-free).

Optuna's public API covers a study driven by ``study.optimize``; automl drives trials with
ask/tell, beats for them itself and adds heartbeats to the journal storage, and closes trials
that a process which stopped left behind. Those need the pieces below, which Optuna keeps
private. Everything else in automl goes through these functions, so an Optuna upgrade that
moves them breaks here only (pyproject.toml bounds Optuna to the minor versions tested).
"""

from __future__ import annotations

from typing import Any

import optuna

# Subclassing it is how a storage gets heartbeats: Optuna's own ``fail_stale_trials`` and
# ``optimize`` check ``isinstance(storage, BaseHeartbeat)``; no public base class exists.
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

__all__ = ["BaseHeartbeat", "heartbeat_enabled", "storage", "trial_id"]


def storage(study: optuna.Study) -> Any:
    """The study's storage.

    No public accessor exists (``optuna.storages.fail_stale_trials`` reads it the same way).
    Needed to record heartbeats for ask/tell trials, to read the heartbeat interval, and to
    close trials this process holds no ``optuna.Trial`` for (left RUNNING or WAITING by a
    process that stopped: ``study.tell`` refuses a WAITING trial and sets no user attribute).
    """
    return study._storage


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The storage's id of a trial (what every storage method takes).

    ``Trial`` and ``FrozenTrial`` expose only the study-local ``number`` publicly.
    """
    return trial._trial_id


def heartbeat_enabled(study: optuna.Study) -> bool:
    """Whether the study's storage records heartbeats (Optuna's own test, kept private)."""
    return is_heartbeat_enabled(storage(study))
