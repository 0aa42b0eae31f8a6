"""Heartbeats for workers sharing a study: a dead worker's trial is failed and queued again.

Optuna's RDBStorage records heartbeats itself; its journal storage does not, so
``HeartbeatJournalStorage`` adds them (as a trial system attribute holding the worker's clock,
so the workers' clocks should agree to well within the grace period). ``study.optimize`` beats
for its trials; our driver uses ask/tell, so ``beating`` does it for the trial in hand.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.trial import FrozenTrial, TrialState

from automl.search import optuna_private, record
from automl.search.optuna_private import BaseHeartbeat


@dataclass(frozen=True)
class Heartbeat:
    """Heartbeat settings of a worker: beat every ``interval`` s, stale after ``grace`` s."""

    interval: int = 60
    grace: int = 180
    max_retry: int = 3


log = logging.getLogger("automl")
# the journal storage's heartbeat: a system attribute of our own storage, not a trial record field
_BEAT_ATTR = "automl:heartbeat"

try:  # Optuna >= 4.9 renamed the callback and its storage argument
    from optuna.storages import RetryHeartbeatStaleTrialCallback as _Retry
    _CALLBACK_ARG = "heartbeat_stale_trial_callback"
except ImportError:  # pragma: no cover - older Optuna
    from optuna.storages import RetryFailedTrialCallback as _Retry
    _CALLBACK_ARG = "failed_trial_callback"
if _CALLBACK_ARG not in inspect.signature(optuna.storages.RDBStorage).parameters:
    _CALLBACK_ARG = "failed_trial_callback"  # pragma: no cover


class RetryStale:
    """Queue a stale trial again (WAITING) with its parameters and automl's schedule attributes.

    Optuna's retry callback copies every user attribute; the new trial must not inherit the dead
    worker's host or a half-written history, only what defines the trial (``record.retry_copy``).
    """

    def __init__(self, max_retry: int | None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._retry = _Retry(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        kept = record.retry_copy(trial)
        # the dead worker's last beat would make the copy look stale the moment it is taken
        kept.system_attrs = {k: v for k, v in trial.system_attrs.items() if k != _BEAT_ATTR}
        self._retry(study, kept)


def retry_callback_kwargs(max_retry: int | None) -> dict[str, Any]:
    """RDBStorage keyword arguments that retry stale trials (name differs across Optuna)."""
    return {_CALLBACK_ARG: RetryStale(max_retry)}


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """An Optuna journal file storage with heartbeats (None: no heartbeats, e.g. read-only use)."""

    def __init__(self, path: Path, heartbeat: Heartbeat | None = None) -> None:
        from optuna.storages.journal import JournalFileBackend

        super().__init__(JournalFileBackend(str(path)))
        self._heartbeat = heartbeat
        self._callback = RetryStale(heartbeat.max_retry) if heartbeat else None

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, _BEAT_ATTR, time.time())

    # Optuna's heartbeat protocol: BaseHeartbeat declares this (private) hook, and Optuna's own
    # fail_stale_trials calls it; a storage that keeps heartbeats must implement it.
    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        if self._heartbeat is None:
            return []
        limit = time.time() - self._heartbeat.grace
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return [optuna_private.trial_id(t) for t in running
                if t.system_attrs.get(_BEAT_ATTR, limit) < limit]

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat.interval if self._heartbeat else None

    def get_heartbeat_stale_trial_callback(self) -> Any:
        return self._callback

    def get_failed_trial_callback(self) -> Any:  # the name Optuna < 4.9 asks for
        return self._callback


def enabled(study: optuna.Study) -> bool:
    """Whether the study's storage records heartbeats (a shared --storage)."""
    return optuna_private.heartbeat_enabled(study)


def interval(study: optuna.Study) -> int | None:
    """Seconds between heartbeats of the study's storage (None: no heartbeats)."""
    return optuna_private.storage(study).get_heartbeat_interval() if enabled(study) else None


def retried_from(trial: FrozenTrial) -> int | None:
    """The stale trial that ``trial`` retries (the last of a retry chain), or None."""
    with warnings.catch_warnings():  # Optuna marks these readers experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        first = _Retry.retried_trial_number(trial)
        if first is None:
            return None
        return int((_Retry.retry_history(trial) or [first])[-1])


def fail_stale(study: optuna.Study) -> None:
    """Fail trials whose worker stopped beating; the storage's callback queues them again."""
    if enabled(study):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


@contextmanager
def beating(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record the trial's heartbeat every interval (in a daemon thread) while the block runs."""
    if not enabled(study):
        yield
        return
    storage = optuna_private.storage(study)
    every = storage.get_heartbeat_interval()
    trial_id = optuna_private.trial_id(trial)
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # the trial was just told, or the server blinked: try again
                log.debug("heartbeat of trial %d not recorded", trial.number, exc_info=True)
            if stop.wait(every):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
