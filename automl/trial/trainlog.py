"""What training reports, without TensorFlow: the search process imports this, the worker trains."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

#: Called after every epoch with the epoch number (continuous across phases) and its metrics.
#: It may raise (e.g. optuna.TrialPruned) to stop the trial.
Reporter = Callable[[int, dict[str, float]], None]


@dataclass
class TrainLog:
    """Per-epoch history of a trial (grows while it trains, so it survives a pruned trial)."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_phase: int = 1
    seconds: float = 0.0
    heavy: bool = False  # the backbone ran over images or its top was fine-tuned
