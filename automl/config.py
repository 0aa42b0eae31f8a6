"""Plain records passed between modules: one trial's configuration and the run's settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from automl.space import DIMENSIONS


@dataclass(frozen=True)
class TrialConfig:
    """One point of the search space: everything that defines a trial's model."""

    backbone: str
    image_size: int
    freeze_depth: float
    head_width: int
    dropout: float
    learning_rate: float
    augmentation: str

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrialConfig:
        """Build from a sampled dict (or a leaderboard row) holding the seven dimensions."""
        missing = [name for name in DIMENSIONS if name not in params]
        if missing:
            raise KeyError(f"trial parameters miss {missing}")
        return cls(
            backbone=str(params["backbone"]),
            image_size=int(params["image_size"]),
            freeze_depth=float(params["freeze_depth"]),
            head_width=int(params["head_width"]),
            dropout=float(params["dropout"]),
            learning_rate=float(params["learning_rate"]),
            augmentation=str(params["augmentation"]),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunConfig:
    """Settings of a whole search that are not searched over."""

    epochs: int = 10                 # max epochs of the head phase
    fine_tune_epochs: int = 5        # max epochs of the fine-tuning phase
    batch_size: int = 64
    seed: int = 0
    patience: int = 3                # early stopping on validation loss
    fine_tune_lr_factor: float = 0.1
    feature_cache: bool = True
    augment_views: int = 4           # cached augmented views per training image (0: live)
    cut_depths: tuple[float, ...] = ()  # the space's freeze depths below 1: their activations
                                        # are cached in the same pass as the pooled ones
    cache_memory_mb: int = 2048
    keep_weights: int = 5            # weights of the best N trials are kept on disk
    weights: str | None = None       # --weights: "none", a file, or None for the resolver
    weights_dir: str | None = None   # --weights-dir

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def study_dir(results: str | Path, study: str) -> Path:
    """Where one study's files live: ``<results>/<study>/``."""
    return Path(results) / study
