"""How a driver runs a trial without knowing where it runs (TensorFlow-free).

The drivers hand a configuration to a :class:`TrialRunner`: the trial worker process
(:class:`automl.search.worker.TrialWorker`) or, with ``--in-process``, the trial code itself
(:class:`automl.trial.run.InProcessRunner`). Both return the same result and raise the same
exceptions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from automl.config import RunConfig, TrialConfig
from automl.search import record
from automl.trial.messages import Memory
from automl.trial.result import TrialResult, WarmStart
from automl.trial.trainlog import TrainLog


class TrialRunner(Protocol):
    """Runs one trial at a time; ``memory``/``last_pid`` describe the process that ran it."""

    memory: Memory | None
    last_pid: int | None

    def run(self, config: TrialConfig, run: RunConfig, number: int,
            reporter: Callable[[int, dict[str, float]], None] | None, train_log: TrainLog,
            warm: WarmStart | None = None) -> TrialResult: ...

    def measure(self, backbone: str, image_size: int, head_widths: list[int],
                features: int | None = None, convert: bool = True) -> dict[str, Any]: ...

    def stop(self, kill: bool = False) -> None: ...


@dataclass
class DriverContext:
    """What a driver needs of a run: its settings, where kept weights go, who runs trials, the
    limits on a trial's serving cost (``automl.search.cost.Limits``; None: not measured)."""

    run: RunConfig
    trials_dir: Path
    runner: Any  # a TrialRunner
    limits: Any = None
    sizes: Any = None  # automl.search.sizes.BackgroundSizes: paused while a latency is measured


def execute(config: TrialConfig, ctx: DriverContext, number: int,
            reporter: Callable[[int, dict[str, float]], None] | None = None,
            log: TrainLog | None = None, warm: WarmStart | None = None) -> TrialResult:
    """Run one trial through the context's runner, filling ``log`` as it trains."""
    return ctx.runner.run(config, ctx.run, number, reporter,
                          log if log is not None else TrainLog(), warm)


def note_memory(trial: Any, ctx: DriverContext) -> None:
    """Record the trial worker's memory after the trial (how the benchmark sees it stay flat)."""
    memory = getattr(ctx.runner, "memory", None)
    if memory is not None:
        record.write(trial, worker_memory={"pid": ctx.runner.last_pid,
                                           "rss_mb": round(memory.rss_mb, 1),
                                           "cache_mb": round(memory.cache_mb, 1)})
