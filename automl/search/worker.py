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
import importlib
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any, NoReturn

from automl.config import RunConfig, TrialConfig
from automl.data.splits import image_cache_dir
from automl.errors import TrialFailed
from automl.search.record import TRIAL_ERRORS
from automl.trial.messages import (
    Close,
    Cost,
    Decision,
    Done,
    Epoch,
    Failed,
    MeasureCost,
    Memory,
    Ready,
    RunTrial,
    TrialEnd,
    WorkerSetup,
)
from automl.trial.result import TrialResult, WarmStart
from automl.trial.trainlog import TrainLog

log = logging.getLogger("automl")
#: Memory outside the caches a worker may hold above the lightest trial's before it is replaced.
MAX_GROWTH_MB = 200.0
_START_TIMEOUT = 300.0  # seconds for a new worker to import TensorFlow and say it is ready
# the automl errors a trial raises, rebuilt here by name so the driver classifies them alike
_ERRORS: dict[str, type[Exception]] = {cls.__name__: cls for cls in TRIAL_ERRORS}


class TrialWorker:
    """Runs trials one at a time in a child process, replacing it when its memory has grown."""

    def __init__(self, setup: WorkerSetup | None, max_growth_mb: float = MAX_GROWTH_MB) -> None:
        self._setup = setup
        self._unsent = False                  # a worker started early still needs the setup
        self.max_growth_mb = max_growth_mb
        self._proc: Any = None
        self._conn: Any = None
        self._ready = False
        self.floor_mb: float | None = None    # least memory outside caches after a light trial
        self.heavy_floor_mb: float | None = None  # the same over heavy trials (none light yet)
        self.memory: Memory | None = None     # after the last trial (None: it did not end)
        self.started = 0                      # worker processes started so far
        self.last_pid: int | None = None      # the process that ran the last trial
        self._after_measure = False           # a cost measurement ran since the last trial
        self._replace = False                 # the worker grew: replace it before the next trial

    @classmethod
    def for_context(cls, ctx: Any, max_growth_mb: float = MAX_GROWTH_MB) -> TrialWorker:
        """A worker that runs trials as ``run_trial`` would with ``ctx``."""
        return cls(setup_for(ctx), max_growth_mb)

    @classmethod
    def start_early(cls, max_growth_mb: float = MAX_GROWTH_MB) -> TrialWorker:
        """A worker process started before its context exists (:meth:`configure` gives it):
        it imports TensorFlow, seconds, while the search loads the data and opens the study."""
        worker = cls(None, max_growth_mb)
        worker._spawn()
        return worker

    def configure(self, ctx: Any) -> TrialWorker:
        """Run trials as ``run_trial`` would with ``ctx``. A worker started early gets it with
        its first trial (sending now would wait for its TensorFlow import to end)."""
        self._setup = setup_for(ctx)
        self._unsent = self._proc is not None
        return self

    @property
    def pid(self) -> int | None:
        """The running worker's process id (None before the first trial or after a stop)."""
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def run(self, config: TrialConfig, run: RunConfig, number: int,
            reporter: Callable[[int, dict[str, float]], None] | None, train_log: TrainLog,
            warm: WarmStart | None = None) -> TrialResult:
        """``run_trial`` in the worker: same result, same exceptions, ``train_log`` filled in.

        An exception the reporter raises (``optuna.TrialPruned``) stops the trial in the worker
        and is raised here; KeyboardInterrupt stops the worker.
        """
        self._ensure_started()
        self.memory, self.last_pid = None, self._proc.pid
        try:
            self._send(RunTrial(config, run, number, warm), number)
            while isinstance(msg := self._receive(number), Epoch):
                train_log.epochs[:] = msg.epochs
                try:
                    if reporter is not None:
                        reporter(msg.epoch, msg.row)
                except Exception:  # pruned: the worker stops the trial and stays
                    self._send(Decision(go=False), number)
                    self._finish(self._receive(number).end, train_log)
                    raise
                self._send(Decision(go=True), number)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self.stop(kill=True)  # Ctrl-C: the trial is abandoned mid-epoch
            raise
        self._finish(msg.end, train_log)
        if isinstance(msg, Done):
            return msg.result
        if not isinstance(msg, Failed):  # Stopped without being asked: a protocol error
            raise TrialFailed(f"the trial worker sent {type(msg).__name__} unasked")
        if msg.traceback is not None:  # an unexpected exception: its traceback for --debug
            log.debug("trial %d failed in the trial worker:\n%s", number, msg.traceback)
        raise _ERRORS.get(msg.kind, TrialFailed)(msg.message)

    def measure(self, backbone: str, image_size: int, head_widths: list[int],
                features: int | None = None, convert: bool = True) -> dict[str, Any]:
        """:func:`automl.trial.cost.measure` in the worker (TrialFailed if it fails).

        It runs in the running worker, also one due for replacement (a new architecture's first
        trial ran the backbone and grew it): starting a new worker first would cost a
        TensorFlow import, and the measurement's memory goes with the old worker. Building a
        backbone leaves memory behind, so the next trial's memory does not set the light
        trials' floor (it may still get the worker replaced)."""
        self._ensure_started(replace=False)
        self._after_measure = True
        try:
            self._send(MeasureCost(backbone, image_size, tuple(head_widths), features, convert),
                       None)
            msg = self._receive(None)
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self.stop(kill=True)  # Ctrl-C mid-measurement
            raise
        if isinstance(msg, Cost):
            return msg.values
        if isinstance(msg, Failed):
            if msg.traceback is not None:
                log.debug("cost measurement failed in the trial worker:\n%s", msg.traceback)
            raise TrialFailed(msg.message)
        raise TrialFailed(f"the trial worker sent {type(msg).__name__} unasked")

    def stop(self, kill: bool = False) -> None:
        """Stop the worker process (``kill``: at once, mid-trial); the next trial starts anew.

        A worker that has not said it is ready holds nothing and may still be importing
        TensorFlow: it is killed rather than waited for.
        """
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        kill = kill or not self._ready
        if proc is not None and kill:
            proc.kill()
        if conn is not None and not kill:
            try:
                conn.send(Close())
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

    def _ensure_started(self, replace: bool = True) -> Any:
        """The running worker, started now if there is none, once it has said it is ready."""
        if self._proc is None or not self._proc.is_alive() or (replace and self._replace):
            self._spawn()
        if self._unsent:  # the child reads it once TensorFlow is imported
            self._unsent = False
            try:
                self._conn.send(self._setup)
            except OSError:
                self._died(None)
        if not self._ready:
            if not self._conn.poll(_START_TIMEOUT):  # TensorFlow's import takes seconds
                self.stop(kill=True)
                raise TrialFailed(f"the trial worker process did not start within "
                                  f"{_START_TIMEOUT:.0f} s")
            if not isinstance(self._receive(None), Ready):
                self.stop(kill=True)
                raise TrialFailed("the trial worker process did not say it was ready")
            self._ready = True
        return self._conn

    def _spawn(self) -> None:
        """Start a worker process without waiting for it (it imports TensorFlow meanwhile)."""
        self.stop()
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        # the setup (the data included) goes as the process's argument, read as it starts;
        # through the pipe a send would wait until the child has imported TensorFlow
        proc = context.Process(target=_child_main, args=(child, self._setup), daemon=True,
                               name="automl-trial-worker")
        # Ctrl-C during the start acts once the worker has started and is known (stop() ends it)
        with sigint_deferred():
            proc.start()
            child.close()
            self._proc, self._conn, self._ready = proc, parent, False
            self._unsent = False
            self._replace = False
            self.started += 1

    def _send(self, msg: RunTrial | Decision | MeasureCost, number: int | None) -> None:
        try:
            self._conn.send(msg)
        except OSError:
            self._died(number)

    def _receive(self, number: int | None) -> Any:
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

    def _finish(self, end: TrialEnd, train_log: TrainLog) -> None:
        """Take over the trial's log and the worker's memory; replace a worker that grew."""
        train_log.epochs[:] = end.epochs
        train_log.best_phase, train_log.seconds = end.best_phase, end.seconds
        memory, heavy = end.memory, end.heavy
        self.memory = memory
        outside = memory.outside_caches_mb
        train_log.heavy = heavy
        if not heavy and not self._after_measure:
            self.floor_mb = outside if self.floor_mb is None else min(self.floor_mb, outside)
        self._after_measure = False
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
            # replaced when the next trial starts: a serving-cost measurement of the trial's
            # new architecture may run first, in this worker (its memory goes with it)
            self._replace = True


def _has_files(data: Any) -> bool:
    """Whether any split streams image files (whose decoded copies go to a temp folder)."""
    return any(split.paths is not None for split in data.splits().values())


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C back while a process starts, then deliver it (main thread only).

    ``Process.start`` writes the worker's setup down a pipe until the child has read it,
    seconds on a busy machine: a KeyboardInterrupt inside it would leave a half-started
    process, and ignoring SIGINT meanwhile lost the Ctrl-C. Here SIGINT is recorded and raised
    again when the start is over. The child inherits SIGINT blocked, so it cannot print a
    traceback while it starts; it ignores SIGINT and unblocks it when it serves
    (``automl.trial.child``).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # a process's first spawn launches multiprocessing's resource tracker, which blocks SIGINT
    # while it starts and then unblocks it: the child would start with SIGINT unblocked
    resource_tracker.ensure_running()
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a blocked, pending SIGINT: caught
        signal.signal(signal.SIGINT, previous)
    if caught:
        signal.raise_signal(signal.SIGINT)


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


# ------------------------------------------------------------------ the child's entry point

#: The module whose ``serve`` runs in the worker process. It is imported there by name, never in
#: the search process: that is what keeps TensorFlow out of it (import-linter checks the rest).
WORKER_MODULE = "automl.trial.serve"


def setup_for(ctx: Any) -> WorkerSetup:
    """What a worker needs to run trials as ``run_trial`` would with ``ctx``."""
    cache = ctx.cache
    return WorkerSetup(ctx.data, ctx.run, Path(ctx.trials_dir), cache.directory, cache.max_bytes,
                       logging.getLogger("automl").getEffectiveLevel(),
                       image_cache_dir() if _has_files(ctx.data) else None)


def _child_main(conn: Any, setup: WorkerSetup | None) -> None:
    """Runs in the new worker process: import the TensorFlow side and serve trials (``setup``
    None: a worker started early, which reads it from the pipe)."""
    importlib.import_module(WORKER_MODULE).serve(conn, setup)
