"""What a search is asked for, the checks it needs no file for, and what preparing it yields.

``SearchRequest`` is everything ``automl search`` was asked for; ``validate`` refuses flags that
are wrong or do not go together (the library's rules: the CLI only parses); ``SearchSetup`` is
what ``automl.search.run.prepare`` made of a request, and what a driver's ``search`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl.config import RunConfig
from automl.errors import ConfigError
from automl.search.cost import Limits, check_limits
from automl.search.runner import DriverContext
from automl.space import SearchSpace

DRIVERS = ("optuna", "keras-tuner")
KT_ALGORITHMS = ("random", "bayesian", "hyperband")
PRUNERS = ("median", "hyperband", "halving", "none")
DEFAULT_PRUNER = "median"
DEFAULT_SCREEN_FRACTION = 0.8
DEFAULT_KT_ALGORITHM = "bayesian"


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
    pruner: str | None = None            # --driver optuna only; None: median
    screen_fraction: float | None = None  # --driver optuna only; None: 0.8
    val_split: float = 0.15
    test_split: float = 0.15
    run: RunConfig = RunConfig()
    artifacts: str | None = None     # kept weights; default <results>/<study>/trials
    heartbeat: int = 60              # with --storage: seconds between a worker's heartbeats
    heartbeat_grace: int | None = None   # silent this long -> failed and retried (3 beats)
    driver: str = "optuna"           # or "keras-tuner"
    algorithm: str | None = None     # keras-tuner only: random, bayesian (default), hyperband
    in_process: bool = False         # run trials here instead of in a recycled worker process
    limits: Limits = Limits()        # --max-latency-ms / --max-size-mb (Optuna driver only)

    @property
    def pruner_or_default(self) -> str:
        """The Optuna pruner's name (``--pruner``, default median)."""
        return self.pruner or DEFAULT_PRUNER

    @property
    def screen_fraction_or_default(self) -> float:
        """The share of trials spent screening (``--screen-fraction``, default 0.8)."""
        return DEFAULT_SCREEN_FRACTION if self.screen_fraction is None else self.screen_fraction

    @property
    def algorithm_or_default(self) -> str:
        """keras-tuner's algorithm (``--algorithm``, default bayesian)."""
        return self.algorithm or DEFAULT_KT_ALGORITHM


def validate(req: SearchRequest) -> None:
    """Flag checks that need no file."""
    if req.driver not in DRIVERS:
        raise ConfigError(f"--driver {req.driver!r}: expected one of {', '.join(DRIVERS)}.")
    _refuse_optuna_flags(req)
    if req.trials < 1:
        raise ConfigError(f"--trials {req.trials}: expected a whole number of at least 1 "
                          "(the number of finished trials the study should end with).")
    if req.timeout is not None and req.timeout < 0:
        raise ConfigError(f"--timeout {req.timeout:g}: expected a number of seconds >= 0.")
    for flag, value, low in (("--keep-weights", req.run.keep_weights, 1),
                             ("--epochs", req.run.epochs, 1), ("--batch-size",
                             req.run.batch_size, 1), ("--fine-tune-epochs",
                             req.run.fine_tune_epochs, 0), ("--augment-views",
                             req.run.augment_views, 0)):
        if value < low:
            raise ConfigError(f"{flag} {value}: expected a whole number of at least {low}.")
    fraction = req.screen_fraction_or_default
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"--screen-fraction {fraction:g}: expected a share from 0 "
                          "to 1 of the trials spent screening on cached features.")
    if req.heartbeat < 1 or (req.heartbeat_grace is not None
                             and req.heartbeat_grace <= req.heartbeat):
        grace = "" if req.heartbeat_grace is None else f" --heartbeat-grace {req.heartbeat_grace}"
        raise ConfigError(f"--heartbeat {req.heartbeat}{grace}: expected whole seconds, the "
                          "interval at least 1 and the grace period longer than the interval.")
    if not req.study or any(c in req.study for c in "/\\") or req.study.startswith("."):
        raise ConfigError(f"--study {req.study!r}: expected a plain name (no slashes).")
    _validate_driver(req)
    check_limits(req.limits)


def _refuse_optuna_flags(req: SearchRequest) -> None:
    """--pruner and --screen-fraction belong to the Optuna driver's schedule."""
    if req.driver == "optuna":
        return
    if req.limits.any:
        raise ConfigError(f"{req.limits.describe()}: cost limits apply to --driver optuna only "
                          "(it measures each architecture before training and records the "
                          "infeasible ones as Optuna constraints); keras-tuner's oracles have no "
                          "constraints.")
    for flag, value in (("--pruner", req.pruner), ("--screen-fraction", req.screen_fraction)):
        if value is not None:
            raise ConfigError(f"{flag} applies to --driver optuna only; keras-tuner's "
                              "algorithms schedule trials themselves (--algorithm hyperband "
                              "stops weak configurations early).")


def _validate_driver(req: SearchRequest) -> None:
    """--driver and --algorithm go together: an algorithm only for keras-tuner."""
    if req.pruner is not None and req.pruner not in PRUNERS:
        raise ConfigError(f"--pruner {req.pruner!r}: expected one of {', '.join(PRUNERS)}.")
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
    return f"--driver keras-tuner --algorithm {req.algorithm_or_default}"


@dataclass(frozen=True)
class SearchSetup:
    """A prepared search: what every driver starts from (nothing trained yet)."""

    req: SearchRequest
    space: SearchSpace       # the request's space, without backbones that have no weights here
    data: Any                # automl.data.splits.Datasets
    study: Any               # the optuna.Study, checked against this request's data and driver
    created: bool            # this process created the study (it queues the start trials)
    folder: Path             # results/<study>: leaderboard.csv, features/, keras_tuner/
    artifacts: Path          # the artifact root kept weights go under
    ctx: DriverContext       # run settings, kept-weights folder, who runs trials

    @property
    def shared(self) -> bool:
        """Whether workers share the study through --storage (heartbeats on)."""
        return self.req.storage is not None
