"""Build a trial's transfer model: preprocessing, backbone cut at a block boundary, head.

The backbone is split at the freeze cut into a ``bottom`` (always frozen) and a ``top`` (fine-tuned
in phase two). Both are sub-models sharing the backbone's layers, so the same weights serve the
full ``inference`` model, the cached-feature models and export.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import keras

from automl.backbones.build import build_backbone
from automl.backbones.registry import BackboneSpec
from automl.config import TrialConfig
from automl.trial.features import Architecture
from automl.trial.layers import Preprocess, augmentation_layers


def reset_keras(seed: int) -> None:
    """The one place that resets Keras state between trials: clear the session, collect, give
    freed memory back to the system, seed."""
    keras.backend.clear_session(free_memory=True)  # collects garbage (once is enough)
    _trim_malloc()
    keras.utils.set_random_seed(seed)


def _trim_malloc() -> None:
    """glibc keeps freed blocks in its arenas; hand them back (a no-op elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class Cut:
    """Where the backbone is split: after ``layer`` (None = before the first layer)."""

    layer: str | None
    depth: float  # share of the backbone's weighted layers before the cut


def block_cuts(backbone: keras.Model, pattern: str) -> list[Cut]:
    """Every block boundary of ``backbone``, from the input (depth 0) to the output (depth 1).

    A boundary is a layer matching ``pattern`` whose output is the only activation that layers
    after it use (so no residual branch crosses the cut). If the pattern finds none, every such
    single-activation point counts.
    """
    layers = [op for op in backbone.operations if not isinstance(op, keras.layers.InputLayer)]
    position = {id(layer): i for i, layer in enumerate(layers)}
    last_use = [-1] * len(layers)  # the index of the last layer consuming layer i's output
    input_last_use = -1
    for i, layer in enumerate(layers):
        for producer in _producers(layer):
            j = position.get(id(producer))
            if j is None:
                input_last_use = max(input_last_use, i)
            else:
                last_use[j] = max(last_use[j], i)
    weighted = [1 if getattr(layer, "weights", None) else 0 for layer in layers]
    total = max(sum(weighted), 1)
    single: list[tuple[str, float]] = []
    done, earlier = 0, input_last_use  # earlier: last use of any output produced before layer i
    for i, layer in enumerate(layers[:-1]):
        done += weighted[i]
        if earlier <= i and 0.0 < done / total < 1.0:
            single.append((layer.name, done / total))
        earlier = max(earlier, last_use[i])
    regex = re.compile(pattern)
    matching = [cut for cut in single if regex.search(cut[0])]
    chosen = matching or single
    return [Cut(None, 0.0), *(Cut(n, d) for n, d in chosen), Cut(layers[-1].name, 1.0)]


def _producers(layer: keras.layers.Layer) -> list[Any]:
    """The operations whose outputs ``layer`` consumes, over every call of it.

    Keras 3 keeps a layer's call graph private (``_inbound_nodes``, ``_keras_history``): the
    public ``layer.input`` covers only its first call and fails for a layer called more than
    once, and ``get_config()`` names layers instead of returning them (and serialises the whole
    backbone). pyproject.toml bounds Keras to the versions tested.
    """
    return [tensor._keras_history.operation
            for node in layer._inbound_nodes for tensor in node.input_tensors]


def choose_cut(cuts: list[Cut], freeze_depth: float) -> Cut:
    """The block boundary nearest to ``freeze_depth`` (ties go to the deeper, more frozen cut)."""
    return min(reversed(cuts), key=lambda cut: abs(cut.depth - freeze_depth))


@dataclass
class TransferModel:
    """A trial's model and its parts; all parts share one set of weights."""

    config: TrialConfig
    spec: BackboneSpec
    n_classes: int
    cut: Cut
    inference: keras.Model     # 0..255 RGB image -> class probabilities (no augmentation)
    bottom: keras.Model        # preprocessed image -> activation at the cut (always frozen)
    top: keras.Model | None    # activation at the cut -> backbone output (None if cut at output)
    head: keras.Model          # pooled backbone features -> class probabilities
    augment: list[keras.layers.Layer]
    cuts: list[Cut]            # every block boundary of the backbone
    backbone: keras.Model      # the whole backbone (bottom and top share its layers)

    @property
    def binary(self) -> bool:
        return self.n_classes == 2

    def feature_model(self, at_cut: bool) -> keras.Model:
        """Image -> the frozen activations to cache: at the cut, or pooled backbone output."""
        image = self.inference.inputs[0]
        x = self.inference.get_layer("preprocess")(image)
        x = self.bottom(x)
        if not at_cut:
            if self.top is not None:
                x = self.top(x)
            x = self.inference.get_layer("avg_pool")(x)
        return keras.Model(image, x, name="features")

    def features_model(self, cuts: list[str | None]) -> keras.Model:
        """Image -> [activation at each cut..., pooled backbone output], in one pass.

        A cut of None is the preprocessed image itself (the whole backbone fine-tunes).
        """
        image = self.inference.inputs[0]
        x = self.inference.get_layer("preprocess")(image)
        layers = [c for c in cuts if c is not None]
        inner = keras.Model(self.backbone.inputs[0],
                            [self.backbone.get_layer(c).output for c in layers]
                            + [self.backbone.output], name="backbone_taps")
        taps = list(inner(x, training=False))
        found = dict(zip(layers, taps[:-1], strict=True))
        outputs = [x if c is None else found[c] for c in cuts]
        pooled = self.inference.get_layer("avg_pool")(taps[-1])
        return keras.Model(image, [*outputs, pooled], name="features_and_cuts")

    def top_model(self) -> keras.Model:
        """Activation at the cut -> probabilities: what phase two trains on cached features."""
        if self.top is None:
            raise ValueError("the cut is at the backbone output: there is no top to fine-tune")
        inp = keras.Input(self.bottom.output.shape[1:], name="cut_activation")
        x = self.inference.get_layer("avg_pool")(self.top(inp))
        return keras.Model(inp, self.head(x), name="top_and_head")

    def train_model(self, phase: int = 1) -> keras.Model:
        """Image -> probabilities with the augmentation layers in front (live training).

        The frozen part runs in inference mode: the bottom always, the top in phase 1 (in
        phase 2 it trains, dropout included; its BatchNormalization stays in inference mode).
        """
        if not self.augment and (phase == 2 or self.top is None):
            return self.inference
        image = keras.Input(self.inference.inputs[0].shape[1:], name="image")
        x = image
        for layer in self.augment:
            x = layer(x)
        x = self.inference.get_layer("preprocess")(x)
        x = self.bottom(x, training=False)
        if self.top is not None:
            x = self.top(x) if phase == 2 else self.top(x, training=False)
        x = self.inference.get_layer("avg_pool")(x)
        return keras.Model(image, self.head(x), name="train")

    def architecture(self) -> Architecture:
        """What a head-only trial needs of this backbone: its cuts, width and size."""
        top = count_params(self.top) if self.top is not None else 0  # bottom + top: the backbone
        return Architecture(tuple((c.layer, c.depth) for c in self.cuts),
                            int(self.head.inputs[0].shape[-1]), count_params(self.bottom) + top)

    def set_phase(self, phase: int) -> None:
        """Phase 1: only the head trains. Phase 2: the backbone top trains too (BN stays frozen)."""
        self.bottom.trainable = False
        if self.top is not None:
            self.top.trainable = phase == 2
            for layer in self.top.layers:
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False  # inference mode: keep ImageNet statistics
        self.head.trainable = True


def build_model(config: TrialConfig, spec: BackboneSpec, n_classes: int,
                weights: str | os.PathLike | None, seed: int = 0,
                head: keras.Model | None = None) -> TransferModel:
    """Build the transfer model of ``config`` (``weights``: None, "imagenet" or a file).

    ``head``: a head already built alone (:func:`build_head`, maybe trained) to put on top,
    the same object, instead of a new one.
    """
    size = config.image_size
    backbone = build_backbone(spec, (size, size, 3), weights)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    cuts = block_cuts(backbone, spec.block_pattern)
    cut = choose_cut(cuts, config.freeze_depth)
    bottom, top = _split(backbone, cut)
    # the head's initial weights depend on the seed only, not on what loading the backbone drew
    if head is None:
        keras.utils.set_random_seed(seed)
        head = build_head(config, int(backbone.output.shape[-1]), n_classes, seed)

    image = keras.Input((size, size, 3), name="image")
    x = Preprocess(spec.preprocess, name="preprocess")(image)
    x = bottom(x, training=False)  # the frozen part runs in inference mode, also in training
    if top is not None:
        x = top(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    inference = keras.Model(image, head(x), name=f"{spec.name}_transfer")
    model = TransferModel(config, spec, n_classes, cut, inference, bottom, top, head,
                          augmentation_layers(config.augmentation, seed), cuts, backbone)
    model.set_phase(1)
    return model


def build_head(config: TrialConfig, features: int, n_classes: int, seed: int) -> keras.Model:
    """Pooled backbone features -> class probabilities: optional Dense+ReLU, Dropout, output.

    The one head builder: the whole model's head and a head trained alone on cached activations
    are the same model with the same initial weights (the caller seeds Keras right before).
    """
    pooled = keras.Input((features,), name="pooled_features")
    x = pooled
    if config.head_width > 0:
        x = keras.layers.Dense(config.head_width, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(config.dropout, seed=seed, name="head_dropout")(x)
    units, activation = (1, "sigmoid") if n_classes == 2 else (n_classes, "softmax")
    out = keras.layers.Dense(units, activation=activation, name="predictions")(x)
    return keras.Model(pooled, out, name="head")


def _split(backbone: keras.Model, cut: Cut) -> tuple[keras.Model, keras.Model | None]:
    """Two sub-models sharing the backbone's layers: input -> cut, cut -> output."""
    if cut.depth >= 1.0:
        return backbone, None
    if cut.layer is None:
        identity = keras.Model(backbone.inputs[0], backbone.inputs[0], name="bottom")
        return identity, backbone
    at = next(op for op in backbone.operations if op.name == cut.layer).output
    bottom = keras.Model(backbone.inputs[0], at, name="bottom")
    top = keras.Model(at, backbone.output, name="top")
    return bottom, top


def count_params(model: keras.Model) -> int:
    """All parameters of a model (trainable or not)."""
    return int(sum(int(_size(w.shape)) for w in model.weights))


def _size(shape: Any) -> int:
    n = 1
    for dim in shape:
        n *= int(dim)
    return n
