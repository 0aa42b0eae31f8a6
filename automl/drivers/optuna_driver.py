"""The Optuna driver: translate the space into suggestions and run trials until N are finished."""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import optuna

from automl.config import TrialConfig
from automl.errors import AutoMLError, ConfigError, DataError, TrialFailed, WeightsError
from automl.objective import SearchContext, TrialResult, WarmStart, head_path, run_trial
from automl.progress import SearchProgress
from automl.space import Categorical, Fixed, IntRange, Param, SearchSpace
from automl.train import TrainLog

log = logging.getLogger("automl")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
MAX_CONSECUTIVE_FAILURES = 5
PRUNE_WARMUP_EPOCHS = 1  # per phase: the first epoch of a phase is never pruned
REFINE_TOP = 3  # refinement cycles over the best few screened configurations


class SearchStopped(AutoMLError):
    """The search cannot go on (e.g. too many consecutive failures)."""


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """The Optuna pruner behind ``--pruner``."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {name!r}: expected one of median, hyperband, halving, none.")


def suggest_param(p: Param, trial: optuna.trial.BaseTrial, name: str | None = None) -> Any:
    """Sample one Param through an Optuna trial (under ``name``, default its own)."""
    name = name or p.name
    if isinstance(p, Fixed):
        return p.value
    if isinstance(p, Categorical):
        return trial.suggest_categorical(name, list(p.choices))
    if isinstance(p, IntRange):
        return trial.suggest_int(name, p.low, p.high, step=p.step, log=p.log)
    return trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)


def suggest(space: SearchSpace, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    """Sample one point of ``space`` through an Optuna trial (fixed values are not suggested)."""
    return {name: suggest_param(p, trial) for name, p in space.params.items()}


def plan(space: SearchSpace, study: optuna.Study, trial: optuna.Trial, n_trials: int,
         screen_fraction: float) -> dict[str, Any]:
    """Pick this trial's parameters under the staged schedule.

    Screening (the first ``screen_fraction`` of the trials): the space's cheap rung, head-only
    training on cached activations. Refinement (the rest): one of the best screened
    configurations, with fine-tuning depth and augmentation sampled by TPE on top of it.
    """
    refine = space.refinement()
    if not refine or screen_fraction >= 1.0:
        trial.set_user_attr("stage", "full")
        return suggest(space, trial)
    trials = study.get_trials(deepcopy=False)
    screened = [t for t in trials if t.user_attrs.get("stage") == "screen" and t.state in FINISHED]
    best = sorted((t for t in screened if t.state == optuna.trial.TrialState.COMPLETE),
                  key=lambda t: -(t.value or 0.0))
    if len(screened) < max(1, math.ceil(screen_fraction * n_trials)) or not best:
        trial.set_user_attr("stage", "screen")
        return suggest(space.screening(), trial)
    refinements = [t.user_attrs.get("refines") for t in trials
                   if t.user_attrs.get("stage") == "refine"]
    if all(isinstance(p, Fixed) for p in refine.values()):
        # one refinement per base: a second would only repeat the same configuration
        fresh = [t for t in best if t.number not in refinements]
        if not fresh:
            trial.set_user_attr("stage", "screen")
            return suggest(space.screening(), trial)
        base = fresh[0]
    else:
        base = best[len(refinements) % min(REFINE_TOP, len(best))]
    params = dict(base.user_attrs["config"])
    for name, p in refine.items():
        params[name] = suggest_param(p, trial, f"refine_{name}")
    trial.set_user_attr("stage", "refine")
    trial.set_user_attr("refines", base.number)
    return params


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def recover_stale(study: optuna.Study) -> list[int]:
    """Mark trials left RUNNING by a process that died (kill -9, power cut) as failed."""
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for frozen in stale:
        study._storage.set_trial_user_attr(frozen._trial_id, "reason",
                                           "the process running it stopped (killed or crashed)")
        study._storage.set_trial_user_attr(frozen._trial_id, "state_detail", "INTERRUPTED")
        study._storage.set_trial_state_values(frozen._trial_id, optuna.trial.TrialState.FAIL)
    return [t.number for t in stale]


def run(space: SearchSpace, ctx: SearchContext, study: optuna.Study, *, n_trials: int,
        timeout: float | None, on_trial_end: Callable[[optuna.Study, Any], None],
        screen_fraction: float = 0.8, progress: SearchProgress | None = None) -> int:
    """Run trials until ``n_trials`` are finished (COMPLETE or PRUNED); return how many ran.

    ``progress`` hears when each trial starts and each epoch ends (``on_trial_end`` reports
    how a trial ended).
    """
    progress = progress if progress is not None else SearchProgress()
    failures, ran, start = 0, 0, time.monotonic()
    while finished_count(study) < n_trials:
        if timeout is not None and time.monotonic() - start >= timeout:
            log.warning("--timeout %ss reached: no new trial is started", timeout)
            break
        trial = study.ask()
        ran += 1
        try:
            try:
                params = plan(space, study, trial, n_trials, screen_fraction)
            except ValueError as exc:  # Optuna: a parameter's choices differ from earlier trials
                _fail(study, trial, TrainLog(), f"search space changed: {exc}")
                raise ConfigError(
                    f"the search space differs from the one this study was started with ({exc}). "
                    "Use the same space (and make the same backbones' weights available), or "
                    "start a new study with --study NAME.") from None
            except KeyboardInterrupt:
                _fail(study, trial, TrainLog(), "interrupted by the user (Ctrl-C)", "INTERRUPTED")
                raise
            progress.trial_start(trial.number, params, trial.user_attrs.get("stage", ""))
            state = _run_one(params, ctx, study, trial, progress)
        finally:  # also after Ctrl-C: the leaderboard shows the interrupted trial
            gc.collect()
            on_trial_end(study, study.get_trials(deepcopy=False)[trial.number])
        failures = failures + 1 if state == optuna.trial.TrialState.FAIL else 0
        if failures >= MAX_CONSECUTIVE_FAILURES:
            last = study.get_trials(deepcopy=False)[trial.number].user_attrs.get("reason", "")
            raise SearchStopped(f"{failures} trials failed in a row; the search stops. "
                                f"Last reason: {last}")
    return ran


def _run_one(params: dict[str, Any], ctx: SearchContext, study: optuna.Study,
             trial: optuna.Trial, progress: SearchProgress | None = None,
             ) -> optuna.trial.TrialState:
    """Run one asked trial and tell Optuna how it ended."""
    config = TrialConfig.from_params(params)
    trial.set_user_attr("config", config.as_dict())
    train_log = TrainLog()

    def report(epoch: int, row: dict[str, float]) -> None:
        if progress is not None:
            progress.epoch(trial.number, row)
        trial.report(row["val_accuracy"], epoch)
        # each phase gets a few epochs before it can be pruned: fine-tuning often dips first
        if row["phase_epoch"] > PRUNE_WARMUP_EPOCHS and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    try:
        result = run_trial(config, ctx, trial.number, report, train_log,
                           _warm_start(study, trial, ctx))
    except optuna.TrialPruned:
        trial.set_user_attr("history", train_log.epochs)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return optuna.trial.TrialState.PRUNED
    except KeyboardInterrupt:
        _fail(study, trial, train_log, "interrupted by the user (Ctrl-C)", "INTERRUPTED")
        raise
    except (ConfigError, DataError, WeightsError) as exc:
        _fail(study, trial, train_log, str(exc))
        raise
    except TrialFailed as exc:
        _fail(study, trial, train_log, str(exc))
        return optuna.trial.TrialState.FAIL
    except Exception as exc:  # out of memory, a backbone that breaks at this size, ...
        log.debug("trial %d failed", trial.number, exc_info=True)
        _fail(study, trial, train_log, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
              if str(exc) else type(exc).__name__)
        return optuna.trial.TrialState.FAIL
    _record(trial, result)
    study.tell(trial, result.val_accuracy)
    return optuna.trial.TrialState.COMPLETE


def _warm_start(study: optuna.Study, trial: optuna.Trial, ctx: SearchContext,
                ) -> WarmStart | None:
    """A refinement trial reuses the head phase of the screened trial it refines."""
    base_number = trial.user_attrs.get("refines")
    if base_number is None:
        return None
    base = study.get_trials(deepcopy=False)[base_number]
    head = head_path(ctx.trials_dir, base_number)
    history = [row for row in base.user_attrs.get("history", []) if row.get("phase") == 1]
    result = base.user_attrs.get("result") or {}
    if not head.is_file() or not history or "val_loss" not in result:
        return None
    return WarmStart(head, history, min(row["val_loss"] for row in history))


def _record(trial: optuna.Trial, result: TrialResult) -> None:
    summary = {k: v for k, v in asdict(result).items() if k != "history"}
    trial.set_user_attr("result", summary)
    trial.set_user_attr("history", result.history)


def _fail(study: optuna.Study, trial: optuna.Trial, train_log: TrainLog, reason: str,
          detail: str = "FAIL") -> None:
    trial.set_user_attr("history", train_log.epochs)
    trial.set_user_attr("reason", reason)
    trial.set_user_attr("state_detail", detail)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
