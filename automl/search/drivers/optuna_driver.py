"""The Optuna driver: translate the space into suggestions and run trials until N are finished.

``search`` sets the study up for it (TPE sampler, pruner, a new study's start trials) and runs it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import socket
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from automl.config import TrialConfig
from automl.errors import AutoMLError, ConfigError
from automl.search import heartbeat, record
from automl.search.cost import Limits, trial_cost
from automl.search.progress import SearchProgress
from automl.search.record import TrialRecord
from automl.search.request import SearchSetup
from automl.search.runner import DriverContext, execute, note_memory
from automl.space import Categorical, Fixed, IntRange, Param, SearchSpace, parse_variant
from automl.trial.trainlog import TrainLog

log = logging.getLogger("automl")
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
MAX_CONSECUTIVE_FAILURES = 5
PRUNE_WARMUP_EPOCHS = 1  # per phase: the first epoch of a phase is never pruned
REFINE_TOP = 3  # refinement cycles over the best few screened configurations
START_HEADS = 3  # trials on the start point's backbone and size right after it
TPE_STARTUP_TRIALS = 10  # Optuna's default: random trials before TPE models the results


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
        record.write(trial, stage="full")
        return suggest(space, trial)
    trials = study.get_trials(deepcopy=False)
    stage = {t.number: TrialRecord.of(t).stage for t in trials}
    screened = [t for t in trials if stage[t.number] == "screen" and t.state in FINISHED]
    best = sorted((t for t in screened if t.state == optuna.trial.TrialState.COMPLETE),
                  key=lambda t: -(t.value or 0.0))
    # other workers' screening trials in flight count too, or several workers over-screen
    busy = sum(stage[t.number] == "screen" and t.number != trial.number
               and t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
               for t in trials)
    if len(screened) + busy < max(1, math.ceil(screen_fraction * n_trials)) or not best:
        record.write(trial, stage="screen")
        return suggest(space.screening(), trial)
    refinements = [TrialRecord.of(t).refines for t in trials if stage[t.number] == "refine"]
    if all(isinstance(p, Fixed) for p in refine.values()):
        # one refinement per base: a second would only repeat the same configuration
        fresh = [t for t in best if t.number not in refinements]
        if not fresh:
            record.write(trial, stage="screen")
            return suggest(space.screening(), trial)
        base = fresh[0]
    else:
        base = best[len(refinements) % min(REFINE_TOP, len(best))]
    params = dict(TrialRecord.of(base).config)
    for name, p in refine.items():
        value = suggest_param(p, trial, f"refine_{name}")
        params.update(parse_variant(value) if name == "variant" else {name: value})
    record.write(trial, stage="refine", refines=base.number)
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
        record.enqueue(study, params, TrialRecord(start=label))


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def recover_stale(study: optuna.Study) -> list[int]:
    """Mark trials left RUNNING by a process that died (kill -9, power cut) as failed.

    Only for a study that one process uses (the default SQLite file); a shared storage has
    heartbeats instead, since another worker's RUNNING trial is alive.
    """
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for frozen in stale:
        record.close_left_over(study, frozen, "the process running it stopped (killed or crashed)")
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


def search(setup: SearchSetup, on_trial_end: Callable[[optuna.Study, Any], None],
           progress: SearchProgress | None = None) -> int:
    """Set the prepared study up for this driver and run it; return how many trials ran here.

    The pruner behind ``--pruner``, a TPE sampler (``make_sampler``) and, when this process
    created the study, its start trials (queued right before its first trial).
    """
    req, study = setup.req, setup.study
    fraction = req.screen_fraction_or_default
    planned = start_trials(setup.space, req.trials, fraction)
    study.pruner = make_pruner(req.pruner_or_default)
    study.sampler = make_sampler(study, req.run.seed, shared=setup.shared,
                                 start=len(planned), created=setup.created)
    return run(setup.space, setup.ctx, study, n_trials=req.trials, timeout=req.timeout,
               on_trial_end=on_trial_end, screen_fraction=fraction, progress=progress,
               queue=planned if setup.created else [])


def make_sampler(study: optuna.Study, seed: int, *, shared: bool, start: int,
                 created: bool) -> optuna.samplers.TPESampler:
    """TPE for this run: seeded apart from earlier runs and other workers; its random start is
    not shortened by the ``start`` start trials this process queues (``created``) or a new
    study's creator queued (a worker that joins before any trial finished counts them too)."""
    # a resumed search must not replay the same random start points, nor may two workers
    # started at once; with several workers, TPE imagines the running trials' results
    seed += len(study.trials)
    if shared:
        seed += zlib.crc32(worker_name().encode()) % 100_003
    if not created and finished_count(study):
        start = sum(TrialRecord.of(t).start is not None
                    for t in study.get_trials(deepcopy=False))
    return optuna.samplers.TPESampler(seed=seed, constant_liar=shared,
                                      n_startup_trials=TPE_STARTUP_TRIALS + start)


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
    poll = max(1.0, min(10.0, float(heartbeat.interval(study) or 10))) if shared else 0.0
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
            record.begin(trial)
            if shared and _surplus(study, trial, n_trials):
                record.fail(study, trial, [], f"not needed: {n_trials} trials were already "
                            "finished or running when it started", "SKIPPED")
                continue
            ran += 1
            state = _ask_and_run(space, ctx, study, trial, n_trials, screen_fraction,
                                 on_trial_end, progress)
        failures = failures + 1 if state == optuna.trial.TrialState.FAIL else 0
        if failures >= MAX_CONSECUTIVE_FAILURES:
            last = TrialRecord.of(study.get_trials(deepcopy=False)[trial.number]).reason
            raise SearchStopped(f"{failures} trials failed in a row; the search stops. "
                                f"Last reason: {last}")
    return ran


def _ask_and_run(space: SearchSpace, ctx: DriverContext, study: optuna.Study,
                 trial: optuna.Trial, n_trials: int, screen_fraction: float,
                 on_trial_end: Callable[[optuna.Study, Any], None],
                 progress: SearchProgress) -> optuna.trial.TrialState:
    """Plan an asked trial (or take over a retried one's configuration), run it, report it."""
    try:
        record.write(trial, host=worker_name())
        try:
            config = TrialRecord.of(trial).config  # a retried trial keeps its configuration
            params = dict(config) if config else plan(space, study, trial, n_trials,
                                                      screen_fraction)
        except ValueError as exc:  # Optuna: a parameter's choices differ from earlier trials
            record.fail(study, trial, [], f"search space changed: {exc}")
            raise ConfigError(
                f"the search space differs from the one this study was started with ({exc}). "
                "Use the same space (and make the same backbones' weights available), or "
                "start a new study with --study NAME.") from None
        except KeyboardInterrupt as exc:
            record.settle(study, trial, record.classify(exc), [])
            raise
        progress.trial_start(trial.number, params, TrialRecord.of(trial).stage)
        state = _run_one(params, ctx, study, trial, progress)
    finally:  # also after Ctrl-C: the leaderboard shows the interrupted trial
        gc.collect()
        on_trial_end(study, study.get_trials(deepcopy=False)[trial.number])
    # no limit needs the cost before training: measured after the trial's row, once the
    # architecture has trained (a failed trial's may not even build)
    if not _limited(ctx) and state in FINISHED:
        _measure_after(study, ctx, TrialConfig.from_params(params))
    return state


def _limited(ctx: DriverContext) -> bool:
    return ctx.limits is not None and ctx.limits.any


def _measure_after(study: optuna.Study, ctx: DriverContext, config: TrialConfig) -> None:
    """Measure a trial's architecture once it has finished (kept in the study; the leaderboard
    reads it from there), so the first results are not held up by it; a failure is a warning."""
    paused = ctx.sizes.paused() if ctx.sizes is not None else contextlib.nullcontext()
    try:
        # its .tflite size is converted in the background (automl.search.sizes), not here
        with paused:
            trial_cost(study, ctx.runner, config, convert=False)
    except Exception as exc:
        log.warning("could not measure the serving cost of %s at %d px: %s", config.backbone,
                    config.image_size, exc)


def _run_one(params: dict[str, Any], ctx: DriverContext, study: optuna.Study,
             trial: optuna.Trial, progress: SearchProgress | None = None,
             ) -> optuna.trial.TrialState:
    """With limits: measure what the trial's architecture costs (once per architecture) and end
    it as INFEASIBLE if that is over them. Run it; tell Optuna how it ended."""
    config = TrialConfig.from_params(params)
    record.write(trial, config=config.as_dict())
    train_log = TrainLog()
    if _limited(ctx):
        over = _check_limits(ctx.limits, ctx, study, trial, config)
        if over is not None:
            return over
    return _train(config, ctx, study, trial, train_log, progress)


def _check_limits(limits: Limits, ctx: DriverContext, study: optuna.Study, trial: optuna.Trial,
                  config: TrialConfig) -> optuna.trial.TrialState | None:
    """Measure the trial's cost, set its constraints; its end state if it is not to be trained
    (over the limits: PRUNED as INFEASIBLE; the measurement failed: FAIL), else None."""
    try:
        cost = trial_cost(study, ctx.runner, config)
    except BaseException as exc:  # the measurement failed: the trial fails (Ctrl-C: stops)
        outcome = record.classify(exc)
        if outcome is None:
            raise
        record.settle(study, trial, outcome, [])
        if outcome.stop:
            raise
        return outcome.state
    record.write(trial, cost=cost)
    for name, value in limits.constraints(cost).items():
        trial.set_constraint(name, value)
    over = limits.violations(cost)
    if over:
        record.infeasible(study, trial, f"not trained: {over}")
        return optuna.trial.TrialState.PRUNED
    return None


def _train(config: TrialConfig, ctx: DriverContext, study: optuna.Study, trial: optuna.Trial,
           train_log: TrainLog, progress: SearchProgress | None) -> optuna.trial.TrialState:
    """Train and evaluate the trial (pruned through Optuna); record how it ended."""

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
                             record.warm_start(study, trial, ctx.trials_dir))
        finally:
            note_memory(trial, ctx)
    except BaseException as exc:  # pruned, Ctrl-C, bad input, a failed trial: see classify
        outcome = record.classify(exc)
        if outcome is None:
            raise
        if outcome.unexpected:  # out of memory, a backbone that breaks at this size, ...
            log.debug("trial %d failed", trial.number, exc_info=True)
        record.settle(study, trial, outcome, train_log.epochs)
        if outcome.stop:
            raise
        return outcome.state
    record.complete(study, trial, result, ctx.trials_dir)
    return optuna.trial.TrialState.COMPLETE
