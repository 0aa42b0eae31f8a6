"""What the search process and its trial worker say to each other over their pipe.

Every message is a small frozen dataclass (picklable, TensorFlow-free), so both sides match on
types instead of tuple positions. The conversation for one trial::

    search                         worker
    RunTrial(config, ...)  ──►
                           ◄──     Epoch(epoch, row, epochs)     (after every epoch)
    Decision(go=True)      ──►                                    (False: pruned, stop now)
                           ◄──     Done(result, end) | Stopped(end) | Failed(kind, ..., end)

Between trials the search may ask what an architecture costs to serve (measured once per
architecture, outside any trial)::

    MeasureCost(backbone, ...)  ──►
                           ◄──     Cost(values) | Failed(kind, ..., end)

A worker gets its ``WorkerSetup`` (the search's context) as its process argument, or, when it
was started early to import TensorFlow while the search loads the data, as the first message
with its first trial; ``Ready`` opens its life and ``Close`` ends it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl.config import RunConfig, TrialConfig


@dataclass(frozen=True)
class WorkerSetup:
    """What a worker needs to rebuild the search context (all of it picklable)."""

    data: Any            # automl.data.splits.Datasets (its resized-image caches are not sent)
    run: RunConfig
    trials_dir: Path
    cache_dir: Path | None
    cache_bytes: int
    log_level: int
    image_cache_dir: str | None  # made by the search process for folder data only


@dataclass(frozen=True)
class Memory:
    """A worker's resident memory after a trial, and how much of it its caches hold (MB)."""

    rss_mb: float
    cache_mb: float

    @property
    def outside_caches_mb(self) -> float:
        return self.rss_mb - self.cache_mb


@dataclass(frozen=True)
class Ready:
    """The worker has imported TensorFlow and built its context."""

    pid: int


@dataclass(frozen=True)
class RunTrial:
    """Run one trial (``warm``: an automl.trial.result.WarmStart or None)."""

    config: TrialConfig
    run: RunConfig
    number: int
    warm: Any = None


@dataclass(frozen=True)
class MeasureCost:
    """Measure a backbone at an image size (unless ``features``, its output width, is given:
    then only the heads) and hidden heads' widths (:func:`automl.trial.cost.measure`)."""

    backbone: str
    image_size: int
    head_widths: tuple[int, ...]
    features: int | None = None
    convert: bool = True  # False: the .tflite size is only looked up (converted elsewhere)


@dataclass(frozen=True)
class Cost:
    """What :class:`MeasureCost` measured (:func:`automl.trial.cost.measure`'s dict)."""

    values: dict[str, Any]


@dataclass(frozen=True)
class Close:
    """Finish: the worker process exits."""


@dataclass(frozen=True)
class Epoch:
    """An epoch ended: its row, and every row so far (so the search holds the history)."""

    epoch: int
    row: dict[str, float]
    epochs: list[dict[str, float]]


@dataclass(frozen=True)
class Decision:
    """The search's answer to an Epoch: go on, or stop the trial (pruned)."""

    go: bool


@dataclass(frozen=True)
class TrialEnd:
    """How a trial left the worker, whatever its outcome (the train log and the memory)."""

    epochs: list[dict[str, float]]
    best_phase: int
    seconds: float
    memory: Memory
    heavy: bool


@dataclass(frozen=True)
class Done:
    """The trial finished (``result``: an automl.trial.result.TrialResult)."""

    result: Any
    end: TrialEnd


@dataclass(frozen=True)
class Stopped:
    """The trial stopped after a Decision(go=False)."""

    end: TrialEnd


@dataclass(frozen=True)
class Failed:
    """The trial raised: ``kind`` names the automl error class (TrialFailed for the unexpected),
    ``traceback`` is set for an unexpected exception (shown with --debug)."""

    kind: str
    message: str
    end: TrialEnd
    traceback: str | None = None
