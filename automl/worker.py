"""Trials in a child process, so TensorFlow's memory goes back to the system between trials.

Keras and TensorFlow keep memory from trial to trial that ``clear_session`` does not give back
(graph and function caches, allocator fragmentation): over 50 trials in one process, resident
memory outside the bounded caches grew by about 600 MB. So trials run in a worker process that
lives across trials (starting TensorFlow costs seconds) and is replaced right after a trial that
left its memory outside the caches more than ``max_growth_mb`` above the lightest trial's. A
"light" trial trained a head on cached activations only; a "heavy" one ran the backbone over
images or fine-tuned its top, after which oneDNN keeps about 550 MB. So the floor is the lightest
light trial's; the first heavy trial (no floor yet) replaces its worker; while no trial has been
light (e.g. no feature cache), the lightest heavy trial's memory is the floor.

The search process keeps Optuna, the leaderboard and the progress view; the worker holds the
data, the feature cache (its files are shared through the disk) and the models. After every
epoch the worker asks whether to go on (pruning). Ctrl-C stops the worker with the search; a
worker that dies (out of memory, a crash in native code) fails its trial, not the search.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from automl.config import RunConfig, TrialConfig
from automl.data import image_cache_dir
from automl.errors import AutoMLError, ConfigError, DataError, TrialFailed, WeightsError

log = logging.getLogger("automl")
#: Memory outside the caches a worker may hold above the lightest trial's before it is replaced.
MAX_GROWTH_MB = 200.0
_START_TIMEOUT = 300.0  # seconds for a new worker to import TensorFlow and say it is ready
_ERRORS: dict[str, type[AutoMLError]] = {
    cls.__name__: cls for cls in (ConfigError, DataError, WeightsError, TrialFailed)}


@dataclass(frozen=True)
class Memory:
    """A worker's resident memory after a trial, and how much of it its caches hold (MB)."""

    rss_mb: float
    cache_mb: float

    @property
    def outside_caches_mb(self) -> float:
        return self.rss_mb - self.cache_mb


@dataclass(frozen=True)
class _Setup:
    """What a worker needs to rebuild the search context (all of it picklable)."""

    data: Any            # automl.data.Datasets (its resized-image caches are not sent)
    run: RunConfig
    trials_dir: Path
    cache_dir: Path | None
    cache_bytes: int
    log_level: int
    parent_pid: int
    image_cache_dir: str | None  # made by the search process for folder data only


class _Stop(Exception):  # noqa: N818 - a signal, not an error
    """The search process said to stop this trial (pruned)."""


class TrialWorker:
    """Runs trials one at a time in a child process, replacing it when its memory has grown."""

    def __init__(self, setup: _Setup, max_growth_mb: float = MAX_GROWTH_MB) -> None:
        self._setup = setup
        self.max_growth_mb = max_growth_mb
        self._proc: Any = None
        self._conn: Any = None
        self._ready = False
        self.floor_mb: float | None = None    # least memory outside caches after a light trial
        self.heavy_floor_mb: float | None = None  # the same over heavy trials (none light yet)
        self.memory: Memory | None = None     # after the last trial (None: it did not end)
        self.started = 0                      # worker processes started so far
        self.last_pid: int | None = None      # the process that ran the last trial

    @classmethod
    def for_context(cls, ctx: Any, max_growth_mb: float = MAX_GROWTH_MB) -> TrialWorker:
        """A worker that runs trials as ``run_trial`` would with ``ctx``."""
        cache = ctx.cache
        setup = _Setup(ctx.data, ctx.run, Path(ctx.trials_dir), cache.directory,
                       cache.max_bytes, logging.getLogger("automl").getEffectiveLevel(),
                       os.getpid(), image_cache_dir() if _has_files(ctx.data) else None)
        return cls(setup, max_growth_mb)

    @property
    def pid(self) -> int | None:
        """The running worker's process id (None before the first trial or after a stop)."""
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def run(self, config: TrialConfig, run: RunConfig, number: int,
            reporter: Callable[[int, dict[str, float]], None] | None, train_log: Any,
            warm: Any = None) -> Any:
        """``run_trial`` in the worker: same result, same exceptions, ``train_log`` filled in.

        An exception the reporter raises (``optuna.TrialPruned``) stops the trial in the worker
        and is raised here; KeyboardInterrupt stops the worker.
        """
        self._ensure_started()
        self.memory, self.last_pid = None, self._proc.pid
        try:
            self._send(("trial", config, run, number, warm), number)
            while True:
                msg = self._receive(number)
                if msg[0] != "epoch":
                    break
                _, epoch, row, epochs = msg
                train_log.epochs[:] = epochs
                try:
                    if reporter is not None:
                        reporter(epoch, row)
                except Exception:  # pruned: the worker stops the trial and stays
                    self._send("stop", number)
                    end = self._receive(number)
                    self._finish(end, train_log)
                    raise
                self._send("go", number)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self.stop(kill=True)  # Ctrl-C: the trial is abandoned mid-epoch
            raise
        self._finish(msg, train_log)
        if msg[0] == "done":
            return msg[1]
        _, kind, message = msg[:3]
        if len(msg) > 4:  # an unexpected exception: its traceback for --debug
            log.debug("trial %d failed in the trial worker:\n%s", number, msg[3])
        raise _ERRORS.get(kind, TrialFailed)(message)

    def stop(self, kill: bool = False) -> None:
        """Stop the worker process (``kill``: at once, mid-trial); the next trial starts anew."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is not None and kill:
            proc.kill()
        if conn is not None and not kill:
            try:
                conn.send(("close",))
            except OSError:
                pass
        if proc is not None:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
        if conn is not None:
            conn.close()

    close = stop

    # -- inside ------------------------------------------------------------------------------

    def _ensure_started(self) -> Any:
        """The running worker, started now if there is none, once it has said it is ready."""
        if self._proc is None or not self._proc.is_alive():
            self._spawn()
        if not self._ready:
            if not self._conn.poll(_START_TIMEOUT):  # TensorFlow's import takes seconds
                self.stop(kill=True)
                raise TrialFailed(f"the trial worker process did not start within "
                                  f"{_START_TIMEOUT:.0f} s")
            self._receive(None)  # "ready"
            self._ready = True
        return self._conn

    def _spawn(self) -> None:
        """Start a worker process without waiting for it (it imports TensorFlow meanwhile)."""
        self.stop()
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        proc = context.Process(target=_serve, args=(child, self._setup), daemon=True,
                               name="automl-trial-worker")
        with _sigint_ignored():  # inherited: Ctrl-C during its start prints no traceback there
            proc.start()
        child.close()
        self._proc, self._conn, self._ready = proc, parent, False
        self.started += 1

    def _send(self, msg: Any, number: int) -> None:
        try:
            self._conn.send(msg)
        except OSError:
            self._died(number)

    def _receive(self, number: int | None) -> tuple:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            self._died(number)

    def _died(self, number: int | None) -> NoReturn:
        """The worker process is gone: fail the trial with the reason."""
        proc = self._proc
        if proc is not None:
            proc.join(timeout=10)
        code = None if proc is None else proc.exitcode
        self.stop(kill=True)
        raise TrialFailed(_death(code, number)) from None

    def _finish(self, msg: tuple, train_log: Any) -> None:
        """Take over the trial's log and the worker's memory; replace a worker that grew."""
        epochs, best_phase, seconds, memory, heavy = msg[-1]
        train_log.epochs[:] = epochs
        train_log.best_phase, train_log.seconds = best_phase, seconds
        self.memory = memory
        outside = memory.outside_caches_mb
        train_log.heavy = heavy
        if not heavy:
            self.floor_mb = outside if self.floor_mb is None else min(self.floor_mb, outside)
        reference = self.floor_mb if self.floor_mb is not None else self.heavy_floor_mb
        if reference is None:
            grown = heavy  # the first trial ran the backbone: its buffers would stay; once
        else:
            grown = outside - reference > self.max_growth_mb
        if heavy:
            self.heavy_floor_mb = outside if self.heavy_floor_mb is None else min(
                self.heavy_floor_mb, outside)
        if grown:
            log.debug("trial worker %s holds %.0f MB outside its caches (lightest trial: %s MB): "
                      "replaced", self.pid, outside, self.floor_mb)
            self._spawn()  # now: its start overlaps the search's bookkeeping


def _has_files(data: Any) -> bool:
    """Whether any split streams image files (whose decoded copies go to a temp folder)."""
    return any(split.paths is not None for split in data.splits().values())


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while starting a process (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _death(code: int | None, number: int | None) -> str:
    """Why the worker process is gone, for the trial's reason."""
    what = "the trial worker process" + (f" running trial {number}" if number is not None else "")
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory? the system kills the largest process)" if name == "SIGKILL" \
            else ""
        return f"{what} was killed by {name}{hint}"
    return f"{what} exited unexpectedly (exit code {code})"


# ----------------------------------------------------------------------------- the worker side

def _serve(conn: Any, setup: _Setup) -> None:
    """The worker process: build the context once, then run trials until told to close."""
    _die_with_parent(setup.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the search process's to handle
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("automl").setLevel(setup.log_level)
    from automl.cli import quiet_tensorflow

    quiet_tensorflow()
    if setup.image_cache_dir is not None:
        image_cache_dir(setup.image_cache_dir)
    from automl.features import FeatureCache
    from automl.objective import SearchContext, run_trial
    from automl.trainlog import TrainLog
    from automl.weights import WeightsResolver

    run = setup.run
    ctx = SearchContext(setup.data, run, WeightsResolver(run.weights, run.weights_dir,
                                                         seed=run.seed),
                        FeatureCache(setup.cache_dir, setup.cache_bytes), setup.trials_dir)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] != "trial":
            return
        _, config, trial_run, number, warm = msg
        train_log = TrainLog()

        def reporter(epoch: int, row: dict[str, float], epochs: list = train_log.epochs) -> None:
            conn.send(("epoch", epoch, row, list(epochs)))
            if conn.recv() != "go":
                raise _Stop

        reply: tuple
        try:
            result = run_trial(config, dataclasses.replace(ctx, run=trial_run), number,
                               reporter, train_log, warm)
            reply = ("done", result)
        except _Stop:
            reply = ("stopped",)
        except AutoMLError as exc:
            reply = ("error", type(exc).__name__, str(exc))
        except Exception as exc:  # out of memory, a backbone that breaks at this size, ...
            text = str(exc).splitlines()[0][:300] if str(exc) else ""
            reply = ("error", "TrialFailed", f"{type(exc).__name__}: {text}" if text
                     else type(exc).__name__, traceback.format_exc())
        cached = trial_run.feature_cache and config.augmentation == "none"
        _release(ctx, cached)
        state = (list(train_log.epochs), train_log.best_phase, train_log.seconds, _memory(ctx),
                 train_log.heavy)
        conn.send((*reply, state))


def _release(ctx: Any, cached: bool) -> None:
    """After a trial: free its model and TensorFlow state now, not at the next trial's start.

    A trial on cached activations needed the resized images only to extract them, and
    resizing again costs well under a second, so they go too; trials that train on images
    (augmentation, no feature cache) keep them for the next such trial.
    """
    from automl.model import reset_keras

    if cached:
        ctx.data.drop_resized()
    reset_keras(ctx.run.seed)


def _memory(ctx: Any) -> Memory:
    """This process's resident memory and what its bounded caches hold."""
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is the best there is
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss = peak if sys.platform == "darwin" else peak * 1024
    cached = ctx.cache.memory_bytes + ctx.data.cached_bytes()
    return Memory(rss / 2**20, cached / 2**20)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel kills this worker when the search process dies (even by kill -9)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
