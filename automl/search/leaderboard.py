"""Leaderboards: a study's trials as a pandas DataFrame, ranked, summarised, written as CSV."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from automl.atomic import write_atomic
from automl.space import DIMENSIONS

COLUMNS = ["trial", "state", "val_accuracy", "val_loss", "test_accuracy", *DIMENSIONS,
           "epochs", "best_phase", "train_seconds", "params", "cut", "stage", "weights_kept",
           "reason", "host"]
_INT_COLUMNS = {"trial", "image_size", "head_width", "epochs", "best_phase", "params",
                "trials", "best_trial"}
_STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "INTERRUPTED": 4,
                "FAIL": 5, "SKIPPED": 6}


def trial_row(number: int, state: str, attrs: dict[str, Any],
              intermediate: dict[int, float] | None = None,
              artifacts: Path | None = None) -> dict[str, Any]:
    """One leaderboard row from a trial's number, state and user attributes.

    ``artifacts`` is the artifact root its kept weights are looked up in (their path relative
    to it is the ``weights`` attribute); without it, the path recorded by the search is used.
    """
    result = attrs.get("result") or {}
    config = attrs.get("config") or {}
    state = attrs.get("state_detail", state) if state == "FAIL" else state
    row: dict[str, Any] = {"trial": number, "state": state}
    row["val_accuracy"] = result.get("val_accuracy")
    if row["val_accuracy"] is None and intermediate:
        row["val_accuracy"] = max(intermediate.values())  # best epoch before it was stopped
    row["val_loss"] = result.get("val_loss")
    row["test_accuracy"] = result.get("test_accuracy")
    row.update({name: config.get(name) for name in DIMENSIONS})
    history = attrs.get("history") or []
    row["epochs"] = result.get("epochs", len(history) or (max(intermediate) if intermediate
                                                           else None))
    for key in ("best_phase", "train_seconds", "params", "cut"):
        row[key] = result.get(key)
    weights = result.get("weights_file")
    if artifacts is not None and attrs.get("weights"):
        weights = str(Path(artifacts) / attrs["weights"])
    row["weights_kept"] = bool(weights) and Path(weights).is_file()
    row["stage"] = attrs.get("stage", "")
    row["reason"] = attrs.get("reason", "")
    if not row["reason"] and attrs.get("retry_of") is not None:
        row["reason"] = f"retry of trial {attrs['retry_of']}"
    row["host"] = attrs.get("host", "")
    return row


def _stale_reasons(trials: list[Any]) -> dict[int, str]:
    """Why failed trials without a reason failed: their worker stopped sending heartbeats."""
    retried: dict[int, int] = {}
    for t in trials:
        if t.system_attrs.get("failed_trial") is not None:
            history = t.system_attrs.get("retry_history") or [t.system_attrs["failed_trial"]]
            retried[int(history[-1])] = t.number
    reasons = {}
    for t in trials:
        if t.state.name == "FAIL" and not t.user_attrs.get("reason"):
            again = f"; retried as trial {retried[t.number]}" if t.number in retried else ""
            reasons[t.number] = ("its worker stopped sending heartbeats (killed, crashed or cut "
                                 f"off){again}")
    return reasons


def from_study(study: Any, artifacts: Path | None = None) -> pd.DataFrame:
    """The ranked leaderboard of an Optuna study (one row per trial, best first)."""
    trials = study.get_trials(deepcopy=False)
    stale = _stale_reasons(trials)
    rows = []
    for t in trials:
        attrs = {**t.user_attrs, "reason": stale[t.number]} if t.number in stale else t.user_attrs
        rows.append(trial_row(t.number, t.state.name, attrs, t.intermediate_values, artifacts))
    return rank(pd.DataFrame(rows, columns=COLUMNS))


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
