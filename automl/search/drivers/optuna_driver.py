"""The Optuna driver: translate the space into suggestions and run trials until N are finished."""

from __future__ import annotations

import gc
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna

from automl.config import TrialConfig
from automl.errors import AutoMLError, ConfigError, DataError, TrialFailed, WeightsError
from automl.search import heartbeat
from automl.search.progress import SearchProgress
from automl.search.runner import DriverContext, execute
from automl.space import Categorical, Fixed, IntRange, Param, SearchSpace
from automl.trial.result import TrialResult, WarmStart, head_path
from automl.trial.trainlog import TrainLog

log = logging.getLogger("automl")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
MAX_CONSECUTIVE_FAILURES = 5
PRUNE_WARMUP_EPOCHS = 1  # per phase: the first epoch of a phase is never pruned
REFINE_TOP = 3  # refinement cycles over the best few screened configurations
START_HEADS = 3  # trials on the start point's backbone and size right after it


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
    # other workers' screening trials in flight count too, or several workers over-screen
    busy = sum(t.user_attrs.get("stage") == "screen" and t.number != trial.number
               and t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
               for t in trials)
    if len(screened) + busy < max(1, math.ceil(screen_fraction * n_trials)) or not best:
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


def start_trials(space: SearchSpace, n_trials: int, screen_fraction: float,
                 ) -> list[tuple[dict[str, Any], str]]:
    """A new study's first trials, as (fixed parameters, label) to queue.

    The space's start point on the rung it runs on, then up to ``START_HEADS`` trials that fix
    only its backbone and image size (the sampler picks the rest). On the screening rung those
    reuse the start point's cached activations: seconds each. They take at most half of the
    screening trials (``n_trials`` when not staged), so a small search still explores.
    """
    staged = bool(space.refinement()) and screen_fraction < 1.0
    rung = space.screening() if staged else space
    params = {name: value for name, value in rung.start_point().items()
              if not isinstance(rung.params[name], Fixed)}
    if not params:
        return []
    quota = max(1, math.ceil(screen_fraction * n_trials)) if staged else n_trials
    same_input = {k: v for k, v in params.items() if k in ("backbone", "image_size")}
    heads = min(START_HEADS, max(0, quota // 2 - 1))
    if not same_input or len(same_input) == len(params):
        heads = 0  # nothing to vary on the same activations, or every trial shares them
    return [(params, "start point")] + [(same_input, "start point's input")] * heads


def enqueue_start_trials(study: optuna.Study, trials: list[tuple[dict[str, Any], str]]) -> None:
    """Queue ``start_trials`` (recorded as the user attribute ``start``)."""
    for params, label in trials:
        study.enqueue_trial(params, user_attrs={"start": label})


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def recover_stale(study: optuna.Study) -> list[int]:
    """Mark trials left RUNNING by a process that died (kill -9, power cut) as failed.

    Only for a study that one process uses (the default SQLite file); a shared storage has
    heartbeats instead, since another worker's RUNNING trial is alive.
    """
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for frozen in stale:
        study._storage.set_trial_user_attr(frozen._trial_id, "reason",
                                           "the process running it stopped (killed or crashed)")
        study._storage.set_trial_user_attr(frozen._trial_id, "state_detail", "INTERRUPTED")
        study._storage.set_trial_state_values(frozen._trial_id, optuna.trial.TrialState.FAIL)
    return [t.number for t in stale]


def worker_name() -> str:
    """This worker as the leaderboard shows it: host name and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Counts:
    finished: int
    running: int
    waiting: int


def counts(study: optuna.Study) -> Counts:
    """Finished, running and queued trials of the study (all workers)."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return Counts(sum(s in FINISHED for s in states), states.count(optuna.trial.TrialState.RUNNING),
                  states.count(optuna.trial.TrialState.WAITING))


def _surplus(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """Whether ``trial`` is one too many: another worker asked for the last one at the same time.

    Every worker counts finished trials plus the running ones with a lower number, so of two
    trials asked at once the lower-numbered one runs and the other steps back.
    """
    trials = study.get_trials(deepcopy=False)
    ahead = sum(t.state in FINISHED or (t.state == optuna.trial.TrialState.RUNNING
                                        and t.number < trial.number) for t in trials)
    return ahead >= n_trials


def run(space: SearchSpace, ctx: DriverContext, study: optuna.Study, *, n_trials: int,
        timeout: float | None, on_trial_end: Callable[[optuna.Study, Any], None],
        screen_fraction: float = 0.8, progress: SearchProgress | None = None,
        queue: list[tuple[dict[str, Any], str]] | None = None) -> int:
    """Run trials until ``n_trials`` are finished (COMPLETE or PRUNED) in the study; return how
    many this worker ran.

    With a shared storage (heartbeats on) the count is over all workers: a worker starts a trial
    only while finished + running trials are fewer than ``n_trials``; otherwise it waits, fails
    trials whose worker stopped beating (Optuna queues them again) and takes one over, until
    ``n_trials`` are finished. ``progress`` hears when each trial starts and each epoch ends
    (``on_trial_end`` reports how a trial ended). ``queue`` (``start_trials``, given by the
    process that created the study) is queued before the first trial.
    """
    progress = progress if progress is not None else SearchProgress()
    failures, ran, start = 0, 0, time.monotonic()
    shared = heartbeat.enabled(study)
    poll = max(1.0, min(10.0, float(study._storage.get_heartbeat_interval() or 10))) \
        if shared else 0.0
    said_waiting = False
    while True:
        heartbeat.fail_stale(study)
        now = counts(study)
        if now.finished >= n_trials:
            break
        if timeout is not None and time.monotonic() - start >= timeout:
            log.warning("--timeout %ss reached: no new trial is started", timeout)
            break
        if shared and now.finished + now.running >= n_trials and not now.waiting:
            if not said_waiting:
                progress.note(f"waiting: {now.finished} trials finished and {now.running} running "
                              f"on other workers make {n_trials}; this worker takes over any that "
                              "fails")
            said_waiting = True
            time.sleep(poll)
            continue
        if queue:  # queued once, when a trial is about to start (not before --timeout)
            enqueue_start_trials(study, queue)
            queue = None
        with warnings.catch_warnings():  # Optuna expects heartbeats with optimize(): we beat
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
            trial = study.ask()
        with heartbeat.beating(study, trial):
            if shared and _surplus(study, trial, n_trials):
                _fail(study, trial, TrainLog(), f"not needed: {n_trials} trials were already "
                      "finished or running when it started", "SKIPPED")
                continue
            ran += 1
            state = _ask_and_run(space, ctx, study, trial, n_trials, screen_fraction,
                                 on_trial_end, progress)
        failures = failures + 1 if state == optuna.trial.TrialState.FAIL else 0
        if failures >= MAX_CONSECUTIVE_FAILURES:
            last = study.get_trials(deepcopy=False)[trial.number].user_attrs.get("reason", "")
            raise SearchStopped(f"{failures} trials failed in a row; the search stops. "
                                f"Last reason: {last}")
    return ran


def _ask_and_run(space: SearchSpace, ctx: DriverContext, study: optuna.Study,
                 trial: optuna.Trial, n_trials: int, screen_fraction: float,
                 on_trial_end: Callable[[optuna.Study, Any], None],
                 progress: SearchProgress) -> optuna.trial.TrialState:
    """Plan an asked trial (or take over a retried one's configuration), run it, report it."""
    try:
        trial.set_user_attr("host", worker_name())
        try:
            config = trial.user_attrs.get("config")  # a retried trial keeps its configuration
            params = dict(config) if config else plan(space, study, trial, n_trials,
                                                      screen_fraction)
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
        return _run_one(params, ctx, study, trial, progress)
    finally:  # also after Ctrl-C: the leaderboard shows the interrupted trial
        gc.collect()
        on_trial_end(study, study.get_trials(deepcopy=False)[trial.number])


def _run_one(params: dict[str, Any], ctx: DriverContext, study: optuna.Study,
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
        try:
            result = execute(config, ctx, trial.number, report, train_log,
                             _warm_start(study, trial, ctx))
        finally:
            _note_memory(trial, ctx)
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
    _record(trial, result, ctx.trials_dir)
    study.tell(trial, result.val_accuracy)
    return optuna.trial.TrialState.COMPLETE


def _note_memory(trial: optuna.Trial, ctx: DriverContext) -> None:
    """Record the trial worker's memory after the trial (how the benchmark sees it stay flat)."""
    memory = getattr(ctx.runner, "memory", None)
    if memory is not None:
        trial.set_user_attr("worker_memory", {"pid": ctx.runner.last_pid,
                                              "rss_mb": round(memory.rss_mb, 1),
                                              "cache_mb": round(memory.cache_mb, 1)})


def _warm_start(study: optuna.Study, trial: optuna.Trial, ctx: DriverContext,
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


def _record(trial: optuna.Trial, result: TrialResult, artifacts: Path) -> None:
    summary = {k: v for k, v in asdict(result).items() if k != "history"}
    trial.set_user_attr("result", summary)
    trial.set_user_attr("history", result.history)
    if result.weights_file:  # relative to the artifact root: any worker's mount point works
        trial.set_user_attr("weights", Path(result.weights_file).relative_to(artifacts).as_posix())


def _fail(study: optuna.Study, trial: optuna.Trial, train_log: TrainLog, reason: str,
          detail: str = "FAIL") -> None:
    trial.set_user_attr("history", train_log.epochs)
    trial.set_user_attr("reason", reason)
    trial.set_user_attr("state_detail", detail)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
