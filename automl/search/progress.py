r"""The live view of a search: trial i of N, elapsed and remaining time, running trial, best.

A driver tells a ``SearchProgress`` what happens (``start``, ``trial_start``, ``epoch``,
``trial_end``, ``note``, ``close``); how it is shown depends on where the output goes:

- ``LiveProgress``: a terminal. A status block at the bottom is redrawn in place (plain ANSI
  escapes), finished trials scroll above it as permanent lines.
- ``LineProgress``: not a terminal (CI, ``| tee``, a file). One plain line per finished trial.
- ``SearchProgress`` itself shows nothing (``--quiet``): warnings still go to stderr through
  logging, and the CLI prints the final summary.

Any driver can call it: nothing here knows about Optuna or Keras.

>>> lines = []
>>> p = LineProgress(lines.append, clock=iter(range(0, 100, 10)).__next__)
>>> p.start(total=2)
>>> p.trial_start(0, {"backbone": "efficientnet_lite0", "learning_rate": 0.001})
>>> p.trial_end(TrialEnd(0, "COMPLETE", finished=1, val_accuracy=0.9, best_value=0.9,
...                      best_trial=0, params={"backbone": "lite0", "dropout": 0.25}))
>>> print(lines[0].replace(" | ", "\n  | "))
[1/2] trial 0 COMPLETE val_acc=0.9000
  | best 0.9000 (trial 0)
  | backbone=lite0 dropout=0.25
  | 10s elapsed, ~10s left
"""

from __future__ import annotations

import logging
import shutil
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

PHASES = {1: "head", 2: "fine-tune"}


@dataclass(frozen=True)
class TrialEnd:
    """How one trial ended, as the live view shows it."""

    number: int
    state: str                        # COMPLETE, PRUNED, FAIL or INTERRUPTED
    finished: int                     # finished (complete or pruned) trials now in the study
    val_accuracy: float | None = None
    detail: str = ""                  # why it failed, or where it was pruned
    best_value: float | None = None   # the best validation accuracy so far ...
    best_trial: int | None = None     # ... and the trial holding it
    params: Mapping[str, Any] = field(default_factory=dict)


def duration(seconds: float) -> str:
    """12s, 3m05s, 2h07m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def params_text(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={short(v)}" for k, v in params.items())


class SearchProgress:
    """Tracks a search's progress; shows nothing (the ``--quiet`` view). Subclasses render it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.total = 0
        self.finished = 0
        self.timeout: float | None = None
        self.max_epochs: tuple[int, int] = (0, 0)
        self.started = 0.0
        self.finished_here = 0        # trials finished by this process (for the estimate)
        self.best: tuple[float, int] | None = None
        self.current: int | None = None
        self.current_params: Mapping[str, Any] = {}
        self.current_stage = ""
        self.last_epoch: Mapping[str, float] | None = None

    # --- what a driver calls -------------------------------------------------------------
    def start(self, total: int, finished: int = 0, *, timeout: float | None = None,
              max_epochs: tuple[int, int] = (0, 0), best: tuple[float, int] | None = None,
              ) -> None:
        """The search begins: ``total`` finished trials wanted, ``finished`` already there."""
        self.total, self.finished, self.timeout = total, finished, timeout
        self.max_epochs, self.best = max_epochs, best
        self.started = self.clock()

    def trial_start(self, number: int, params: Mapping[str, Any], stage: str = "") -> None:
        self.current, self.current_params, self.current_stage = number, dict(params), stage
        self.last_epoch = None
        self.refresh()

    def epoch(self, number: int, row: Mapping[str, float]) -> None:
        """An epoch of trial ``number`` ended (``row``: epoch, phase, phase_epoch, val_...)."""
        self.last_epoch = dict(row)
        self.refresh()

    def trial_end(self, end: TrialEnd) -> None:
        if end.finished > self.finished:
            self.finished_here += end.finished - self.finished
        self.finished = end.finished
        if end.best_value is not None and end.best_trial is not None:
            self.best = (end.best_value, end.best_trial)
        self.current, self.last_epoch = None, None
        self.show_line(self.trial_line(end))

    def note(self, text: str) -> None:
        """A message for the user (e.g. the study and data being used)."""
        self.show_line(text)

    def close(self) -> None:
        """The search is over (finished, failed or interrupted)."""

    # --- what the views share ------------------------------------------------------------
    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining(self, elapsed: float) -> float | None:
        """Seconds left, estimated from the trials this process finished (None: no estimate)."""
        left = None
        if self.finished_here:
            left = elapsed / self.finished_here * max(0, self.total - self.finished)
        if self.timeout is not None:
            cap = max(0.0, self.timeout - elapsed)
            left = cap if left is None else min(left, cap)
        return left

    def timing(self) -> str:
        elapsed = self.elapsed()
        left = self.remaining(elapsed)
        return f"{duration(elapsed)} elapsed" + (
            f", ~{duration(left)} left" if left is not None else "")

    def trial_line(self, end: TrialEnd) -> str:
        """The permanent line of a finished trial."""
        got = f"val_acc={end.val_accuracy:.4f}" if end.state == "COMPLETE" and \
            end.val_accuracy is not None else end.detail
        best = (f" | best {end.best_value:.4f} (trial {end.best_trial})"
                if end.best_value is not None else "")
        text = f"[{end.finished}/{self.total}] trial {end.number} {end.state}"
        return f"{text}{' ' + got if got else ''}{best} | {params_text(end.params)} | " \
            f"{self.timing()}"

    def status_lines(self) -> list[str]:
        """The live block: where the search is, the running trial, its epoch, the best."""
        running = min(self.finished + 1, self.total) if self.current is not None \
            else self.finished
        lines = [f"trial {running} of {self.total} ({self.finished} finished) | {self.timing()}"]
        if self.current is not None:
            stage = f" [{self.current_stage}]" if self.current_stage else ""
            lines.append(f"  running trial {self.current}{stage}: "
                         f"{params_text(self.current_params)}")
            lines.append("  " + self.epoch_text())
        best = (f"best val_acc {self.best[0]:.4f} (trial {self.best[1]})" if self.best
                else "best val_acc -")
        lines.append("  " + best)
        return lines

    def epoch_text(self) -> str:
        row = self.last_epoch
        if not row:
            return "building the model / first epoch ..."
        phase = int(row.get("phase", 1))
        most = self.max_epochs[phase - 1] if phase in (1, 2) else 0
        of = f"/{most}" if most else ""
        nan = float("nan")
        return (f"epoch {int(row['epoch'])} (phase {phase} {PHASES.get(phase, '')}, "
                f"{int(row.get('phase_epoch', row['epoch']))}{of}) "
                f"loss {row.get('loss', nan):.4f} acc {row.get('accuracy', nan):.4f} | val_loss "
                f"{row.get('val_loss', nan):.4f} val_acc {row.get('val_accuracy', nan):.4f}")

    # --- rendering hooks (no-ops: the quiet view) -----------------------------------------
    def refresh(self) -> None:
        """The state changed: redraw whatever is live."""

    def show_line(self, text: str) -> None:
        """Print a permanent line."""


class LineProgress(SearchProgress):
    """Plain lines, one per finished trial (and each note): for logs, CI and pipes.

    ``echo`` prints one line (like ``print``).
    """

    def __init__(self, echo: Callable[[str], Any] = print,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.echo = echo

    def show_line(self, text: str) -> None:
        self.echo(text)


class LiveProgress(SearchProgress):
    """A status block redrawn in place at the bottom of a terminal; finished trials above it.

    A background thread redraws it every ``tick`` seconds so the clock moves during long
    epochs. Log records (warnings) first clear the block so they never interleave with it.
    """

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic,
                 tick: float | None = 1.0) -> None:
        super().__init__(clock)
        self.stream, self.tick = stream, tick
        self.drawn = 0  # lines of the block now on screen
        self.live = False
        self.lock = threading.RLock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.handlers: list[logging.Handler] = []

    def start(self, total: int, finished: int = 0, **kwargs: Any) -> None:
        super().start(total, finished, **kwargs)
        self.live = True
        for handler in logging.getLogger().handlers + logging.getLogger("automl").handlers:
            handler.addFilter(self._before_log)
            self.handlers.append(handler)
        self.refresh()
        if self.tick:
            self.thread = threading.Thread(target=self._ticker, name="automl-progress",
                                           daemon=True)
            self.thread.start()

    def _ticker(self) -> None:
        while not self.stop.wait(self.tick):
            self.refresh()

    def _before_log(self, record: logging.LogRecord) -> bool:
        self.clear()
        return True  # a filter that only makes room: the record is always emitted

    def clear(self) -> None:
        """Erase the block (cursor back to where it started)."""
        with self.lock:
            if self.drawn:
                self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
                self.drawn = 0
                self.stream.flush()

    def refresh(self) -> None:
        with self.lock:
            if not self.live:
                return
            width = max(20, shutil.get_terminal_size((100, 24)).columns - 1)
            lines = [part for line in self.status_lines()  # wrapped here: the terminal must
                     for part in textwrap.wrap(line, width, subsequent_indent="      ",
                                               drop_whitespace=True) or [""]]  # not wrap
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines) + "\x1b[J")
            self.drawn = len(lines)
            self.stream.flush()

    def show_line(self, text: str) -> None:
        with self.lock:
            self.clear()
            self.stream.write(text + "\n")
            self.stream.flush()
            self.refresh()

    def close(self) -> None:
        self.stop.set()
        with self.lock:
            self.live = False
        if self.thread is not None:
            self.thread.join(timeout=5)
        for handler in self.handlers:
            handler.removeFilter(self._before_log)
        self.handlers = []
        self.clear()


def make_progress(stream: TextIO | None = None, quiet: bool = False) -> SearchProgress:
    """The view for ``stream`` (default stdout): live on a terminal, lines otherwise."""
    stream = stream if stream is not None else sys.stdout
    if quiet:
        return SearchProgress()
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return LiveProgress(stream)
    return LineProgress(lambda text: print(text, file=stream, flush=True))
