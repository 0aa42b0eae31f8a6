"""What a trial and a study leave in Optuna's user attributes: the one module that knows the keys.

Every driver records a trial the same way, so the leaderboard, the report, export and the
benchmark read any study alike. A trial's attributes (:class:`TrialRecord`):

=================  ==========================================================================
``schema``         the record's format version (missing: 1, studies from before the key)
``config``         the trial's configuration (``TrialConfig.as_dict()``)
``result``         what a finished trial reached (``TrialResult`` without its history)
``history``        one row per epoch (also of pruned and failed trials)
``weights``        its kept weights, relative to the artifact root
``stage``          screen / refine / full (Optuna driver); the algorithm or Hyperband round
``refines``        the trial whose configuration (and head phase) this one builds on
``start``          ``start point`` / ``start point's input``: a queued start trial
``reason``         why it failed
``state_detail``   FAIL, INTERRUPTED or SKIPPED (the leaderboard's state of a FAIL); INFEASIBLE
                   (of a PRUNED trial over the search's limits, never trained)
``cost``           what its architecture costs to serve (``latency_ms``, ``size_mb``, ``params``,
                   ``throughput_ips``; see ``automl.search.cost``)
``host``           the worker that ran it (``hostname:pid``)
``worker_memory``  the trial worker's memory after it (``pid``, ``rss_mb``, ``cache_mb``)
``retry_of``       the trial it retries (its worker stopped sending heartbeats)
``kt_*``           keras-tuner: trial id, algorithm, Hyperband budget, bracket, round, and the
                   keras-tuner trial it continues
=================  ==========================================================================

and a study's (:class:`StudyRecord`): ``schema``, ``data`` (where the data came from, its
fingerprint and splits), ``class_names``, ``driver`` (the driver flags it is tied to) and
``artifacts`` (the kept-weights folder), ``limits`` (the ``--max-latency-ms``/``--max-size-mb`` it
was started with: a study keeps them), ``size_seconds`` (what the background ``.tflite`` size
conversions took: ``wait``, wall seconds the search waited for them at its end, and ``cpu``,
their CPU seconds; ``automl.search.sizes``) and, one attribute per measured architecture,
``cost:<backbone>@<image size>`` (``automl.search.cost``).

Attributes are written as a trial goes (``write``: the stage before training, the history
after), read whole (``TrialRecord.of``). Reading fills defaults for missing keys and never fails
on unknown ones: they are kept in ``extra`` (a newer automl's fields, new trial kinds or cost
columns) and written back by ``to_attrs``. A new field is a new dataclass field with a default;
``SCHEMA_VERSION`` goes up only when the meaning of an existing key changes.

How a trial that raised ends (``classify``, ``settle``), completes (``complete``) or fails
(``fail``, ``close_left_over``) is decided here too, for both drivers.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import optuna
from optuna.trial import TrialState

from automl.errors import ConfigError, DataError, TrialFailed, WeightsError
from automl.search import optuna_private
from automl.trial.result import TrialResult, WarmStart, head_path

#: 2: ``weights`` may name a head's weights file (``result["weights_kind"] == "head"``: the
#: backbone is the pretrained one); 1: it always named the whole model's weights
SCHEMA_VERSION = 2
SCHEMA_KEY = "schema"
LEGACY_SCHEMA = 1  # records written before the schema key existed
#: what a retried trial takes over from the one it replaces (its schedule and configuration)
INHERITED = (SCHEMA_KEY, "config", "stage", "refines")
#: bad input: the trial is recorded as FAIL and the search stops with the error
STOPS_SEARCH: tuple[type[Exception], ...] = (ConfigError, DataError, WeightsError)
#: the automl errors a trial may raise, each classified on its own (the worker rebuilds them)
TRIAL_ERRORS: tuple[type[Exception], ...] = (*STOPS_SEARCH, TrialFailed)
INTERRUPTED_REASON = "interrupted by the user (Ctrl-C)"

_R = TypeVar("_R", bound="_Attributes")


class _Attributes:
    """Reading and writing a dataclass as Optuna user attributes (shared by both records)."""

    schema: int
    extra: dict[str, Any]
    _SKIP: ClassVar[tuple[str, ...]] = (SCHEMA_KEY, "extra")

    @classmethod
    def of(cls: type[_R], owner: Any) -> _R:
        """The record of an ``optuna.Trial``/``FrozenTrial`` or an ``optuna.Study``."""
        return cls.from_attrs(owner.user_attrs)

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The attribute keys this record knows (``schema`` included)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")  # type: ignore[arg-type]

    @classmethod
    def from_attrs(cls: type[_R], attrs: dict[str, Any]) -> _R:
        """The record of ``attrs``: defaults for missing (or null) keys, unknown keys in extra."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name != "extra" and attrs.get(f.name) is not None:
                values[f.name] = attrs[f.name]
        values.setdefault(SCHEMA_KEY, LEGACY_SCHEMA)
        known = cls.keys()
        return cls(**values, extra={k: v for k, v in attrs.items() if k not in known})

    def to_attrs(self) -> dict[str, Any]:
        """The attributes to store: the schema, every field not at its default, and ``extra``."""
        attrs: dict[str, Any] = {SCHEMA_KEY: self.schema}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name not in self._SKIP and value != _default(f):
                attrs[f.name] = value
        attrs.update({k: v for k, v in self.extra.items() if k not in attrs})
        return attrs


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


@dataclass(frozen=True)
class TrialRecord(_Attributes):
    """Everything a trial leaves in its user attributes (see the module's table)."""

    schema: int = SCHEMA_VERSION
    config: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    weights: str | None = None
    stage: str = ""
    refines: int | None = None
    start: str | None = None
    reason: str = ""
    state_detail: str | None = None
    host: str = ""
    cost: dict[str, Any] | None = None
    worker_memory: dict[str, Any] | None = None
    retry_of: int | None = None
    kt_trial_id: str | None = None
    kt_algorithm: str | None = None
    kt_budget: int | None = None
    kt_bracket: int | None = None
    kt_round: int | None = None
    kt_continues: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)



@dataclass(frozen=True)
class StudyRecord(_Attributes):
    """What a study records about itself (see the module's docstring)."""

    schema: int = SCHEMA_VERSION
    data: dict[str, Any] | None = None
    class_names: list[str] = field(default_factory=list)
    driver: str | None = None
    artifacts: str | None = None
    limits: dict[str, float] | None = None
    size_seconds: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)



# ---------------------------------------------------------------------------------- writing


def _checked(record: type[_Attributes], fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - set(record.keys())
    if unknown:
        raise TypeError(f"{record.__name__} has no field {', '.join(sorted(unknown))}")
    return fields


def write(trial: Any, **fields: Any) -> None:
    """Set the given fields (only those) as user attributes of a running trial."""
    for key, value in _checked(TrialRecord, fields).items():
        trial.set_user_attr(key, value)


def begin(trial: Any) -> None:
    """Mark a newly asked trial with the record's schema version."""
    write(trial, schema=SCHEMA_VERSION)


def write_study(study: Any, **fields: Any) -> None:
    """Set the given fields (only those) as user attributes of the study."""
    for key, value in _checked(StudyRecord, fields).items():
        study.set_user_attr(key, value)


#: a study's attribute per measured architecture: ``cost:<backbone>@<image size>``
COST_PREFIX = "cost:"


def measured_costs(study: Any) -> dict[str, dict[str, Any]]:
    """Every architecture's measured cost in the study, by ``<backbone>@<image size>``."""
    return {k[len(COST_PREFIX):]: v for k, v in study.user_attrs.items()
            if k.startswith(COST_PREFIX)}


def add_size_seconds(study: Any, wait: float = 0.0, cpu: float = 0.0) -> None:
    """Add to the study's ``size_seconds`` (all runs of it together)."""
    known = StudyRecord.of(study).size_seconds or {}
    write_study(study, size_seconds={"wait": float(known.get("wait", 0.0)) + wait,
                                     "cpu": float(known.get("cpu", 0.0)) + cpu})


def write_cost(study: Any, architecture: str, entry: dict[str, Any]) -> None:
    """Keep an architecture's measured cost (``<backbone>@<image size>``) in the study."""
    study.set_user_attr(f"{COST_PREFIX}{architecture}", entry)


def enqueue(study: optuna.Study, params: dict[str, Any], record: TrialRecord) -> None:
    """Queue a trial with fixed ``params`` that starts with ``record``'s attributes."""
    study.enqueue_trial(params, user_attrs=record.to_attrs())


def retry_copy(trial: optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
    """A copy of a stale trial to queue again: it keeps only what defines it (``INHERITED``,
    not the dead worker's host or half-written history) and notes which trial it retries."""
    kept = copy.deepcopy(trial)
    kept.user_attrs = {k: v for k, v in trial.user_attrs.items() if k in INHERITED}
    kept.user_attrs["retry_of"] = trial.user_attrs.get("retry_of", trial.number)
    return kept


# ------------------------------------------------------------------------- how a trial ends


@dataclass(frozen=True)
class Outcome:
    """What happens to a trial that raised (as Optuna's ``_run_trial`` decides for optimize)."""

    state: TrialState          # PRUNED or FAIL
    reason: str = ""           # why it failed (FAIL only)
    detail: str = "FAIL"       # the leaderboard's state of a FAIL: FAIL or INTERRUPTED
    stop: bool = False         # the search stops: record the trial, then re-raise
    unexpected: bool = False   # not an automl error: its traceback goes to the debug log


def describe(exc: BaseException) -> str:
    """The one-line reason recorded for an unexpected exception."""
    return (f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}" if str(exc)
            else type(exc).__name__)


def classify(exc: BaseException, *, prunable: bool = True) -> Outcome | None:
    """How a trial that raised ``exc`` ends; None: not the trial's business (re-raise as is).

    Pruned (``prunable`` drivers only) -> PRUNED; Ctrl-C -> INTERRUPTED and the search stops;
    bad input (config, data, weights) -> FAIL and the search stops; ``TrialFailed`` or any other
    exception (out of memory, a backbone that breaks at this size, ...) -> FAIL, search goes on.
    """
    if prunable and isinstance(exc, optuna.TrialPruned):
        return Outcome(TrialState.PRUNED)
    if isinstance(exc, KeyboardInterrupt):
        return Outcome(TrialState.FAIL, INTERRUPTED_REASON, "INTERRUPTED", stop=True)
    if isinstance(exc, STOPS_SEARCH):
        return Outcome(TrialState.FAIL, str(exc), stop=True)
    if isinstance(exc, TrialFailed):
        return Outcome(TrialState.FAIL, str(exc))
    if isinstance(exc, Exception):
        return Outcome(TrialState.FAIL, describe(exc), unexpected=True)
    return None


def settle(study: optuna.Study, trial: optuna.Trial, outcome: Outcome,
           history: list[dict[str, Any]]) -> None:
    """Record ``outcome`` for a running trial (its epochs so far too) and tell Optuna."""
    if outcome.state == TrialState.PRUNED:
        write(trial, history=history)
        study.tell(trial, state=TrialState.PRUNED)
    else:
        fail(study, trial, history, outcome.reason, outcome.detail)


def fail(study: optuna.Study, trial: optuna.Trial, history: list[dict[str, Any]], reason: str,
         detail: str = "FAIL") -> None:
    """End a running trial as FAIL with its history, ``reason`` and ``detail``."""
    write(trial, history=history, reason=reason, state_detail=detail)
    study.tell(trial, state=TrialState.FAIL)


def shown_state(state: str, rec: TrialRecord) -> str:
    """The state the leaderboard shows: Optuna's, or the detail of a FAIL (FAIL, INTERRUPTED,
    SKIPPED) or of a PRUNED trial that was over the limits (INFEASIBLE)."""
    if rec.state_detail == "INFEASIBLE" or (state == "FAIL" and rec.state_detail is not None):
        return rec.state_detail
    return state


def infeasible(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """End a running trial that was not trained because its cost is over the limits: PRUNED
    (so TPE counts it, with its constraints, among the bad trials), shown as INFEASIBLE."""
    write(trial, reason=reason, state_detail="INFEASIBLE")
    study.tell(trial, state=TrialState.PRUNED)


def complete(study: optuna.Study, trial: optuna.Trial, result: TrialResult,
             artifacts: Path) -> None:
    """Record a finished trial's result, history and kept weights; tell Optuna its value."""
    summary = {k: v for k, v in dataclasses.asdict(result).items() if k != "history"}
    write(trial, result=summary, history=result.history)
    if result.weights_file:  # relative to the artifact root: any worker's mount point works
        write(trial, weights=Path(result.weights_file).relative_to(artifacts).as_posix())
    study.tell(trial, result.val_accuracy)


def close_left_over(study: optuna.Study, frozen: optuna.trial.FrozenTrial, reason: str) -> None:
    """Fail (as INTERRUPTED) a RUNNING or WAITING trial that a stopped process left behind."""
    storage, trial_id = optuna_private.storage(study), optuna_private.trial_id(frozen)
    storage.set_trial_user_attr(trial_id, "reason", reason)
    storage.set_trial_user_attr(trial_id, "state_detail", "INTERRUPTED")
    storage.set_trial_state_values(trial_id, TrialState.FAIL)


def warm_start(study: optuna.Study, trial: Any, trials_dir: Path) -> WarmStart | None:
    """A trial that refines another reuses that trial's head phase (weights and epochs)."""
    base_number = TrialRecord.of(trial).refines
    if base_number is None:
        return None
    base = TrialRecord.of(study.get_trials(deepcopy=False)[base_number])
    head = head_path(trials_dir, base_number)
    history = [row for row in base.history if row.get("phase") == 1]
    if not head.is_file() or not history or "val_loss" not in base.result:
        return None
    return WarmStart(head, history, min(row["val_loss"] for row in history))
