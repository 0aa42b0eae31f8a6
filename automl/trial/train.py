"""The one training loop: two phases (head, then fine-tuning), early stopping, reporting."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from automl.errors import TrialFailed
from automl.trial.trainlog import Reporter, TrainLog

#: Batches run per call into TensorFlow: same updates, far less Python overhead per small batch.
STEPS_PER_EXECUTION = 16


@dataclass
class Phase:
    """What one phase trains: a model and its batched train/validation datasets."""

    model: keras.Model
    train: Any
    validation: Any
    learning_rate: float
    max_epochs: int


class _Monitor(keras.callbacks.Callback):
    """Record history, report each epoch, keep the best weights, stop after ``patience``."""

    def __init__(self, phase: int, first_epoch: int, patience: int, log: TrainLog,
                 reporter: Reporter | None) -> None:
        super().__init__()
        self.phase, self.first_epoch, self.patience = phase, first_epoch, patience
        self.log, self.reporter = log, reporter
        self.best_loss = math.inf
        self.best_weights: list[np.ndarray] | None = None
        self.wait = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = dict(logs or {})
        val_loss = float(logs.get("val_loss", math.nan))
        if not math.isfinite(val_loss) or not math.isfinite(float(logs.get("loss", 0.0))):
            self.model.stop_training = True
            raise TrialFailed(f"the loss became NaN or infinite at epoch {epoch + 1} (phase "
                              f"{self.phase}); try a lower learning rate")
        lr = self.model.optimizer.learning_rate
        row = {"epoch": epoch + 1, "phase": self.phase, "phase_epoch": epoch + 1 - self.first_epoch,
               "loss": float(logs.get("loss", math.nan)),
               "accuracy": float(logs.get("accuracy", math.nan)),
               "val_loss": val_loss, "val_accuracy": float(logs.get("val_accuracy", math.nan)),
               "learning_rate": float(keras.ops.convert_to_numpy(lr))}
        self.log.epochs.append(row)
        if val_loss < self.best_loss:
            self.best_loss, self.wait = val_loss, 0
            self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.stop_training = True
        if self.reporter is not None:
            self.reporter(epoch + 1, row)

    def restore(self) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def fit_phase(phase_no: int, phase: Phase, *, first_epoch: int, patience: int, binary: bool,
              log: TrainLog, reporter: Reporter | None) -> float:
    """Train one phase from ``first_epoch``; restore its best weights; return the best val loss."""
    model = phase.model
    model.compile(optimizer=keras.optimizers.Adam(phase.learning_rate),
                  loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=STEPS_PER_EXECUTION,
                  jit_compile=False)
    monitor = _Monitor(phase_no, first_epoch, patience, log, reporter)
    callbacks = [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.3, patience=max(1, patience - 2),
                                          min_lr=1e-7, verbose=0),
        monitor,
    ]
    try:
        model.fit(phase.train, validation_data=phase.validation, initial_epoch=first_epoch,
                  epochs=first_epoch + phase.max_epochs, callbacks=callbacks, verbose=0,
                  shuffle=False)  # the datasets shuffle themselves, per epoch
    finally:
        monitor.restore()
    return monitor.best_loss


def train_two_phase(make_phase: Callable[[int], Phase | None], *, patience: int, binary: bool,
                    reporter: Reporter | None = None, log: TrainLog | None = None,
                    snapshot: Callable[[], Any] | None = None,
                    restore: Callable[[Any], None] | None = None,
                    head_done: float | None = None) -> TrainLog:
    """Phase 1 (head), then phase 2 (fine-tuning) when ``make_phase(2)`` returns one.

    Epochs are numbered continuously. If fine-tuning never beats the head phase's best validation
    loss, the head phase's weights are put back (``snapshot``/``restore`` save and load them).
    ``head_done`` (the best validation loss of a head phase already run, whose epochs are in
    ``log``) skips phase 1.
    """
    log = log if log is not None else TrainLog()
    start = time.perf_counter()
    try:
        if head_done is None:
            first = make_phase(1)
            assert first is not None
            best1 = fit_phase(1, first, first_epoch=0, patience=patience, binary=binary,
                              log=log, reporter=reporter)
        else:
            best1 = head_done
        log.best_phase = 1
        second = make_phase(2)
        if second is not None:
            saved = snapshot() if snapshot else None
            best2 = fit_phase(2, second, first_epoch=len(log.epochs), patience=patience,
                              binary=binary, log=log, reporter=reporter)
            if best2 < best1:
                log.best_phase = 2
            elif restore is not None:
                restore(saved)
    finally:
        log.seconds = time.perf_counter() - start
    return log
