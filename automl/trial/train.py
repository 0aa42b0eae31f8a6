"""The one training loop: two phases (head, then fine-tuning), early stopping, reporting.

Every phase runs through :func:`fit_phase`: an epoch loop in Python around compiled TensorFlow
functions. A phase feeds either in-memory arrays (:class:`ArrayFeed`: cached activations, and
cached augmented views of them) or a ``tf.data`` dataset of batches (live images). An array
epoch is one call into TensorFlow (every batch of the epoch runs inside one compiled loop), so a
head trained on cached activations costs its arithmetic, not Python and callback overhead per
batch; a dataset epoch runs ``STEPS_PER_EXECUTION`` batches per call, as Keras' ``fit`` would.

What the loop does, per epoch: train, evaluate on validation, stop on a NaN loss, lower the
learning rate on a plateau (Keras' ``ReduceLROnPlateau`` rule), keep the best validation loss'
weights, report the epoch (the reporter may raise to prune), stop early after ``patience``
epochs without improvement. The best weights are restored at the end of the phase.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from automl.errors import TrialFailed
from automl.trial.trainlog import Reporter, TrainLog

#: Batches run per call into TensorFlow for a dataset feed (an array feed runs a whole epoch).
STEPS_PER_EXECUTION = 16
_EVAL_CHUNK = 1024      # rows per compiled evaluation call on arrays
_PLATEAU_FACTOR = 0.3   # ReduceLROnPlateau: factor, min_lr, min_delta
_MIN_LR = 1e-7
_MIN_DELTA = 1e-4


class DrawnViews:
    """K views of every input, each an independent random draw (e.g. the frozen activations of
    one ``light`` augmentation per image), made on first use: ``makers[v]()`` gives view ``v``
    as ``[n, ...]``."""

    def __init__(self, makers: list[Callable[[], np.ndarray]]) -> None:
        self._makers = list(makers)
        self._made: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self._makers)

    def __getitem__(self, view: int) -> np.ndarray:
        if view not in self._made:
            self._made[view] = self._makers[view]()
        return self._made[view]

    @property
    def made(self) -> list[int]:
        """The views made so far."""
        return sorted(self._made)


@dataclass
class ArrayFeed:
    """In-memory inputs with their labels, batched and (for training) reshuffled every epoch.

    ``x`` is ``[n, ...]``; or with ``views`` ``[K, n, ...]``, K cached views of each input that
    are not exchangeable (``flip``: as it is, mirrored), mixed per input: each epoch takes one
    view per input, drawn without replacement per input, so over K epochs every view of an input
    is seen once; or :class:`DrawnViews`, K independent random draws per input, of which epoch
    ``e`` reads view ``e % K`` for every input. Since the draws are independent that is the same
    distribution (per input, K epochs see its K views once each), and a view is made only when an
    epoch first reads it: a trial pruned after two epochs made two views, not K.
    """

    x: np.ndarray | DrawnViews
    y: np.ndarray
    batch_size: int
    shuffle: bool = False
    seed: int = 0
    views: bool = False

    def __post_init__(self) -> None:
        self._orders: list[np.ndarray] = []
        self._shuffled: Any = None
        if self.shuffle:  # the order tf.data's seeded shuffle gives live images: the same
            ds = tf.data.Dataset.range(self.n).shuffle(self.n, seed=self.seed,
                                                        reshuffle_each_iteration=True)
            self._shuffled = iter(ds.batch(self.n).repeat())

    @property
    def n(self) -> int:
        if isinstance(self.x, DrawnViews):
            return len(self.y)
        return int(self.x.shape[1] if self.views else self.x.shape[0])

    def order(self, epoch: int) -> np.ndarray:
        """The inputs' order in the feed's ``epoch``-th epoch (0 = its first)."""
        if self._shuffled is None:
            return np.arange(self.n)
        while len(self._orders) <= epoch:
            self._orders.append(next(self._shuffled).numpy())
        return self._orders[epoch]

    def epoch_inputs(self, epoch: int) -> tuple[np.ndarray, int]:
        """(the array the ``epoch``-th epoch reads, its key among the feed's arrays)."""
        if isinstance(self.x, DrawnViews):
            view = epoch % len(self.x)
            return self.x[view], view
        return self.x, -1

    def epoch_rows(self, epoch: int) -> np.ndarray:
        """Row indices into the epoch's array (with mixed views: flattened over the views)."""
        order = self.order(epoch)
        if not self.views:
            return order.astype(np.int32)
        n, k = self.n, int(self.x.shape[0])
        # a fresh random order of the K views per input every K epochs, read at epoch % K
        cycle = np.random.default_rng((self.seed, epoch // k)).random((n, k)).argsort(axis=1)
        view = cycle[:, epoch % k]
        return (view[order] * n + order).astype(np.int32)


Feed = ArrayFeed | Any  # Any: a tf.data.Dataset of (x, y) batches


@dataclass
class Phase:
    """What one phase trains: a model and its train/validation feeds."""

    model: keras.Model
    train: Feed
    validation: Feed
    learning_rate: float
    max_epochs: int


class _Engine:
    """Compiled train and evaluation functions for one model, loss and optimizer."""

    def __init__(self, model: keras.Model, learning_rate: float, binary: bool) -> None:
        self.model, self.binary = model, binary
        self.optimizer = keras.optimizers.Adam(learning_rate)
        self.loss = (keras.losses.BinaryCrossentropy() if binary
                     else keras.losses.SparseCategoricalCrossentropy())
        self.variables = model.trainable_variables
        self.optimizer.build(self.variables)
        self._arrays: dict[tuple[int, int], tuple[Any, Any]] = {}
        self._train_rows = tf.function(self._train_rows_py, reduce_retracing=True)
        self._train_batches = tf.function(self._train_batches_py)
        self._eval = tf.function(self._eval_py, reduce_retracing=True)

    # -- compiled pieces -----------------------------------------------------------------

    def _targets(self, y: Any) -> Any:
        return tf.reshape(tf.cast(y, tf.float32), (-1, 1)) if self.binary else y

    def _correct(self, y: Any, probs: Any) -> Any:
        y = tf.reshape(tf.cast(y, tf.int64), (-1,))
        if self.binary:
            hit = tf.equal(tf.cast(probs[:, 0] > 0.5, tf.int64), y)
        else:
            hit = tf.equal(tf.argmax(probs, axis=-1), y)
        return tf.reduce_sum(tf.cast(hit, tf.float32))

    def _step(self, x: Any, y: Any) -> tuple[Any, Any]:
        """One update; (summed loss, correct count) of the batch."""
        x = tf.cast(x, tf.float32)
        with tf.GradientTape() as tape:
            probs = self.model(x, training=True)
            loss = self.loss(self._targets(y), probs)
        grads = tape.gradient(loss, self.variables)
        self.optimizer.apply_gradients(zip(grads, self.variables, strict=True))
        n = tf.cast(tf.shape(x)[0], tf.float32)
        return loss * n, self._correct(y, probs)

    def _train_rows_py(self, x: Any, y: Any, rows: Any, batch: Any) -> tuple[Any, Any]:
        total, correct = tf.constant(0.0), tf.constant(0.0)
        n = tf.shape(rows)[0]
        for start in tf.range(0, n, batch):
            idx = rows[start:start + batch]
            loss, hits = self._step(tf.gather(x, idx), tf.gather(y, idx))
            total += loss
            correct += hits
        return total, correct

    def _train_batches_py(self, iterator: Any) -> tuple[Any, Any, Any]:
        total, correct, seen = tf.constant(0.0), tf.constant(0.0), tf.constant(0.0)
        for _ in tf.range(STEPS_PER_EXECUTION):
            item = iterator.get_next_as_optional()
            if not item.has_value():
                break
            x, y = item.get_value()
            loss, hits = self._step(x, y)
            total += loss
            correct += hits
            seen += tf.cast(tf.shape(x)[0], tf.float32)
        return total, correct, seen

    def _eval_py(self, x: Any, y: Any) -> tuple[Any, Any]:
        probs = self.model(tf.cast(x, tf.float32), training=False)
        loss = self.loss(self._targets(y), probs) * tf.cast(tf.shape(x)[0], tf.float32)
        return loss, self._correct(y, probs)

    # -- epochs --------------------------------------------------------------------------

    def _constants(self, feed: ArrayFeed, epoch: int = 0) -> tuple[Any, Any]:
        """The epoch's arrays as tensors, made once per feed and array (views flattened)."""
        x, which = feed.epoch_inputs(epoch)
        key = (id(feed), which)
        if key not in self._arrays:
            y = np.asarray(feed.y)
            if feed.views:  # row v * n + i is view v of input i, with input i's label
                x, y = x.reshape((-1, *x.shape[2:])), np.tile(y, x.shape[0])
            self._arrays[key] = (tf.constant(x), tf.constant(y))
        return self._arrays[key]

    def train_epoch(self, feed: Feed, epoch: int) -> tuple[float, float]:
        """Train the feed's ``epoch``-th epoch (0 = its first); (mean loss, accuracy)."""
        if isinstance(feed, ArrayFeed):
            x, y = self._constants(feed, epoch)
            rows = feed.epoch_rows(epoch)
            total, correct = self._train_rows(x, y, tf.constant(rows),
                                              tf.constant(feed.batch_size))
            return float(total) / len(rows), float(correct) / len(rows)
        total = correct = seen = 0.0
        iterator = iter(feed)
        while True:  # until a call finds the iterator exhausted
            t, c, s = (float(v) for v in self._train_batches(iterator))
            if s == 0:
                break
            total, correct, seen = total + t, correct + c, seen + s
        return total / max(seen, 1.0), correct / max(seen, 1.0)

    def evaluate(self, feed: Feed) -> tuple[float, float]:
        """(mean loss, accuracy) on a feed, without training."""
        total = correct = seen = 0.0
        if isinstance(feed, ArrayFeed):
            x, y = self._constants(feed)
            n = feed.n
            for start in range(0, n, _EVAL_CHUNK):
                t, c = self._eval(x[start:start + _EVAL_CHUNK], y[start:start + _EVAL_CHUNK])
                total, correct = total + float(t), correct + float(c)
            return total / n, correct / n
        for xb, yb in feed:
            t, c = self._eval(xb, yb)
            total, correct, seen = total + float(t), correct + float(c), seen + int(xb.shape[0])
        return total / max(seen, 1.0), correct / max(seen, 1.0)

    @property
    def learning_rate(self) -> float:
        return float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))

    def set_learning_rate(self, value: float) -> None:
        self.optimizer.learning_rate.assign(value)


class _Plateau:
    """Keras' ReduceLROnPlateau rule on the validation loss (factor 0.3, no cooldown)."""

    def __init__(self, patience: int) -> None:
        self.patience, self.best, self.wait = patience, math.inf, 0

    def lowered(self, val_loss: float, lr: float) -> float | None:
        """The new learning rate if this epoch ends a plateau, else None."""
        if val_loss < self.best - _MIN_DELTA:
            self.best, self.wait = val_loss, 0
            return None
        self.wait += 1
        if self.wait < self.patience or lr <= _MIN_LR:
            return None
        self.wait = 0
        return max(lr * _PLATEAU_FACTOR, _MIN_LR)


def fit_phase(phase_no: int, phase: Phase, *, first_epoch: int, patience: int, binary: bool,
              log: TrainLog, reporter: Reporter | None) -> float:
    """Train one phase from ``first_epoch``; restore its best weights; return the best val loss."""
    model = phase.model
    engine = _Engine(model, phase.learning_rate, binary)
    plateau = _Plateau(max(1, patience - 2))
    best_loss, best_weights, wait = math.inf, None, 0
    try:
        for epoch in range(first_epoch, first_epoch + phase.max_epochs):
            loss, accuracy = engine.train_epoch(phase.train, epoch - first_epoch)
            val_loss, val_accuracy = engine.evaluate(phase.validation)
            if not math.isfinite(val_loss) or not math.isfinite(loss):
                raise TrialFailed(f"the loss became NaN or infinite at epoch {epoch + 1} (phase "
                                  f"{phase_no}); try a lower learning rate")
            lowered = plateau.lowered(val_loss, engine.learning_rate)
            if lowered is not None:
                engine.set_learning_rate(lowered)
            row = {"epoch": epoch + 1, "phase": phase_no, "phase_epoch": epoch + 1 - first_epoch,
                   "loss": loss, "accuracy": accuracy, "val_loss": val_loss,
                   "val_accuracy": val_accuracy, "learning_rate": engine.learning_rate}
            log.epochs.append(row)
            stop = False
            if val_loss < best_loss:
                best_loss, wait = val_loss, 0
                best_weights = model.get_weights()
            else:
                wait += 1
                stop = wait >= patience
            if reporter is not None:
                reporter(epoch + 1, row)
            if stop:
                break
    finally:
        if best_weights is not None:
            model.set_weights(best_weights)
    return best_loss


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
            if first is None:
                raise ValueError("make_phase(1) must return the head phase")
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
