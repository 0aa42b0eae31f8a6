"""One trial: config -> build -> train (cached activations or live images) -> evaluate -> result.

Runs in the trial worker process (:mod:`automl.trial.serve`), or in the search process with
``--in-process`` (:class:`InProcessRunner`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from automl.atomic import write_atomic
from automl.backbones.registry import get_spec
from automl.backbones.weights import WeightsResolver, WeightsSource
from automl.config import RunConfig, TrialConfig
from automl.data import pipeline
from automl.data.splits import Datasets, Split
from automl.errors import AutoMLError, TrialFailed, WeightsError
from automl.trial.features import FeatureCache, FeatureKey
from automl.trial.result import TrialResult, WarmStart, head_path, weights_path
from automl.trial.trainlog import Reporter, TrainLog

if TYPE_CHECKING:  # the search process never imports TensorFlow: only the trial worker does
    from automl.trial.model import TransferModel
    from automl.trial.train import Phase


@dataclass
class SearchContext:
    """What every trial of a run shares."""

    data: Datasets
    run: RunConfig
    resolver: WeightsResolver
    cache: FeatureCache
    trials_dir: Path
    worker: Any = None   # automl.search.worker.TrialWorker: trials run in its process (None: here)


class InProcessRunner:
    """Runs trials in this process (``--in-process``, tests): a TrialRunner without a worker."""

    memory = None    # no worker process whose memory to report
    last_pid = None

    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx

    def run(self, config: TrialConfig, run: RunConfig, number: int,
            reporter: Reporter | None, train_log: TrainLog,
            warm: WarmStart | None = None) -> TrialResult:
        """``run_trial`` with this run's settings."""
        return run_trial(config, dataclasses.replace(self.ctx, run=run), number, reporter,
                         train_log, warm)

    def stop(self, kill: bool = False) -> None:
        """Nothing to stop."""


def run_trial(config: TrialConfig, ctx: SearchContext, number: int,
              reporter: Reporter | None = None, log: TrainLog | None = None,
              warm: WarmStart | None = None) -> TrialResult:
    """Train and evaluate one configuration; TrialFailed for anything that breaks the trial.

    With ``warm`` (and no augmentation, which would change the head phase), the head phase is
    not run again: the earlier trial's head weights and epochs are taken over.
    """
    from automl.trial.model import build_model, count_params, reset_keras
    from automl.trial.train import train_two_phase

    run = ctx.run
    log = log if log is not None else TrainLog()
    spec = get_spec(config.backbone)
    source = ctx.resolver.resolve(spec, config.image_size)
    n_classes = len(ctx.data.class_names)
    reset_keras(run.seed)  # backbone and head initialisation depend on the run seed only
    try:
        tm = build_model(config, spec, n_classes, source.weights, seed=run.seed + number)
    except AutoMLError:
        raise
    except Exception as exc:
        if source.kind == "download":
            raise WeightsError(f"downloading the ImageNet weights of '{spec.name}' failed ({exc}). "
                               "Use --weights-dir DIR with the file, or another backbone."
                               ) from None
        if not isinstance(exc, ValueError | TypeError | OSError):
            raise
        raise TrialFailed(f"{spec.name} cannot be built at {config.image_size} px: {exc}") from exc
    import keras

    keras.utils.set_random_seed(run.seed + number)
    cached = run.feature_cache and config.augmentation == "none"
    trainer = _Trainer(tm, ctx, source, cached, log)
    head_done = None
    if warm is not None and config.augmentation == "none" and warm.head_weights.is_file():
        tm.head.load_weights(str(warm.head_weights))
        log.epochs.extend(dict(row) for row in warm.history)
        head_done = warm.val_loss
    train_two_phase(trainer.phase, patience=run.patience, binary=tm.binary, reporter=reporter,
                    log=log, snapshot=tm.inference.get_weights, restore=tm.inference.set_weights,
                    head_done=head_done)
    val_loss, val_acc = trainer.evaluate(ctx.data.validation, log.best_phase)
    if not math.isfinite(val_loss):
        raise TrialFailed(f"validation loss is {val_loss} after training")
    test_acc = None
    if ctx.data.test is not None:
        test_acc = trainer.evaluate(ctx.data.test, log.best_phase)[1]
    path = weights_path(ctx.trials_dir, number)
    write_atomic(path, lambda p: tm.inference.save_weights(str(p)))
    write_atomic(head_path(ctx.trials_dir, number), lambda p: tm.head.save_weights(str(p)))
    return TrialResult(val_accuracy=val_acc, val_loss=val_loss, test_accuracy=test_acc,
                       epochs=len(log.epochs), best_phase=log.best_phase,
                       train_seconds=log.seconds, params=count_params(tm.inference),
                       weights_file=str(path), cut=tm.cut.layer or "input",
                       history=list(log.epochs))


class _Trainer:
    """Feeds each phase either cached frozen activations or live images."""

    def __init__(self, tm: TransferModel, ctx: SearchContext, source: WeightsSource,
                 cached: bool, log: TrainLog) -> None:
        self.tm, self.ctx, self.source, self.cached = tm, ctx, source, cached
        self.run, self.log = ctx.run, log
        log.heavy = log.heavy or not cached  # live training runs the backbone every epoch

    def phase(self, number: int) -> Phase | None:
        from automl.trial.train import Phase

        tm, run = self.tm, self.run
        lr = tm.config.learning_rate * (1.0 if number == 1 else run.fine_tune_lr_factor)
        epochs = run.epochs if number == 1 else run.fine_tune_epochs
        if number == 2 and (tm.top is None or epochs <= 0):
            return None
        self.log.heavy = self.log.heavy or number == 2  # fine-tuning runs the backbone's top
        tm.set_phase(number)
        data = self.ctx.data
        if self.cached:
            at_cut = number == 2
            model = tm.top_model() if at_cut else tm.head
            train = self._arrays(self.features(data.train, at_cut), data.train.labels, True)
            val = self._arrays(self.features(data.validation, at_cut), data.validation.labels)
        else:
            model = tm.train_model()
            size = tm.config.image_size
            train = self._labels(pipeline.dataset(data.train, size, run.batch_size, shuffle=True,
                                                    seed=run.seed))
            val = self._labels(pipeline.dataset(data.validation, size, run.batch_size))
        return Phase(model, train, val, lr, epochs)

    def features(self, split: Split, at_cut: bool) -> np.ndarray:
        """Frozen activations of ``split`` (pooled backbone output, or at the cut)."""
        tm = self.tm
        key = FeatureKey(self.ctx.data.fingerprint, split.name, tm.spec.name,
                         self.source.identity, tm.config.image_size,
                         (tm.cut.layer or "input") if at_cut else "pooled")
        return self.ctx.cache.get(key, self._extract(split, at_cut))

    def _extract(self, split: Split, at_cut: bool) -> Callable[[], np.ndarray]:
        """Compute the activations on a cache miss (the backbone runs over the images)."""
        def compute() -> np.ndarray:
            self.log.heavy = True
            return extract_features(self.tm.feature_model(at_cut), split,
                                    self.tm.config.image_size, self.run.batch_size)
        return compute

    def evaluate(self, split: Split, best_phase: int) -> tuple[float, float]:
        """(loss, accuracy) of the trained model on a split."""
        tm = self.tm
        if self.cached:
            at_cut = best_phase == 2 and tm.top is not None
            model = tm.top_model() if at_cut else tm.head
            probs = model.predict(self.features(split, at_cut), batch_size=256, verbose=0)
        else:
            images = pipeline.images(split, tm.config.image_size).batch(self.run.batch_size)
            probs = tm.inference.predict(images, verbose=0)
        return scores(probs, split.labels)

    def _arrays(self, x: np.ndarray, y: np.ndarray, shuffle: bool = False) -> Any:
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices((x, self._y(y)))
        if shuffle:
            ds = ds.shuffle(len(x), seed=self.run.seed, reshuffle_each_iteration=True)
        return ds.batch(self.run.batch_size).prefetch(tf.data.AUTOTUNE)

    def _labels(self, ds: Any) -> Any:
        if not self.tm.binary:
            return ds
        return ds.map(lambda x, y: (x, self._y(y)))

    def _y(self, y: Any) -> Any:
        if not self.tm.binary:
            return y
        import tensorflow as tf

        return tf.reshape(tf.cast(y, tf.float32), (-1, 1))


def extract_features(model: Any, split: Split, size: int, batch_size: int) -> np.ndarray:
    """Run the frozen part over a split, batched, in the split's fixed order."""
    import tensorflow as tf

    images = pipeline.images(split, size).batch(batch_size).map(lambda x: tf.cast(x, tf.float32))
    return model.predict(images.prefetch(tf.data.AUTOTUNE), verbose=0)


def scores(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(cross-entropy, accuracy) of predicted probabilities (one sigmoid column = binary)."""
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 2 and probs.shape[1] == 1:
        probs = np.concatenate([1.0 - probs, probs], axis=1)
    eps = 1e-7
    picked = np.clip(probs[np.arange(len(labels)), labels], eps, 1.0)
    loss = float(-np.mean(np.log(picked)))
    accuracy = float(np.mean(np.argmax(probs, axis=1) == labels))
    return loss, accuracy
