"""Run a search: validate everything up front, then let the driver run trials."""

from __future__ import annotations

import logging
import shutil
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl.backbones.registry import get_spec
from automl.config import RunConfig, study_dir
from automl.errors import ConfigError, WeightsError
from automl.search.progress import LineProgress, SearchProgress, TrialEnd
from automl.space import SearchSpace, space_file

log = logging.getLogger("automl")
TPE_STARTUP_TRIALS = 10  # Optuna's default: random trials before TPE models the results


@dataclass(frozen=True)
class SearchRequest:
    """Everything `automl search` was asked for."""

    space: str | None = None
    data: str | None = None
    results: str = "results"
    study: str = "default"
    storage: str | None = None
    trials: int = 50
    timeout: float | None = None
    pruner: str = "median"
    screen_fraction: float = 0.8
    val_split: float = 0.15
    test_split: float = 0.15
    run: RunConfig = RunConfig()
    artifacts: str | None = None     # kept weights; default <results>/<study>/trials
    heartbeat: int = 60              # with --storage: seconds between a worker's heartbeats
    heartbeat_grace: int | None = None   # silent this long -> failed and retried (3 beats)
    driver: str = "optuna"           # or "keras-tuner"
    algorithm: str | None = None     # keras-tuner only: random, bayesian (default), hyperband
    in_process: bool = False         # run trials here instead of in a recycled worker process


def validate(req: SearchRequest) -> None:
    """Flag checks that need no file."""
    if req.trials < 1:
        raise ConfigError(f"--trials {req.trials}: expected a whole number of at least 1 "
                          "(the number of finished trials the study should end with).")
    if req.timeout is not None and req.timeout < 0:
        raise ConfigError(f"--timeout {req.timeout:g}: expected a number of seconds >= 0.")
    for flag, value, low in (("--keep-weights", req.run.keep_weights, 1),
                             ("--epochs", req.run.epochs, 1), ("--batch-size",
                             req.run.batch_size, 1), ("--fine-tune-epochs",
                             req.run.fine_tune_epochs, 0)):
        if value < low:
            raise ConfigError(f"{flag} {value}: expected a whole number of at least {low}.")
    if not 0.0 <= req.screen_fraction <= 1.0:
        raise ConfigError(f"--screen-fraction {req.screen_fraction:g}: expected a share from 0 "
                          "to 1 of the trials spent screening on cached features.")
    if req.heartbeat < 1 or (req.heartbeat_grace is not None
                             and req.heartbeat_grace <= req.heartbeat):
        grace = "" if req.heartbeat_grace is None else f" --heartbeat-grace {req.heartbeat_grace}"
        raise ConfigError(f"--heartbeat {req.heartbeat}{grace}: expected whole seconds, the "
                          "interval at least 1 and the grace period longer than the interval.")
    if not req.study or any(c in req.study for c in "/\\") or req.study.startswith("."):
        raise ConfigError(f"--study {req.study!r}: expected a plain name (no slashes).")
    _validate_driver(req)


DRIVERS = ("optuna", "keras-tuner")
KT_ALGORITHMS = ("random", "bayesian", "hyperband")


def _validate_driver(req: SearchRequest) -> None:
    """--driver and --algorithm go together: an algorithm only for keras-tuner."""
    if req.driver not in DRIVERS:
        raise ConfigError(f"--driver {req.driver!r}: expected one of {', '.join(DRIVERS)}.")
    if req.driver == "optuna" and req.algorithm is not None:
        raise ConfigError(f"--algorithm {req.algorithm}: only --driver keras-tuner takes an "
                          "algorithm; the Optuna driver always runs TPE with the staged schedule "
                          "(see --screen-fraction and --pruner).")
    if req.driver == "keras-tuner" and req.storage is not None:
        raise ConfigError(f"--storage {req.storage.split('://')[0]}...: the keras-tuner driver "
                          "runs one worker per study (its oracle state lives in one project "
                          "folder); use --driver optuna to share a study between workers.")
    if req.algorithm is not None and req.algorithm not in KT_ALGORITHMS:
        raise ConfigError(f"--algorithm {req.algorithm!r}: expected one of "
                          f"{', '.join(KT_ALGORITHMS)}.")


def driver_label(req: SearchRequest) -> str:
    """The driver flags a study is tied to, as the user types them."""
    if req.driver == "optuna":
        return "--driver optuna"
    return f"--driver keras-tuner --algorithm {req.algorithm or 'bayesian'}"


def usable_backbones(space: SearchSpace, resolver: Any) -> tuple[SearchSpace, list[str]]:
    """Drop backbones whose weights cannot be had here; WeightsError if none is left."""
    dropped: dict[str, str] = {}
    if resolver.explicit not in (None, "none") and len(space.backbones()) > 1:
        raise ConfigError(f"--weights {resolver.explicit}: one weights file fits one backbone, but "
                          f"{space.source} searches {', '.join(space.backbones())}. Fix the "
                          "backbone in the space, or use --weights-dir DIR with files named as "
                          "Keras names them.")
    sizes = sorted(set(space.params["image_size"].values()))
    for name in space.backbones():
        for size in sizes:  # some backbones have one weights file per input size
            try:
                resolver.resolve(get_spec(name), size, convert=False)
            except WeightsError as exc:
                dropped[name] = str(exc)
                break
    kept = [b for b in space.backbones() if b not in dropped]
    if not kept:
        reasons = " ".join(dropped.values())
        raise WeightsError(f"none of the backbones in {space.source} has weights here, so the "
                           f"search cannot start. {reasons}")
    if dropped:
        log.warning("dropping backbones without weights here: %s. Supply their Keras weights "
                    "files with --weights-dir DIR (or in ~/.keras/models), or remove them from "
                    "%s.", ", ".join(dropped), space.source)
    return (space.restrict_backbones(kept) if dropped else space), list(dropped)


def run_search(req: SearchRequest, echo: Callable[[str], None] = print,
               progress: SearchProgress | None = None) -> Any:
    """Validate, load, then run the Optuna (or keras-tuner) driver; returns the study.

    ``progress`` shows the run (default: one line per finished trial through ``echo``).
    """
    progress = progress if progress is not None else LineProgress(echo)
    echo = progress.note
    validate(req)
    space = SearchSpace.from_file(space_file(req.space))
    from automl.backbones.weights import WeightsResolver
    from automl.data.load import load_data

    resolver = WeightsResolver(req.run.weights, req.run.weights_dir, seed=req.run.seed)
    space, _ = usable_backbones(space, resolver)
    data = load_data(req.data, val_split=req.val_split, test_split=req.test_split,
                     seed=req.run.seed)

    import optuna

    from automl.search import leaderboard
    from automl.search.drivers import optuna_driver
    from automl.search.runner import DriverContext
    from automl.search.study import Heartbeat, artifact_root, open_study, safe_url
    from automl.trial.features import FeatureCache
    from automl.trial.run import InProcessRunner, SearchContext

    folder = study_dir(req.results, req.study)
    beat = None if req.storage is None else Heartbeat(
        req.heartbeat, req.heartbeat_grace or 3 * req.heartbeat)
    created: list[Any] = []
    study = open_study(Path(req.results), req.study, req.storage, create=True,
                       pruner=optuna_driver.make_pruner(req.pruner), heartbeat=beat,
                       on_create=created.append)
    _check_same_data(study, data, req)
    _check_same_driver(study, req)
    artifacts = artifact_root(req.results, req.study, req.artifacts, study, req.storage,
                              record=True)
    # a resumed search must not replay the same random start points, nor may two workers
    # started at once; with several workers, TPE imagines the running trials' results
    seed = req.run.seed + len(study.trials)
    if beat is not None:
        seed += zlib.crc32(optuna_driver.worker_name().encode()) % 100_003
    # the Optuna driver queues a new study's start trials; TPE's random start is not shortened
    # by them (a worker that joins before any trial finished counts the creator's too)
    planned = (optuna_driver.start_trials(space, req.trials, req.screen_fraction)
               if req.driver == "optuna" else [])
    start = (len(planned) if created or not optuna_driver.finished_count(study)
             else sum("start" in t.user_attrs for t in study.get_trials(deepcopy=False)))
    study.sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=beat is not None,
                                               n_startup_trials=TPE_STARTUP_TRIALS + start)
    # with a shared --storage another worker may be running a trial right now: leave it alone
    stale = optuna_driver.recover_stale(study) if req.storage is None else []
    if stale:
        echo(f"marked trial(s) {', '.join(map(str, stale))} as failed: they were left running "
             "by a process that stopped")
    cache = FeatureCache(folder / "features" if req.run.feature_cache else None,
                         req.run.cache_memory_mb * 1024 * 1024)
    trial_ctx = SearchContext(data, req.run, resolver, cache, artifacts)
    if req.in_process:
        runner = InProcessRunner(trial_ctx)
    else:
        from automl.search.worker import TrialWorker

        runner = TrialWorker.for_context(trial_ctx)
    ctx = DriverContext(req.run, artifacts, runner)
    done = optuna_driver.finished_count(study)
    where = safe_url(req.storage) if req.storage else folder
    echo(f"study '{req.study}' in {where}: {done} of {req.trials} trials finished; data: "
         f"{data.source} ({len(data.train)} train / {len(data.validation)} validation / "
         f"{len(data.test) if data.test else 0} test images, {len(data.class_names)} classes)")

    def on_trial_end(study: Any, trial: Any) -> None:
        board = leaderboard.from_study(study, artifacts)
        _keep_best_weights(board, ctx.trials_dir, req.run.keep_weights, _in_use(study))
        board = leaderboard.from_study(study, artifacts)
        leaderboard.write_csv(board, folder / "leaderboard.csv")
        progress.trial_end(_trial_end(trial, board, optuna_driver.finished_count(study)))

    best = leaderboard.best_row(leaderboard.from_study(study, artifacts))
    progress.start(req.trials, done, timeout=req.timeout,
                   max_epochs=(req.run.epochs, req.run.fine_tune_epochs),
                   best=None if best is None else (float(best["val_accuracy"]),
                                                   int(best["trial"])))
    try:
        if req.driver == "keras-tuner":
            from automl.search.drivers import kerastuner_driver

            kerastuner_driver.run(space, ctx, study, algorithm=req.algorithm or "bayesian",
                                  n_trials=req.trials, timeout=req.timeout,
                                  on_trial_end=on_trial_end,
                                  project_dir=folder / "keras_tuner")
        else:
            optuna_driver.run(space, ctx, study, n_trials=req.trials, timeout=req.timeout,
                              on_trial_end=on_trial_end, screen_fraction=req.screen_fraction,
                              progress=progress, queue=planned if created else [])
    finally:
        runner.stop()  # idle after the last trial (Ctrl-C has killed it already)
        progress.close()
    board = leaderboard.from_study(study, artifacts)
    leaderboard.write_csv(board, folder / "leaderboard.csv")
    return study


def _check_same_data(study: Any, data: Any, req: SearchRequest) -> None:
    """Record the data on a new study; refuse to mix data sets in one study."""
    where = req.data
    if where is not None and Path(where).expanduser().exists():
        where = str(Path(where).expanduser().resolve())  # export may run from another folder
    meta = {"source": data.source, "data": where, "fingerprint": data.fingerprint,
            "val_split": req.val_split, "test_split": req.test_split, "seed": req.run.seed}
    known = study.user_attrs.get("data")
    if known is None:
        study.set_user_attr("data", meta)
        study.set_user_attr("class_names", list(data.class_names))
    elif known.get("fingerprint") != data.fingerprint:
        raise ConfigError(
            f"study '{req.study}' was run on {known.get('source')} (split seed "
            f"{known.get('seed')}, val {known.get('val_split')}, test {known.get('test_split')}); "
            f"this run's data ({data.source}) differs. Use another --study name, or the same "
            "data, seed and splits to resume it.")


def _check_same_driver(study: Any, req: SearchRequest) -> None:
    """Record the driver on a new study; refuse to resume it with another driver or algorithm.

    The Optuna driver's staged schedule reads its own trials' stages and TPE history, and
    keras-tuner's oracle state lives in its project folder and knows only its own trials: a
    study mixing them would follow neither algorithm, so it keeps the driver it started with.
    """
    label = driver_label(req)
    known = study.user_attrs.get("driver")
    if known is None and study.trials:
        known = "--driver optuna"  # studies from before the keras-tuner driver
    if known is None:
        study.set_user_attr("driver", label)
    elif known != label:
        raise ConfigError(f"study '{req.study}' was searched with {known}; this run asks for "
                          f"{label}. A study keeps the driver it started with: resume it with "
                          f"{known}, or start a new study with --study NAME.")


def _in_use(study: Any) -> set[int]:
    """Trials whose head weights a running or queued refinement trial still needs."""
    import optuna

    states = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    return {int(t.user_attrs["refines"]) for t in study.get_trials(deepcopy=False, states=states)
            if t.user_attrs.get("refines") is not None}


def _keep_best_weights(board: Any, trials_dir: Path, keep: int,
                       in_use: Collection[int] = ()) -> None:
    """Delete kept weights of finished trials outside the best ``keep`` (and not in use).

    Safe with several workers: a trial outside the best ``keep`` finished ones never gets back
    in, only COMPLETE trials are touched (a running trial's folder never), and a screened
    trial that a running refinement builds on keeps its head weights.
    """
    done = board[board["state"] == "COMPLETE"]
    for number in done["trial"].iloc[keep:]:
        if int(number) in in_use:
            continue
        folder = trials_dir / f"trial_{int(number):04d}"
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)


def _trial_end(trial: Any, board: Any, finished: int) -> TrialEnd:
    """How an Optuna trial ended, for the progress view."""
    state = trial.user_attrs.get("state_detail", trial.state.name) if trial.state.name == "FAIL" \
        else trial.state.name
    detail = (f"at epoch {max(trial.intermediate_values or {0: 0})}" if state == "PRUNED"
              else trial.user_attrs.get("reason", ""))
    best = board[board["state"] == "COMPLETE"]
    top = None if best.empty else best.iloc[0]
    return TrialEnd(trial.number, state, finished, val_accuracy=trial.value, detail=detail,
                    best_value=None if top is None else float(top["val_accuracy"]),
                    best_trial=None if top is None else int(top["trial"]),
                    params=trial.user_attrs.get("config", {}))
