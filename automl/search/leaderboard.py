"""Leaderboards: a study's trials as a pandas DataFrame, ranked, summarised, written as CSV."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pandas as pd

from automl.atomic import write_atomic
from automl.search.cost import known_cost
from automl.search.heartbeat import retried_from
from automl.search.record import TrialRecord, measured_costs, shown_state
from automl.space import DIMENSIONS

#: the serving cost of a trial's architecture (``automl.search.cost``) and whether it is on the
#: Pareto front of validation accuracy against latency among the finished trials
COST_COLUMNS = ["latency_ms", "size_mb", "pareto"]
COLUMNS = ["trial", "state", "val_accuracy", "val_loss", "test_accuracy", *DIMENSIONS,
           *COST_COLUMNS, "epochs", "best_phase", "train_seconds", "params", "throughput_ips",
           "cut", "stage", "weights_kept", "reason", "host"]
_INT_COLUMNS = {"trial", "image_size", "head_width", "epochs", "best_phase", "params",
                "trials", "best_trial"}
_STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "INFEASIBLE": 2, "RUNNING": 3, "WAITING": 4,
                "INTERRUPTED": 5, "FAIL": 6, "SKIPPED": 7}


def trial_row(number: int, state: str, attrs: dict[str, Any],
              intermediate: dict[int, float] | None = None,
              artifacts: Path | None = None) -> dict[str, Any]:
    """One leaderboard row from a trial's number, state and user attributes.

    ``artifacts`` is the artifact root its kept weights are looked up in (their path relative
    to it is the ``weights`` attribute); without it, the path recorded by the search is used.
    """
    return record_row(number, state, TrialRecord.from_attrs(attrs), intermediate, artifacts)


def record_row(number: int, state: str, rec: TrialRecord,
               intermediate: dict[int, float] | None = None,
               artifacts: Path | None = None,
               measured: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One leaderboard row from a trial's number, state and record (see ``trial_row``).

    ``measured``: the study's serving-cost measurements; a trial without a recorded cost (one
    measured after it ran, when no limit needed it before) takes its architecture's from there.
    """
    result, config = rec.result, rec.config
    state = shown_state(state, rec)
    row: dict[str, Any] = {"trial": number, "state": state}
    row["val_accuracy"] = result.get("val_accuracy")
    if row["val_accuracy"] is None and intermediate:
        row["val_accuracy"] = max(intermediate.values())  # best epoch before it was stopped
    row["val_loss"] = result.get("val_loss")
    row["test_accuracy"] = result.get("test_accuracy")
    row.update({name: config.get(name) for name in DIMENSIONS})
    history = rec.history
    row["epochs"] = result.get("epochs", len(history) or (max(intermediate) if intermediate
                                                           else None))
    for key in ("best_phase", "train_seconds", "params", "cut"):
        row[key] = result.get(key)
    cost = rec.cost or known_cost(measured or {}, config) or {}
    for key in ("latency_ms", "size_mb", "throughput_ips"):
        row[key] = cost.get(key)
    if row["params"] is None:
        row["params"] = cost.get("params")
    row["pareto"] = False
    weights = result.get("weights_file")
    if artifacts is not None and rec.weights:
        weights = str(Path(artifacts) / rec.weights)
    row["weights_kept"] = bool(weights) and Path(weights).is_file()
    row["stage"] = rec.stage
    row["reason"] = rec.reason
    if not row["reason"] and rec.retry_of is not None:
        row["reason"] = f"retry of trial {rec.retry_of}"
    row["host"] = rec.host
    return row


def _stale_reasons(trials: list[Any], records: list[TrialRecord]) -> dict[int, str]:
    """Why failed trials without a reason failed: their worker stopped sending heartbeats."""
    retried: dict[int, int] = {}
    for t in trials:
        stale = retried_from(t)
        if stale is not None:
            retried[stale] = t.number
    reasons = {}
    for t, rec in zip(trials, records, strict=True):
        if t.state.name == "FAIL" and not rec.reason:
            again = f"; retried as trial {retried[t.number]}" if t.number in retried else ""
            reasons[t.number] = ("its worker stopped sending heartbeats (killed, crashed or cut "
                                 f"off){again}")
    return reasons


def from_study(study: Any, artifacts: Path | None = None) -> pd.DataFrame:
    """The ranked leaderboard of an Optuna study (one row per trial, best first)."""
    trials = study.get_trials(deepcopy=False)
    records = [TrialRecord.of(t) for t in trials]
    measured = measured_costs(study)
    stale = _stale_reasons(trials, records)
    rows = []
    for t, rec in zip(trials, records, strict=True):
        if t.number in stale:
            rec = dataclasses.replace(rec, reason=stale[t.number])
        rows.append(record_row(t.number, t.state.name, rec, t.intermediate_values, artifacts,
                               measured))
    return mark_pareto(rank(pd.DataFrame(rows, columns=COLUMNS)))


def mark_pareto(frame: pd.DataFrame) -> pd.DataFrame:
    """Set ``pareto`` on the finished trials no other finished trial beats on both validation
    accuracy (higher) and latency (lower), i.e. the accuracy-vs-latency front."""
    if frame.empty:
        return frame
    frame = frame.copy()
    frame["pareto"] = False
    done = frame[(frame["state"] == "COMPLETE") & frame["latency_ms"].notna()
                 & frame["val_accuracy"].notna()]
    points = list(zip(done["val_accuracy"].astype(float), done["latency_ms"].astype(float),
                      strict=True))
    for index, (acc, lat) in zip(done.index, points, strict=True):
        beaten = any(a >= acc and t <= lat and (a > acc or t < lat) for a, t in points)
        frame.loc[index, "pareto"] = not beaten
    return frame


def rank(frame: pd.DataFrame) -> pd.DataFrame:
    """Best first: finished trials by validation accuracy (then loss), then pruned, then failed."""
    if frame.empty:
        return frame.reset_index(drop=True)
    order = frame["state"].map(lambda s: _STATE_ORDER.get(s, 5))
    keyed = frame.assign(_order=order,
                         _acc=-pd.to_numeric(frame["val_accuracy"]).fillna(-math.inf),
                         _loss=pd.to_numeric(frame["val_loss"]).fillna(math.inf))
    ranked = keyed.sort_values(["_order", "_acc", "_loss", "trial"], kind="stable")
    return ranked.drop(columns=["_order", "_acc", "_loss"]).reset_index(drop=True)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """The per-backbone leaderboard of finished trials, best backbone first."""
    done = frame[frame["state"] == "COMPLETE"]
    if done.empty:
        return pd.DataFrame(columns=["backbone", "trials", "best_val_accuracy",
                                     "mean_val_accuracy", "best_test_accuracy",
                                     "mean_train_seconds", "best_trial"])
    grouped = done.groupby("backbone", sort=False)
    table = pd.DataFrame({
        "trials": grouped.size(),
        "best_val_accuracy": grouped["val_accuracy"].max(),
        "mean_val_accuracy": grouped["val_accuracy"].mean(),
        "best_test_accuracy": grouped["test_accuracy"].max(),
        "mean_train_seconds": grouped["train_seconds"].mean(),
        "best_trial": grouped["trial"].first(),  # frame is ranked: first row is the best
    })
    table = table.sort_values("best_val_accuracy", ascending=False)
    return table.reset_index()


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a DataFrame as CSV atomically (a crash never leaves half a file)."""
    frame = frame.copy()
    for column in _INT_COLUMNS.intersection(frame.columns):  # exact, even beside empty cells
        frame[column] = pd.to_numeric(frame[column]).round().astype("Int64")
    return write_atomic(path, lambda p: frame.to_csv(p, index=False, float_format="%.6g"))


def best_row(frame: pd.DataFrame) -> pd.Series | None:
    """The best finished trial, or None."""
    done = frame[frame["state"] == "COMPLETE"]
    return None if done.empty else done.iloc[0]
