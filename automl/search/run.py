"""Run a search: validate the request, prepare it, let its driver run trials, write the board.

``run_search`` = ``validate`` -> ``prepare`` -> the driver's ``search`` -> the final leaderboard.
``prepare`` does what every driver needs (space, weights, data, the study and its checks, who
runs trials); the driver sets up its own algorithm (the Optuna driver its TPE sampler, pruner and
start trials; the keras-tuner driver its oracle and project).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from automl.backbones.registry import get_spec
from automl.config import RunConfig, study_dir
from automl.errors import ConfigError, WeightsError
from automl.search.cost import Limits
from automl.search.progress import LineProgress, SearchProgress, TrialEnd
from automl.search.record import (
    SCHEMA_VERSION,
    StudyRecord,
    TrialRecord,
    shown_state,
    write_study,
)
from automl.search.request import (
    DRIVERS,
    KT_ALGORITHMS,
    SearchRequest,
    SearchSetup,
    driver_label,
    validate,
)
from automl.space import SearchSpace, space_file
from automl.trust.leakage import THUMBNAIL_THRESHOLD

__all__ = ["DRIVERS", "KT_ALGORITHMS", "SearchRequest", "SearchSetup", "driver_label", "prepare",
           "run_search", "usable_backbones", "validate"]
log = logging.getLogger("automl")


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
    """Validate, prepare, then run the Optuna (or keras-tuner) driver; returns the study.

    ``progress`` shows the run (default: one line per finished trial through ``echo``).
    """
    progress = progress if progress is not None else LineProgress(echo)
    validate(req)
    setup = prepare(req, progress.note)
    sizes = None
    try:
        _announce(setup, progress)
        sizes = setup.ctx.sizes = _background_sizes(setup)
        _driver(req.driver).search(setup, _on_trial_end(setup, progress, sizes), progress)
        if sizes is not None:
            sizes.finish(setup.study, progress.note)
    finally:
        setup.ctx.runner.stop()  # idle after the last trial (Ctrl-C has killed it already)
        if sizes is not None:
            sizes.stop()
        progress.close()
    board = _write_board(setup)
    if req.limits.any and (board["state"] == "COMPLETE").sum() == 0:
        echo(_none_feasible(board, req.limits))
    return setup.study


def prepare(req: SearchRequest, note: Callable[[str], None] = print) -> SearchSetup:
    """Everything a driver starts from: the space (backbones with weights here), the data, the
    study (created, or checked to hold this data and driver; trials a stopped process left
    running closed, said through ``note``) and the runner of trials. Nothing is trained."""
    early = None
    if not req.in_process:  # TensorFlow's import in the trial worker overlaps what follows
        from automl.search.worker import TrialWorker

        early = TrialWorker.start_early()
    try:
        return _prepare(req, note, early)
    except BaseException:
        if early is not None:
            early.stop(kill=True)
        raise


def _prepare(req: SearchRequest, note: Callable[[str], None], early: Any) -> SearchSetup:
    from automl.backbones.weights import WeightsResolver
    from automl.data.load import load_data
    from automl.search.drivers.optuna_driver import recover_stale
    from automl.search.runner import DriverContext
    from automl.search.study import artifact_root

    space = SearchSpace.from_file(space_file(req.space))
    resolver = WeightsResolver(req.run.weights, req.run.weights_dir, seed=req.run.seed)
    space, _ = usable_backbones(space, resolver)
    data = load_data(req.data, val_split=req.val_split, test_split=req.test_split,
                     seed=req.run.seed)
    _warn_leak(data, note)
    study, created = _open_study(req, data)
    artifacts = artifact_root(req.results, req.study, req.artifacts, study, req.storage,
                              record=True)
    # with a shared --storage another worker may be running a trial right now: leave it alone
    stale = recover_stale(study) if req.storage is None else []
    if stale:
        note(f"marked trial(s) {', '.join(map(str, stale))} as failed: they were left running "
             "by a process that stopped")
    folder = study_dir(req.results, req.study)
    # activations at the cuts the space can fine-tune from are cached in the same pass
    run = dataclasses.replace(req.run, cut_depths=space.cut_depths())
    _check_same_limits(study, req)
    ctx = DriverContext(run, artifacts, _runner(req, run, data, resolver, artifacts, folder, early),
                        req.limits)
    return SearchSetup(req, space, data, study, created, folder, artifacts, ctx)


LEAK_SHARE = 100  # warn when at least 1 in this many test images has a copy in train


def leak_message(data: Any, leaks: Any = None) -> str | None:
    """What to warn when at least 1% of the test split copies training images, byte-identical
    (content hashes) or nearly (grey thumbnails, :mod:`automl.data.twins`; no TensorFlow),
    else None. ``leaks``: :func:`automl.data.twins.count_leaks` of ``data`` if counted already."""
    from automl.data.twins import count_leaks

    leaks = leaks if leaks is not None else count_leaks(data)
    if leaks is None or leaks.copies == 0 or LEAK_SHARE * leaks.copies < leaks.images:
        return None
    share = f"{leaks.copies / leaks.images:.1%}"
    near = f"grey thumbnails with cosine >= {THUMBNAIL_THRESHOLD}: resized or re-encoded"
    if not leaks.near:
        what = "are byte-identical to a training image"
    elif not leaks.exact:
        what = f"are near copies of a training image ({near})"
    else:
        what = (f"copy a training image ({leaks.exact} byte-identical, {leaks.near} near "
                f"copies: {near})")
    given = ("automl carved the test split, keeping only byte-identical images together"
             if "test" in data.carved else "the splits came with the data and are used as given")
    return (f"{leaks.copies} of the {leaks.images} test images ({share}) {what}, so the test "
            f"accuracy is inflated; {given}. `automl inspect` lists them.")


def _warn_leak(data: Any, note: Callable[[str], None]) -> None:
    """One ``warning:`` line (a DataWarning) for :func:`leak_message`, every run; a ``note``
    when near copies were not checked (too many image files to decode)."""
    import warnings

    from automl.data.load import DataWarning
    from automl.data.twins import NEAR_FILES_MAX, NEAR_PIXELS_MAX, count_leaks

    leaks = count_leaks(data)
    message = leak_message(data, leaks)
    if message is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("always", DataWarning)  # every search says it, not only one
            warnings.warn(message, DataWarning, stacklevel=2)
    if leaks is not None and leaks.near is None:
        note(f"near copies of training images in the test split were not checked: too many "
             f"image files to decode as the search starts (more than {NEAR_FILES_MAX} or "
             f"{NEAR_PIXELS_MAX / 1e6:.0f} megapixels); `automl inspect` finds them")


def _open_study(req: SearchRequest, data: Any) -> tuple[Any, bool]:
    """The request's study (and whether this call created it), checked against data and driver."""
    from automl.search.study import Heartbeat, open_study

    beat = None if req.storage is None else Heartbeat(
        req.heartbeat, req.heartbeat_grace or 3 * req.heartbeat)
    created: list[Any] = []
    study = open_study(Path(req.results), req.study, req.storage, create=True, heartbeat=beat,
                       on_create=created.append)
    _check_same_data(study, data, req)
    _check_same_driver(study, req)
    return study, bool(created)


def _runner(req: SearchRequest, run: RunConfig, data: Any, resolver: Any, artifacts: Path,
            folder: Path, early: Any = None) -> Any:
    """Who runs the trials: a recycled worker process (``early``: one started already), or
    (``--in-process``) this process."""
    from automl.trial.features import FeatureCache
    from automl.trial.run import InProcessRunner, SearchContext

    cache = FeatureCache(folder / "features" if run.feature_cache else None,
                         run.cache_memory_mb * 1024 * 1024)
    trial_ctx = SearchContext(data, run, resolver, cache, artifacts)
    if req.in_process:
        return InProcessRunner(trial_ctx)
    if early is not None:
        return early.configure(trial_ctx)
    from automl.search.worker import TrialWorker

    return TrialWorker.for_context(trial_ctx)


def _background_sizes(setup: SearchSetup) -> Any:
    """Without limits the ``.tflite`` sizes are only for the leaderboard: convert the space's
    backbones this machine has no size of in the background (``automl.search.sizes``), while
    trials run. With limits (a size is needed before training) the trial worker converts.
    None: nothing to convert, or no trial to run."""
    from automl.search.drivers.optuna_driver import finished_count
    from automl.search.sizes import BackgroundSizes, fill, unsized

    req, n = setup.req, len(setup.data.class_names)
    if req.driver != "optuna" or req.limits.any:
        return None
    fill(setup.study, n)  # sizes converted since an earlier run stopped
    # no trial to run: only what an earlier run left blank (it was stopped while it waited)
    backbones = (setup.space.backbones() if finished_count(setup.study) < req.trials
                 else unsized(setup.study, n))
    smallest = min(int(s) for s in setup.space.params["image_size"].values())
    return BackgroundSizes.start(backbones, smallest, n)


def _announce(setup: SearchSetup, progress: SearchProgress) -> None:
    """The study, its finished trials and the data in one line; then the progress view starts."""
    from automl.search import leaderboard
    from automl.search.drivers.optuna_driver import finished_count
    from automl.search.study import safe_url

    req, data = setup.req, setup.data
    done = finished_count(setup.study)
    where = safe_url(req.storage) if req.storage else setup.folder
    progress.note(f"study '{req.study}' in {where}: {done} of {req.trials} trials finished; "
                  f"data: {data.source} ({len(data.train)} train / {len(data.validation)} "
                  f"validation / {len(data.test) if data.test else 0} test images, "
                  f"{len(data.class_names)} classes)")
    best = leaderboard.best_row(leaderboard.from_study(setup.study, setup.artifacts))
    progress.start(req.trials, done, timeout=req.timeout,
                   max_epochs=(req.run.epochs, req.run.fine_tune_epochs),
                   best=None if best is None else (float(best["val_accuracy"]),
                                                   int(best["trial"])))


def _driver(name: str) -> Any:
    """The driver module behind --driver (keras-tuner's imports Keras: only when asked for)."""
    if name == "keras-tuner":
        from automl.search.drivers import kerastuner_driver

        return kerastuner_driver
    from automl.search.drivers import optuna_driver

    return optuna_driver


def _on_trial_end(setup: SearchSetup, progress: SearchProgress,
                  sizes: Any = None) -> Callable[[Any, Any], None]:
    """After every trial: keep the best trials' weights, rewrite the leaderboard, report it
    (with the ``.tflite`` sizes ``sizes``, the background conversions, sent since)."""
    from automl.search import leaderboard
    from automl.search.drivers.optuna_driver import finished_count

    def on_trial_end(study: Any, trial: Any) -> None:
        if sizes is not None:  # begun after the first trial: the first result comes first
            sizes.begin()
            sizes.fill(study)
        board = leaderboard.from_study(study, setup.artifacts)
        _keep_best_weights(board, setup.ctx.trials_dir, setup.req.run.keep_weights,
                           _in_use(study))
        board = leaderboard.from_study(study, setup.artifacts)
        leaderboard.write_csv(board, setup.folder / "leaderboard.csv")
        progress.trial_end(_trial_end(trial, board, finished_count(study)))

    return on_trial_end


def _write_board(setup: SearchSetup) -> Any:
    from automl.search import leaderboard
    from automl.search.sizes import fill

    fill(setup.study, len(setup.data.class_names))  # sizes this machine converted meanwhile
    board = leaderboard.from_study(setup.study, setup.artifacts)
    leaderboard.write_csv(board, setup.folder / "leaderboard.csv")
    return board


def _none_feasible(board: Any, limits: Limits) -> str:
    """What to say when no trial finished within the limits: the cheapest one measured."""
    said = f"no trial finished within {limits.describe()}"
    measured = board[board["latency_ms"].notna()]
    if measured.empty:
        return f"{said}; the leaderboard lists the trials."
    fastest = measured.loc[measured["latency_ms"].astype(float).idxmin()]
    smallest = measured.loc[measured["size_mb"].astype(float).idxmin()]
    return (f"{said}: the fastest architecture measured ({fastest['backbone']} at "
            f"{int(fastest['image_size'])} px) takes {float(fastest['latency_ms']):.2f} ms, the "
            f"smallest is {float(smallest['size_mb']):.2f} MB. Raise the limits or search smaller "
            "backbones and image sizes; the leaderboard lists the infeasible trials.")


def _check_same_data(study: Any, data: Any, req: SearchRequest) -> None:
    """Record the data on a new study; refuse to mix data sets in one study."""
    where = req.data
    if where is not None and Path(where).expanduser().exists():
        where = str(Path(where).expanduser().resolve())  # export may run from another folder
    meta = {"source": data.source, "data": where, "fingerprint": data.fingerprint,
            "val_split": req.val_split, "test_split": req.test_split, "seed": req.run.seed}
    known = StudyRecord.of(study).data
    if known is None:
        write_study(study, schema=SCHEMA_VERSION, data=meta,
                    class_names=list(data.class_names))
    elif known.get("fingerprint") != data.fingerprint:
        raise ConfigError(
            f"study '{req.study}' was run on {known.get('source')} (split seed "
            f"{known.get('seed')}, val {known.get('val_split')}, test {known.get('test_split')}); "
            f"this run's data ({data.source}) differs. Use another --study name, or the same "
            "data, seed and splits to resume it.")


def _check_same_limits(study: Any, req: SearchRequest) -> None:
    """Record the cost limits on a new study; refuse to resume it with others.

    A trial's constraints are set when it runs, and TPE learns from them: a study whose limits
    changed would mix trials judged by different rules (and export could pick a trial over the
    new limits), so a study keeps the limits it started with.
    """
    limits = req.limits.as_dict()
    known = StudyRecord.of(study).limits
    if known is None and not study.trials:
        write_study(study, limits=limits)
        return
    known = known or {}
    if known != limits:
        def said(d: dict[str, float]) -> str:
            return Limits(**d).describe() or "no cost limits"
        raise ConfigError(f"study '{req.study}' was started with {said(known)}; this run asks for "
                          f"{said(limits)}. A study keeps its limits: resume it with the same "
                          "flags, or start a new study with --study NAME.")


def _check_same_driver(study: Any, req: SearchRequest) -> None:
    """Record the driver on a new study; refuse to resume it with another driver or algorithm.

    The Optuna driver's staged schedule reads its own trials' stages and TPE history, and
    keras-tuner's oracle state lives in its project folder and knows only its own trials: a
    study mixing them would follow neither algorithm, so it keeps the driver it started with.
    """
    label = driver_label(req)
    known = StudyRecord.of(study).driver
    if known is None and study.trials:
        known = "--driver optuna"  # studies from before the keras-tuner driver
    if known is None:
        write_study(study, driver=label)
    elif known != label:
        raise ConfigError(f"study '{req.study}' was searched with {known}; this run asks for "
                          f"{label}. A study keeps the driver it started with: resume it with "
                          f"{known}, or start a new study with --study NAME.")


def _in_use(study: Any) -> set[int]:
    """Trials whose head weights a running or queued refinement trial still needs."""
    import optuna

    states = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    records = (TrialRecord.of(t) for t in study.get_trials(deepcopy=False, states=states))
    return {int(rec.refines) for rec in records if rec.refines is not None}


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
    rec = TrialRecord.of(trial)
    state = shown_state(trial.state.name, rec)
    detail = (f"at epoch {max(trial.intermediate_values or {0: 0})}" if state == "PRUNED"
              else rec.reason)
    best = board[board["state"] == "COMPLETE"]
    top = None if best.empty else best.iloc[0]
    return TrialEnd(trial.number, state, finished, val_accuracy=trial.value, detail=detail,
                    best_value=None if top is None else float(top["val_accuracy"]),
                    best_trial=None if top is None else int(top["trial"]),
                    params=rec.config)
