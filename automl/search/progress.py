r"""The live view of a search: trial i of N, elapsed and remaining time, running trial, best.

A driver tells a ``SearchProgress`` what happens (``start``, ``trial_start``, ``epoch``,
``trial_end``, ``note``, ``close``); how it is shown depends on where the output goes:

- ``LiveProgress``: a terminal. A status block at the bottom (trials done as a bar, the
  running trial, its last epoch, the best) is redrawn in place by ``rich.live.Live``; finished
  trials are printed above it as permanent lines.
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
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.live import Live
from rich.padding import Padding
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

PHASES = {1: "head", 2: "fine-tune"}
STATE_STYLES = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "INTERRUPTED": "magenta",
                "INFEASIBLE": "blue"}


@dataclass(frozen=True)
class TrialEnd:
    """How one trial ended, as the live view shows it."""

    number: int
    state: str                        # COMPLETE, PRUNED, INFEASIBLE, FAIL or INTERRUPTED
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
        self.show_trial(end, self.trial_line(end))

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

    def header(self) -> str:
        """Where the search is: trial i of N (and how many finished)."""
        running = min(self.finished + 1, self.total) if self.current is not None \
            else self.finished
        return f"trial {running} of {self.total} ({self.finished} finished)"

    def best_text(self) -> str:
        return (f"best val_acc {self.best[0]:.4f} (trial {self.best[1]})" if self.best
                else "best val_acc -")

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

    def show_trial(self, end: TrialEnd, line: str) -> None:
        """Print the permanent line ``line`` of the finished trial ``end``."""
        self.show_line(line)


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


class Status:
    """A snapshot of the live block, laid out for whatever width it is drawn at (a rich renderable).

    Immutable: ``rich`` may redraw it from another thread (a ``print`` above the block).
    """

    BAR = (10, 30)  # the trials-done bar: narrowest worth drawing, widest

    def __init__(self, view: SearchProgress) -> None:
        self.header = view.header()
        self.timing = view.timing()
        self.total, self.finished = max(1, view.total), min(view.finished, max(1, view.total))
        self.running = None if view.current is None else (
            f"running trial {view.current}"
            + (f" [{view.current_stage}]" if view.current_stage else "") + ":",
            params_text(view.current_params))
        self.epoch = view.epoch_text() if view.current is not None else None
        self.waiting = view.last_epoch is None
        self.best = view.best_text()
        self.has_best = view.best is not None

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        low, high = self.BAR
        header = Text(self.header, style="bold")
        timing = Text(self.timing)
        room = width - len(self.header) - len(self.timing) - 2
        if room >= low:  # one line: header, bar, timing
            yield self._row(header, self._bar(min(room, high)), timing)
        else:  # narrow: the timing goes below
            room = width - len(self.header) - 1
            yield self._row(header, self._bar(min(room, high))) if room >= low else header
            yield self._indented(timing)
        if self.running is not None:
            label, params = self.running
            if width - 2 - len(label) - 1 >= 24:  # params wrap under themselves
                grid = Table.grid(padding=(0, 1))
                grid.add_column(no_wrap=True)
                grid.add_column(overflow="fold")
                grid.add_row(Text(label, style="bold cyan"), Text(params))
                yield self._indented(grid)
            else:
                yield self._indented(Text.assemble((label, "bold cyan"), " ", params,
                                                   overflow="fold"))
        if self.epoch is not None:
            yield self._indented(Text(self.epoch, style="dim italic" if self.waiting else ""))
        yield self._indented(Text(self.best, style="green" if self.has_best else "dim"))

    def _bar(self, width: int) -> ProgressBar:
        return ProgressBar(total=self.total, completed=self.finished, width=width)

    @staticmethod
    def _row(*cells: RenderableType) -> Table:
        grid = Table.grid(padding=(0, 1))
        for _ in cells:
            grid.add_column(no_wrap=True)
        grid.add_row(*cells)
        return grid

    @staticmethod
    def _indented(renderable: RenderableType) -> Padding:
        return Padding(renderable, (0, 0, 0, 2))


class _MakesRoom:
    """A stream (stderr, a log handler's) that takes the live block down while it writes.

    Whatever else writes to the terminal would otherwise land inside the block, and the next
    redraw would overwrite it. Writes hold the view's lock, so the ticker cannot redraw between
    taking the block down and the write.
    """

    def __init__(self, stream: TextIO, view: LiveProgress) -> None:
        self.stream, self.view = stream, view

    def write(self, text: str) -> int:
        with self.view.lock:
            self.view.hide()
            written = self.stream.write(text)
            self.stream.flush()
            if text.endswith("\n"):  # the cursor is at the start of a line: draw it again
                self.view.refresh()
            return written

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class LiveProgress(SearchProgress):
    """A status block at the bottom of a terminal, redrawn in place by ``rich.live.Live``;
    finished trials are printed above it as permanent lines.

    A background thread redraws it every ``tick`` seconds so the clock moves during long
    epochs. While it is shown, stderr and the terminal log handlers (of the root, ``automl``
    and ``optuna`` loggers) take the block down before they write, so a warning never lands
    inside it; ``print`` to stdout goes above it (``rich``'s own redirection).
    """

    LOGGERS = ("", "automl", "optuna")

    def __init__(self, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, tick: float | None = 1.0, *,
                 console: Console | None = None) -> None:
        super().__init__(clock)
        self.console = console if console is not None else Console(
            file=stream, highlight=False, emoji=False)
        self.tick = tick
        self.lock = threading.RLock()
        self.live: Live | None = None
        self.hidden = False  # the block is taken down until the next refresh
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.wrapped: list[tuple[logging.StreamHandler[Any], TextIO]] = []
        self.stderr: TextIO | None = None  # sys.stderr while ours is in its place

    def start(self, total: int, finished: int = 0, **kwargs: Any) -> None:
        super().start(total, finished, **kwargs)
        with self.lock:
            self.live = Live(console=self.console, auto_refresh=False, transient=True,
                             redirect_stdout=self.console.file is sys.stdout,
                             redirect_stderr=False)
            self.live.start()
            self._make_room()
            self.refresh()
        if self.tick:
            self.thread = threading.Thread(target=self._ticker, name="automl-progress",
                                           daemon=True)
            self.thread.start()

    def _ticker(self) -> None:
        while not self.stopping.wait(self.tick):
            self.refresh()

    def render(self) -> Status:
        """The live block as it is now (a ``rich`` renderable)."""
        with self.lock:
            return Status(self)

    def refresh(self) -> None:
        with self.lock:
            if self.live is not None:
                self.live.update(self.render(), refresh=True)
                self.hidden = False

    def hide(self) -> None:
        """Erase the block until the next refresh; the cursor is left where it began."""
        with self.lock:
            if self.live is not None and not self.hidden:
                # an empty line in its place: the next refresh erases only the line the cursor
                # is on, whatever was written from there on stays
                self.live.update(Text(""), refresh=True)
                self.hidden = True

    def show_line(self, text: str) -> None:
        self.show_text(Text(text))

    def show_trial(self, end: TrialEnd, line: str) -> None:
        text = Text(line)
        at = line.index(f" {end.state}") + 1
        text.stylize(STATE_STYLES.get(end.state, ""), at, at + len(end.state))
        self.show_text(text)

    def show_text(self, text: Text) -> None:
        with self.lock:  # printed above the block (rich's render hook) and left as it is
            self.console.print(text, soft_wrap=True)
            self.refresh()

    def close(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        with self.lock:
            self._give_room_back()
            if self.live is not None:
                self.live.stop()  # transient: the block is erased
                self.live = None

    def _make_room(self) -> None:
        for name in self.LOGGERS:
            for handler in logging.getLogger(name).handlers:
                if (isinstance(handler, logging.StreamHandler)
                        and not isinstance(handler, logging.FileHandler)
                        and _is_terminal(handler.stream)
                        and not isinstance(handler.stream, _MakesRoom)):
                    self.wrapped.append((handler, handler.stream))
                    handler.setStream(_MakesRoom(handler.stream, self))
        if _is_terminal(sys.stderr) and not isinstance(sys.stderr, _MakesRoom):
            self.stderr, sys.stderr = sys.stderr, _MakesRoom(sys.stderr, self)  # type: ignore[assignment]

    def _give_room_back(self) -> None:
        for handler, stream in self.wrapped:
            if isinstance(handler.stream, _MakesRoom) and handler.stream.view is self:
                handler.setStream(stream)
        self.wrapped = []
        if self.stderr is not None:
            if isinstance(sys.stderr, _MakesRoom) and sys.stderr.view is self:
                sys.stderr = self.stderr
            self.stderr = None


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except ValueError:  # closed
        return False


def make_progress(stream: TextIO | None = None, quiet: bool = False) -> SearchProgress:
    """The view for ``stream`` (default stdout): live on a terminal, lines otherwise."""
    stream = stream if stream is not None else sys.stdout
    if quiet:
        return SearchProgress()
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return LiveProgress(stream)  # rich finds out what the terminal can do (TERM, NO_COLOR)
    return LineProgress(lambda text: print(text, file=stream, flush=True))
