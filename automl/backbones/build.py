"""Construct a registered backbone with Keras (the only module here that imports Keras to build)."""

from __future__ import annotations

import os
from typing import Any

from automl.backbones.registry import BackboneSpec


def build_backbone(spec: BackboneSpec, input_shape: tuple[int, int, int],
                   weights: str | os.PathLike | None) -> Any:
    """``spec``'s Keras model without its top (``weights``: None, "imagenet" or a file)."""
    kind, _, what = spec.constructor.partition(":")
    if kind == "lite":
        from automl.backbones import lite

        return lite.efficientnet_lite(int(what), include_top=False, weights=weights,
                                      input_shape=input_shape)
    import keras

    ctor = getattr(keras.applications, what)
    weights = os.fspath(weights) if weights not in (None, "imagenet") else weights
    return ctor(include_top=False, weights=weights, input_shape=input_shape)
