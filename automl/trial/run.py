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
from automl.backbones.weights import WeightsResolver
from automl.config import RunConfig, TrialConfig
from automl.data import pipeline
from automl.data.splits import Datasets, Split
from automl.errors import AutoMLError, TrialFailed, WeightsError
from automl.trial.features import Architecture, FeatureCache, FeatureKey
from automl.trial.result import TrialResult, WarmStart, head_path, weights_path
from automl.trial.trainlog import Reporter, TrainLog

if TYPE_CHECKING:  # the search process never imports TensorFlow: only the trial worker does
    from automl.trial.model import TransferModel
    from automl.trial.train import DrawnViews, Phase


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

    def measure(self, backbone: str, image_size: int, head_widths: list[int],
                features: int | None = None, convert: bool = True) -> dict[str, Any]:
        """:func:`automl.trial.cost.measure` for this run's classes."""
        from automl.trial.cost import measure
        from automl.trial.model import reset_keras

        try:
            return measure(backbone, image_size, len(self.ctx.data.class_names), head_widths,
                           features, convert)
        finally:
            reset_keras(self.ctx.run.seed)

    def stop(self, kill: bool = False) -> None:
        """Nothing to stop."""


def run_trial(config: TrialConfig, ctx: SearchContext, number: int,
              reporter: Reporter | None = None, log: TrainLog | None = None,
              warm: WarmStart | None = None) -> TrialResult:
    """Train and evaluate one configuration; TrialFailed for anything that breaks the trial.

    With ``warm`` (and no augmentation, which would change the head phase), the head phase is
    not run again: the earlier trial's head weights and epochs are taken over. A trial that
    only trains a head on cached activations never builds the backbone (see :class:`_Trainer`).
    """
    from automl.trial.model import count_params, reset_keras
    from automl.trial.train import train_two_phase

    run = ctx.run
    log = log if log is not None else TrainLog()
    reset_keras(run.seed)  # backbone and head initialisation depend on the run seed only
    trainer = _Trainer(config, ctx, number, log)
    head_done = None
    if warm is not None and config.augmentation == "none" and warm.head_weights.is_file():
        trainer.head().load_weights(str(warm.head_weights))
        log.epochs.extend(dict(row) for row in warm.history)
        head_done = warm.val_loss
    snapshot = restore = None
    if trainer.fine_tunes():
        tm = trainer.model()
        snapshot, restore = tm.inference.get_weights, tm.inference.set_weights
    train_two_phase(trainer.phase, patience=run.patience, binary=trainer.binary, reporter=reporter,
                    log=log, snapshot=snapshot, restore=restore, head_done=head_done)
    val_loss, val_acc = trainer.evaluate(ctx.data.validation, log.best_phase)
    if not math.isfinite(val_loss):
        raise TrialFailed(f"validation loss is {val_loss} after training")
    test_acc = None
    if ctx.data.test is not None:
        test_acc = trainer.evaluate(ctx.data.test, log.best_phase)[1]
    head = trainer.head()
    write_atomic(head_path(ctx.trials_dir, number), lambda p: head.save_weights(str(p)))
    if trainer.built:  # the whole model's weights (the backbone may have been fine-tuned)
        path = weights_path(ctx.trials_dir, number)
        write_atomic(path, lambda p: trainer.model().inference.save_weights(str(p)))
        kind, params = "model", count_params(trainer.model().inference)
    else:  # the backbone is the pretrained one: export rebuilds it and loads this head
        path, kind = head_path(ctx.trials_dir, number), "head"
        params = trainer.architecture().backbone_params + count_params(head)
    return TrialResult(val_accuracy=val_acc, val_loss=val_loss, test_accuracy=test_acc,
                       epochs=len(log.epochs), best_phase=log.best_phase,
                       train_seconds=log.seconds, params=params, weights_file=str(path),
                       cut=trainer.cut()[0] or "input", history=list(log.epochs),
                       weights_kind=kind, backbone_weights=trainer.source.weights,
                       backbone_identity=trainer.source.identity,
                       kind=trial_kind(trainer.cached, trainer.extracted, trainer.views > 0,
                                       any(row.get("phase") == 2 for row in log.epochs)))


def view_count(config: TrialConfig, run: RunConfig) -> int:
    """Cached views per training image for the trial's augmentation (0: none, or live)."""
    if config.augmentation == "none" or run.augment_views <= 0:
        return 0
    return 2 if config.augmentation == "flip" else run.augment_views  # flip: exact with 2


def trains_on_cache(config: TrialConfig, run: RunConfig) -> bool:
    """Whether a trial trains on cached activations (or cached views), not on live images."""
    return run.feature_cache and (config.augmentation == "none" or view_count(config, run) > 0)


def trial_kind(cached: bool, extracted: set[str], views: bool, fine_tuned: bool) -> str:
    """What dominated a trial's cost, for the benchmark: the most expensive thing it did.

    >>> trial_kind(True, {"views", "pooled"}, True, False)
    'view extraction'
    >>> trial_kind(True, set(), False, False)
    'head'
    """
    if not cached:
        return "live"
    if "views" in extracted:
        return "view extraction"
    if extracted:
        return "extraction"
    if fine_tuned:
        return "fine-tuning"
    return "augmented head" if views else "head"


class _Trainer:
    """Feeds each phase cached frozen activations (or cached augmented views of them), or live
    images; builds the backbone only when something needs it.

    The backbone is built when activations must be extracted (a cache miss), when the trial
    fine-tunes (phase 2 trains the backbone's top), or when it trains on live images
    (``--no-feature-cache``, or ``--augment-views 0`` with augmentation). Otherwise the head is
    built alone on the cached pooled activations, with the same initial weights as inside the
    whole model, and the backbone's cuts come from the architecture recorded in the cache.
    """

    def __init__(self, config: TrialConfig, ctx: SearchContext, number: int,
                 log: TrainLog) -> None:
        self.config, self.ctx, self.number, self.log = config, ctx, number, log
        self.run = ctx.run
        self.spec = get_spec(config.backbone)
        self.source = ctx.resolver.resolve(self.spec, config.image_size)
        self.binary = len(ctx.data.class_names) == 2
        self.views = view_count(config, self.run)
        self.cached = trains_on_cache(config, self.run)
        self._tm: TransferModel | None = None
        self._head: Any = None
        self.extracted: set[str] = set()  # what this trial had to extract: pooled, cut, views
        log.heavy = log.heavy or not self.cached  # live training runs the backbone every epoch

    # -- what is built ---------------------------------------------------------------------

    @property
    def built(self) -> bool:
        """Whether the whole model (backbone included) was built."""
        return self._tm is not None

    def model(self) -> TransferModel:
        """The whole transfer model, built on first use: around the head built alone, if one
        was (it may be training: a lazily made augmented view can need the backbone mid-phase)."""
        if self._tm is None:
            from automl.trial.model import build_model

            try:
                tm = build_model(self.config, self.spec, len(self.ctx.data.class_names),
                                 self.source.weights, seed=self.run.seed + self.number,
                                 head=self._head)
            except AutoMLError:
                raise
            except Exception as exc:
                if self.source.kind == "download":
                    raise WeightsError(f"downloading the ImageNet weights of '{self.spec.name}' "
                                       f"failed ({exc}). Use --weights-dir DIR with the file, or "
                                       "another backbone.") from None
                if not isinstance(exc, ValueError | TypeError | OSError):
                    raise
                raise TrialFailed(f"{self.spec.name} cannot be built at "
                                  f"{self.config.image_size} px: {exc}") from exc
            self.ctx.cache.record_architecture(self.spec.name, self.config.image_size,
                                               tm.architecture())
            self._tm, self._head = tm, tm.head  # a head built alone goes in as it is
        return self._tm

    def architecture(self) -> Architecture:
        """The backbone's cuts and widths, from the cache's record or by building it."""
        arch = self.ctx.cache.architecture(self.spec.name, self.config.image_size)
        return arch if arch is not None else self.model().architecture()

    def cut(self) -> tuple[str | None, float]:
        """The block boundary this trial's freeze depth falls on: (layer, depth)."""
        if self._tm is not None:
            return self._tm.cut.layer, self._tm.cut.depth
        from automl.trial.model import Cut, choose_cut

        cut = choose_cut([Cut(n, d) for n, d in self.architecture().cuts],
                         self.config.freeze_depth)
        return cut.layer, cut.depth

    def fine_tunes(self) -> bool:
        """Whether the trial has a phase 2 (a top above the cut, and epochs for it)."""
        return self.run.fine_tune_epochs > 0 and self.cut()[1] < 1.0

    def head(self) -> Any:
        """The head: the whole model's, or built alone on the pooled activations' width."""
        if self._head is None:
            if not self.cached or self.fine_tunes() or self._tm is not None:
                return self.model().head  # (fine_tunes() may have built the model just now)
            import keras

            from automl.trial.model import build_head

            keras.utils.set_random_seed(self.run.seed + self.number)
            self._head = build_head(self.config, self.architecture().features,
                                    len(self.ctx.data.class_names), self.run.seed + self.number)
        return self._head

    # -- phases ----------------------------------------------------------------------------

    def phase(self, number: int) -> Phase | None:
        from automl.trial.train import ArrayFeed, Phase

        run = self.run
        lr = self.config.learning_rate * (1.0 if number == 1 else run.fine_tune_lr_factor)
        epochs = run.epochs if number == 1 else run.fine_tune_epochs
        if number == 2 and not self.fine_tunes():
            return None
        self.log.heavy = self.log.heavy or number == 2  # fine-tuning runs the backbone's top
        if self.built or number == 2 or not self.cached:
            self.model().set_phase(number)
        data = self.ctx.data
        import keras

        # the batch order (tf.data's seeded shuffle) depends on the global seed too: set right
        # before the feeds are made, whether or not building the model (which reseeds) happened
        if not self.cached:
            keras.utils.set_random_seed(run.seed + self.number)
        if self.cached:  # activations first: a cache miss builds the model (and its head)
            at_cut = number == 2
            train_x, views = self.train_features(at_cut)
            keras.utils.set_random_seed(run.seed + self.number)  # after any extraction
            train = ArrayFeed(train_x, data.train.labels, run.batch_size, shuffle=True,
                              seed=run.seed, views=views)
            val = ArrayFeed(self.features(data.validation, at_cut), data.validation.labels,
                            run.batch_size)
            model = self.model().top_model() if at_cut else self.head()
        else:
            tm = self.model()
            model = tm.train_model(number)
            size = self.config.image_size
            train = pipeline.dataset(data.train, size, run.batch_size, shuffle=True,
                                     seed=run.seed)
            val = pipeline.dataset(data.validation, size, run.batch_size)
        return Phase(model, train, val, lr, epochs)

    # -- cached activations ----------------------------------------------------------------

    def _key(self, split: Split, at_cut: bool, policy: str = "none", view: int = 0,
             layer: str | None = None) -> FeatureKey:
        """The cache key of activations at this trial's cut (or at ``layer``), or pooled."""
        cut = (layer or self.cut()[0] or "input") if at_cut else "pooled"
        return FeatureKey(self.ctx.data.fingerprint, split.name, self.spec.name,
                          self.source.identity, self.config.image_size, cut, policy, view,
                          self.run.seed if policy != "none" else 0)

    def features(self, split: Split, at_cut: bool) -> np.ndarray:
        """Frozen activations of ``split`` (pooled backbone output, or at the cut)."""
        return self.ctx.cache.get(self._key(split, at_cut), self._extract(split, at_cut, None))

    def train_features(self, at_cut: bool) -> tuple[np.ndarray | DrawnViews, bool]:
        """The training split's activations, or its augmented views; (x, mixed views?).

        ``flip`` has exactly two views, the images as they are and mirrored, stacked
        ``[2, n, ...]`` and mixed per image. ``light`` and ``heavy`` have ``--augment-views``
        views, each one random draw of the policy per image, made when an epoch first reads it
        (:class:`~automl.trial.train.DrawnViews`).
        """
        from automl.trial.train import DrawnViews

        split = self.ctx.data.train
        if not self.views:
            return self.features(split, at_cut), False
        if self.config.augmentation == "flip":
            return np.stack([self.features(split, at_cut), self._view(at_cut, 1)]), True
        return DrawnViews([lambda v=v: self._view(at_cut, v) for v in range(self.views)]), False

    def _view(self, at_cut: bool, view: int) -> np.ndarray:
        """Cached augmented view ``view`` of the training split's activations."""
        split = self.ctx.data.train
        key = self._key(split, at_cut, self.config.augmentation, view)
        return self.ctx.cache.get(key, self._extract(split, at_cut, view))

    def _extract(self, split: Split, at_cut: bool,
                 view: int | None) -> Callable[[], np.ndarray]:
        """Compute the activations on a cache miss (the backbone runs over the images).

        One pass gives the pooled output and the activations at every cut this run's space can
        ask for (``RunConfig.cut_depths``); all of them are cached, the one asked for returned.
        """
        def compute() -> np.ndarray:
            from automl.trial import views
            from automl.trial.model import choose_cut

            self.log.heavy = True
            self.extracted.add("views" if view is not None else "cut" if at_cut else "pooled")
            tm = self.model()
            cuts = {choose_cut(tm.cuts, depth) for depth in self.run.cut_depths}
            layers = sorted({c.layer for c in cuts if c.depth < 1.0} | (
                {tm.cut.layer} if at_cut else set()), key=lambda name: name or "")
            augment = None if view is None else views.view_augmentation(
                self.config.augmentation, self.run.seed, view)
            arrays = extract_features(tm.features_model(layers), split, self.config.image_size,
                                      self.run.batch_size, augment)
            arrays = arrays if isinstance(arrays, list) else [arrays]  # one output: pooled
            policy = "none" if view is None else self.config.augmentation
            named = dict(zip([*layers, "pooled"], arrays, strict=True))
            wanted = tm.cut.layer if at_cut else "pooled"
            for name, array in named.items():
                if name != wanted:
                    self.ctx.cache.put(self._key(split, name != "pooled", policy, view or 0,
                                                 layer=name or "input"), array)
            return named[wanted]
        return compute

    def evaluate(self, split: Split, best_phase: int) -> tuple[float, float]:
        """(loss, accuracy) of the trained model on a split."""
        if self.cached:
            at_cut = best_phase == 2 and self.fine_tunes()
            x = self.features(split, at_cut)
            model = self.model().top_model() if at_cut else self.head()
            probs = model.predict(x, batch_size=1024, verbose=0)
        else:
            tm = self.model()
            images = pipeline.images(split, self.config.image_size).batch(self.run.batch_size)
            probs = tm.inference.predict(images, verbose=0)
        return scores(probs, split.labels)


def extract_features(model: Any, split: Split, size: int, batch_size: int,
                     augment: Callable[[Any], Any] | None = None) -> Any:
    """Run the frozen part over a split, batched, in the split's fixed order (``augment``: a
    function applied to each float batch first, e.g. one augmented view). A model with several
    outputs gives a list of arrays.

    Plain and augmented activations go through the same compiled call, so a cached view equals
    what the frozen part computes on that augmented image during training. In-memory images are
    fed as slices of their resized tensor rather than through ``tf.data``: on 2 cores the
    pipeline's threads compete with the convolutions, and about one pass in three then ran at
    half speed (Lite0, 96 px, 7,000 images: 20.6-21.3 s against 10.7-11.5 s sliced).
    """
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def frozen(x: Any) -> Any:
        x = tf.cast(x, tf.float32)
        return model(x if augment is None else augment(x), training=False)

    if split.array is not None:  # slices of the resized tensor: no tf.data threads (see above)
        images = pipeline.resized_tensor(split, size)
        batches = [frozen(images[start:start + batch_size])
                   for start in range(0, len(split), batch_size)]
    else:
        files = pipeline.images(split, size).batch(batch_size)
        batches = [frozen(x) for x in files.prefetch(tf.data.AUTOTUNE)]
    if not isinstance(batches[0], list | tuple):
        return np.concatenate([b.numpy() for b in batches])
    return [np.concatenate([b[i].numpy() for b in batches]) for i in range(len(batches[0]))]


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
