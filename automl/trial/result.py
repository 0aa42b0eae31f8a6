"""What a trial hands back, and where it keeps its weights (TensorFlow-free: both sides read it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrialResult:
    """What a finished trial reached (validation picks, test only reports)."""

    val_accuracy: float
    val_loss: float
    test_accuracy: float | None
    epochs: int
    best_phase: int
    train_seconds: float
    params: int
    weights_file: str | None
    cut: str
    history: list[dict[str, float]] = field(default_factory=list)
    weights_kind: str = "model"          # what weights_file holds: "model" or "head" (the
    backbone_weights: str | None = None  # backbone is then rebuilt from these pretrained
    backbone_identity: str = ""          # weights, checked against this identity)
    kind: str = ""  # what the trial cost: see automl.trial.run.trial_kind


@dataclass(frozen=True)
class WarmStart:
    """A finished trial whose head phase a new trial of the same head configuration reuses."""

    head_weights: Path
    history: list[dict[str, float]]
    val_loss: float


def weights_path(trials_dir: Path, number: int) -> Path:
    """Where trial ``number`` keeps its model weights.

    >>> weights_path(Path("t"), 7).as_posix()
    't/trial_0007/model.weights.h5'
    """
    return trials_dir / f"trial_{number:04d}" / "model.weights.h5"


def head_path(trials_dir: Path, number: int) -> Path:
    """Where trial ``number`` keeps its head's weights (for warm starts)."""
    return trials_dir / f"trial_{number:04d}" / "head.weights.h5"
