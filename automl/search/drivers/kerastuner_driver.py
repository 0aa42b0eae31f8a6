"""The keras-tuner driver: keras-tuner's oracles choose, automl's trial builder trains.

keras-tuner's RandomSearch, BayesianOptimization and Hyperband oracles propose values in the
space translated by ``kerastuner_space``; a thin ``kt.engine.base_tuner.BaseTuner`` turns each
proposal into a TrialConfig and runs it through ``automl.trial.run.run_trial`` (the one builder
and training loop, with the frozen-activation cache). Every keras-tuner trial is also recorded
as a trial of the study's Optuna storage, with the attributes the Optuna driver sets, so the
leaderboard, export and predict do not know which driver ran. The keras-tuner project (oracle
state, one trial.json per trial) lives in ``results/<study>/keras_tuner/<algorithm>/`` and is
reloaded by the next run of the same command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras_tuner as kt
import optuna
from keras_tuner.engine.trial import TrialStatus

from automl.atomic import write_text_atomic
from automl.config import RunConfig, TrialConfig
from automl.errors import ConfigError
from automl.search import record
from automl.search.drivers.kerastuner_space import (
    from_values,
    optuna_distributions,
    to_hyperparameters,
)
from automl.search.drivers.optuna_driver import (
    MAX_CONSECUTIVE_FAILURES,
    SearchStopped,
    finished_count,
)
from automl.search.progress import SearchProgress
from automl.search.record import TrialRecord
from automl.search.request import SearchSetup
from automl.search.runner import DriverContext, execute, note_memory
from automl.space import SearchSpace
from automl.trial.result import head_path
from automl.trial.trainlog import TrainLog

log = logging.getLogger("automl")
ALGORITHMS = ("random", "bayesian", "hyperband")
OBJECTIVE = "val_accuracy"
HYPERBAND_FACTOR = 3
NEVER = 10**9  # keras-tuner's own failure limit raises mid-save; automl counts failures itself


class _AtomicSaves:
    """Oracle mixin: oracle.json and trial.json written atomically (Ctrl-C never halves them).

    It overrides the oracle's own (private) save hooks: keras-tuner offers no public way to
    choose how its project files are written.
    """

    def save(self) -> None:
        write_text_atomic(self._get_oracle_fname(), json.dumps(self.get_state()))

    def _save_trial(self, trial: Any) -> None:
        path = Path(self._get_trial_dir(trial.trial_id)) / "trial.json"
        write_text_atomic(path, json.dumps(trial.get_state()))


class RandomOracle(_AtomicSaves, kt.oracles.RandomSearchOracle):
    """keras-tuner's random search."""


class BayesianOracle(_AtomicSaves, kt.oracles.BayesianOptimizationOracle):
    """keras-tuner's Gaussian-process Bayesian optimisation."""


class HyperbandOracle(_AtomicSaves, kt.oracles.HyperbandOracle):
    """keras-tuner's Hyperband (successive halving over epoch budgets)."""


def can_fine_tune(space: SearchSpace) -> bool:
    """Whether some configuration of ``space`` has a fine-tuning phase."""
    return min(space.params["freeze_depth"].values()) < 1.0


def max_budget(space: SearchSpace, run: RunConfig) -> int:
    """Hyperband's largest budget: every epoch both phases may run."""
    return run.epochs + (run.fine_tune_epochs if can_fine_tune(space) else 0)


def budget_epochs(budget: int, run: RunConfig) -> tuple[int, int]:
    """(head epochs, fine-tuning epochs) of a Hyperband budget: the head phase comes first."""
    head = min(budget, run.epochs)
    return head, min(budget - head, run.fine_tune_epochs)


def make_oracle(algorithm: str, space: SearchSpace, run: RunConfig) -> kt.Oracle:
    """The oracle behind ``--algorithm``; it runs until automl stops asking (no max_trials)."""
    hp = to_hyperparameters(space)
    common = {"objective": kt.Objective(OBJECTIVE, "max"), "hyperparameters": hp,
              "allow_new_entries": False, "seed": run.seed + 1,  # kt takes seed 0 as "random"
              "max_consecutive_failed_trials": NEVER}
    if algorithm == "random":
        return RandomOracle(max_trials=None, **common)
    if algorithm == "bayesian":
        searched = sum(not isinstance(p, kt.engine.hyperparameters.Fixed) for p in hp.space)
        return BayesianOracle(max_trials=None, num_initial_points=max(3, 3 * searched),
                              **common)
    if algorithm == "hyperband":
        return HyperbandOracle(max_epochs=max_budget(space, run), factor=HYPERBAND_FACTOR,
                               hyperband_iterations=None, **common)
    raise ConfigError(f"--algorithm {algorithm!r}: expected one of {', '.join(ALGORITHMS)}.")


class AutoMLTuner(kt.engine.base_tuner.BaseTuner):
    """A keras-tuner tuner whose trials are automl trials, recorded in an Optuna study too."""

    def __init__(self, algorithm: str, space: SearchSpace, ctx: DriverContext,
                 study: optuna.Study, project_dir: Path) -> None:
        self.algorithm, self.space, self.ctx, self.study = algorithm, space, ctx, study
        oracle = make_oracle(algorithm, space, ctx.run)
        wanted = _space_config(oracle.hyperparameters)
        settings = _hyperband_settings(oracle)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # "Reloading Tuner from ..."
                super().__init__(oracle, directory=str(project_dir), project_name=algorithm,
                                 overwrite=False)
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:  # damaged project files
            cause = exc.__cause__ or exc  # keras-tuner wraps a missing key in a RuntimeError
            raise ConfigError(
                f"the keras-tuner project {project_dir / algorithm} cannot be reloaded: its "
                f"oracle.json or a trial.json is damaged ({type(cause).__name__}: "
                f"{str(cause).splitlines()[0][:120] if str(cause) else ''}). "
                "Move that folder away to restart keras-tuner's state (the study's finished "
                "trials are kept), or start a new study with --study NAME.") from None
        self.oracle.verbose = 0
        if _space_config(self.oracle.hyperparameters) != wanted:
            raise ConfigError(
                f"the search space {space.source} differs from the one the keras-tuner project "
                f"{self.project_dir} was started with. Use the same space (and make the same "
                "backbones' weights available), or start a new study with --study NAME.")
        if _hyperband_settings(self.oracle) != settings:
            raise ConfigError(
                f"the Hyperband project {self.project_dir} was started with a budget of "
                f"{self.oracle.max_epochs} epochs (--epochs + --fine-tune-epochs); this run asks "
                f"for {settings[0]}. Use the same --epochs and --fine-tune-epochs to resume it, "
                "or start a new study with --study NAME.")
        self._requeue_orphans()

    # -- keras-tuner hooks ---------------------------------------------------------------------

    def run_trial(self, trial: Any, *_: Any, **__: Any) -> dict[str, float]:
        """Run one keras-tuner trial as an automl trial, recorded in the study.

        Returns the objective keras-tuner maximises (validation accuracy); a trial that fails
        is recorded as FAIL and raises keras-tuner's FailedTrialError.
        """
        params = from_values(self.space, trial.hyperparameters.values)
        config = TrialConfig.from_params(params)
        otrial = self._current = self._ask(trial, params)
        ctx, warm = self._schedule(trial, otrial)
        train_log = TrainLog()

        def report(epoch: int, row: dict[str, float]) -> None:
            otrial.report(row["val_accuracy"], epoch)

        try:
            try:
                result = execute(config, ctx, otrial.number, report, train_log, warm)
            finally:
                note_memory(otrial, ctx)
        except BaseException as exc:  # no pruning here: keras-tuner's oracles never prune
            outcome = record.classify(exc, prunable=False)
            if outcome is None:
                raise
            if not outcome.stop:  # TrialFailed, out of memory, a backbone that breaks, ...
                log.debug("trial %d failed", otrial.number, exc_info=True)
            record.settle(self.study, otrial, outcome, train_log.epochs)
            if outcome.stop:
                raise
            raise kt.errors.FailedTrialError(outcome.reason) from None
        record.complete(self.study, otrial, result, ctx.trials_dir)
        return {OBJECTIVE: result.val_accuracy}

    def save(self) -> None:
        self.oracle.save()
        write_text_atomic(self._get_tuner_fname(), json.dumps(self.get_state()))

    # -- the search loop -----------------------------------------------------------------------

    def search_until(self, n_trials: int, timeout: float | None,
                     on_trial_end: Callable[[optuna.Study, Any], None]) -> int:
        """Run keras-tuner trials until the study has ``n_trials`` finished; return how many ran.

        keras-tuner's own ``search()`` counts trials in its project and swallows every error;
        this loop counts finished trials of the study (so a resumed run only adds the missing
        ones), stops on bad input, and leaves an interrupted trial queued for a retry.
        """
        failures, ran, start = 0, 0, time.monotonic()
        while finished_count(self.study) < n_trials:
            if timeout is not None and time.monotonic() - start >= timeout:
                log.warning("--timeout %ss reached: no new trial is started", timeout)
                break
            trial = self.oracle.create_trial(self.tuner_id)
            if trial.status != TrialStatus.RUNNING:
                log.warning("keras-tuner's %s oracle has no new configuration to try (the space "
                            "is exhausted); the search stops with %d finished trials.",
                            self.algorithm, finished_count(self.study))
                break
            ran += 1
            self._current = None
            try:
                metrics = self.run_trial(trial)
            except kt.errors.FailedTrialError as exc:
                self._end(trial, None, str(exc))
                failures += 1
            except BaseException:  # Ctrl-C, bad input: the same command runs it again
                self._requeue(trial)
                raise
            else:
                self._end(trial, metrics[OBJECTIVE], None)
                failures = 0
            finally:
                gc.collect()
                if self._current is not None:
                    on_trial_end(self.study, self.study.get_trials(deepcopy=False)[
                        self._current.number])
            if failures >= MAX_CONSECUTIVE_FAILURES:
                last = TrialRecord.of(self.study.get_trials(deepcopy=False)[-1]).reason
                raise SearchStopped(f"{failures} trials failed in a row; the search stops. "
                                    f"Last reason: {last}")
        return ran

    def _ask(self, trial: Any, params: dict[str, Any]) -> optuna.Trial:
        """A RUNNING Optuna trial holding ``params`` and the attributes the leaderboard reads."""
        values = trial.hyperparameters.values
        dists = optuna_distributions(self.space)
        rec = TrialRecord(config=TrialConfig.from_params(params).as_dict(),
                          kt_trial_id=trial.trial_id, kt_algorithm=self.algorithm,
                          stage=self.algorithm)
        if "tuner/epochs" in values:
            rec = dataclasses.replace(
                rec, stage=f"hyperband r{values['tuner/round']}",
                kt_budget=values["tuner/epochs"], kt_bracket=values["tuner/bracket"],
                kt_round=values["tuner/round"], kt_continues=values.get("tuner/trial_id"))
        record.enqueue(self.study, {k: params[k] for k in dists}, rec)
        return self.study.ask(dists)

    def _schedule(self, trial: Any, otrial: optuna.Trial) -> tuple[DriverContext, Any]:
        """Hyperband: the trial's epoch budget and, where it helps, the head phase it reuses.

        A budget of b epochs trains min(b, --epochs) head epochs, then up to the rest as
        fine-tuning. A continued trial reuses its predecessor's head phase (weights and epochs)
        when that phase was complete (stopped early, or all --epochs run) and runs only the
        fine-tuning; otherwise it trains from the start with its larger budget.
        """
        values = trial.hyperparameters.values
        if "tuner/epochs" not in values:
            return self.ctx, None
        run = self.ctx.run
        head, tune = budget_epochs(int(values["tuner/epochs"]), run)
        ctx = dataclasses.replace(self.ctx, run=dataclasses.replace(
            run, epochs=head, fine_tune_epochs=tune))
        before = self._predecessor(values.get("tuner/trial_id"), TrialRecord.of(otrial).config)
        if before is None:
            return ctx, None
        earlier = TrialRecord.of(before)
        prev_head = budget_epochs(int(earlier.kt_budget or 0), run)[0]
        ran = sum(row.get("phase") == 1 for row in earlier.history)
        if not (ran < prev_head or prev_head >= run.epochs):
            return ctx, None  # its head phase was cut short by its budget: train afresh
        record.write(otrial, refines=before.number)
        return ctx, record.warm_start(self.study, otrial, ctx.trials_dir)

    def _predecessor(self, kt_id: str | None, config: dict[str, Any],
                     ) -> optuna.trial.FrozenTrial | None:
        """The latest COMPLETE study trial of keras-tuner trial ``kt_id`` with its head kept."""
        if kt_id is None:
            return None
        for t in reversed(self.study.get_trials(deepcopy=False)):
            rec = TrialRecord.of(t)
            if (rec.kt_trial_id == kt_id and t.state.name == "COMPLETE" and rec.config == config
                    and head_path(self.ctx.trials_dir, t.number).is_file()):
                return t
        return None

    # -- oracle bookkeeping --------------------------------------------------------------------

    def _end(self, trial: Any, value: float | None, message: str | None) -> None:
        """End ``trial`` in the oracle (COMPLETED or FAILED) and save the project."""
        if value is None and self.algorithm == "hyperband":
            # a FAILED trial never becomes a candidate, so its bracket could never fill its next
            # round; scored as 0 it takes part and loses (the study still records FAIL)
            value = 0.0
        if value is not None:
            self.oracle.update_trial(trial.trial_id, {OBJECTIVE: value})
            trial.status = TrialStatus.COMPLETED
        else:
            trial.status = TrialStatus.FAILED
        trial.message = message
        self.oracle.end_trial(trial)
        self.save()

    def _requeue(self, trial: Any) -> None:
        """Leave ``trial`` to be run again by the next search (keras-tuner's retry queue)."""
        for tuner_id, ongoing in list(self.oracle.ongoing_trials.items()):
            if ongoing.trial_id == trial.trial_id:
                self.oracle.ongoing_trials.pop(tuner_id)
        queue = retry_queue(self.oracle)
        if trial.trial_id not in queue:
            queue.append(trial.trial_id)
        self.save()

    def _requeue_orphans(self) -> None:
        """Queue trials a killed process left RUNNING outside keras-tuner's own retry list.

        (A kill between writing trial.json and oracle.json leaves such a trial; the Bayesian
        oracle would otherwise score it with a stale value.)
        """
        queue = retry_queue(self.oracle)
        queued = set(queue) | {t.trial_id for t in self.oracle.ongoing_trials.values()}
        orphans = [tid for tid, t in self.oracle.trials.items()
                   if t.status == TrialStatus.RUNNING and tid not in queued]
        if orphans:
            queue.extend(orphans)
            self.save()


def retry_queue(oracle: kt.Oracle) -> list[str]:
    """The oracle's retry list (live): trial ids ``create_trial`` hands out again first.

    keras-tuner keeps it private and has no public call that queues a trial for another run
    without ending it: ``end_trial`` with status INVALID counts a run and fails the trial past
    ``max_retries_per_trial``, and ``set_state`` rebuilds the oracle's whole state.
    """
    return oracle._retry_queue


def _space_config(hp: kt.HyperParameters) -> str:
    """A comparable text form of a keras-tuner space (as its project stores it)."""
    return json.dumps(json.loads(json.dumps(hp.get_config()["space"])), sort_keys=True)


def _hyperband_settings(oracle: kt.Oracle) -> tuple[Any, ...]:
    return (getattr(oracle, "max_epochs", None), getattr(oracle, "factor", None))


def search(setup: SearchSetup, on_trial_end: Callable[[optuna.Study, Any], None],
           progress: SearchProgress | None = None) -> int:
    """Run the prepared study with keras-tuner's ``--algorithm``; return how many trials ran.

    Its oracle and project (``<study folder>/keras_tuner/<algorithm>``) are set up by ``run``;
    ``progress`` hears only how trials end (through ``on_trial_end``).
    """
    req = setup.req
    return run(setup.space, setup.ctx, setup.study, algorithm=req.algorithm_or_default,
               n_trials=req.trials, timeout=req.timeout, on_trial_end=on_trial_end,
               project_dir=setup.folder / "keras_tuner")


def run(space: SearchSpace, ctx: DriverContext, study: optuna.Study, *, algorithm: str,
        n_trials: int, timeout: float | None,
        on_trial_end: Callable[[optuna.Study, Any], None], project_dir: Path) -> int:
    """Run keras-tuner's ``algorithm`` until ``n_trials`` are finished; return how many ran."""
    if algorithm == "hyperband" and max_budget(space, ctx.run) < HYPERBAND_FACTOR:
        log.warning("Hyperband with a budget of %d epochs (--epochs + --fine-tune-epochs) has a "
                    "single rung: it runs as random search.", max_budget(space, ctx.run))
    _fail_waiting(study)
    tuner = AutoMLTuner(algorithm, space, ctx, study, project_dir)
    return tuner.search_until(n_trials, timeout, on_trial_end)


def _fail_waiting(study: optuna.Study) -> None:
    """Close study trials enqueued by a process that stopped before asking for them.

    Each keras-tuner trial is enqueued and asked at once; one left WAITING would otherwise be
    handed out in place of the next trial's own entry.
    """
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
        record.close_left_over(study, frozen, "the process that enqueued it stopped before it ran")
