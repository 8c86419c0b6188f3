"""Backbones as plain data: importable without TensorFlow (``edgeclf train --help`` lists them)."""
from __future__ import annotations

from dataclasses import dataclass

from edgeclf.errors import EdgeclfError


@dataclass(frozen=True)
class Backbone:
    name: str
    constructor: str | None  # attribute of keras.applications; None for our own plain CNN
    size: int  # default input side in pixels
    preprocess: str  # how 0..255 RGB becomes the backbone's input, inside the graph: tf|caffe|torch|none|unit
    weights_file: str | None = None  # official Keras no-top ImageNet file name ({alpha}, {size} filled in)
    alpha: float | None = None
    min_size: int = 32
    note: str = ""

    def weights_filename(self, size: int | None = None) -> str | None:
        if self.weights_file is None:
            return None
        rows = size or self.size
        rows = rows if rows in (96, 128, 160, 192, 224) else 224
        return self.weights_file.format(alpha=self.alpha, rows=rows)


_MNV2 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}_no_top.h5"

BACKBONES: dict[str, Backbone] = {b.name: b for b in [
    Backbone("inception_resnet_v2", "InceptionResNetV2", 299, "tf",
             "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5", min_size=75,
             note="flagship; 54 M params, for users with a GPU"),
    Backbone("mobilenet_v2", "MobileNetV2", 224, "tf", _MNV2, alpha=1.0,
             note="the edge default"),
    Backbone("mobilenet_v2_035", "MobileNetV2", 224, "tf", _MNV2, alpha=0.35,
             note="tiny; what the tests use"),
    Backbone("efficientnet_b0", "EfficientNetB0", 224, "none", "efficientnetb0_notop.h5",
             note="loses accuracy in int8 PTQ: prefer fp16 or --qat"),
    Backbone("inception_v3", "InceptionV3", 299, "tf",
             "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", min_size=75),
    Backbone("resnet50", "ResNet50", 224, "caffe",
             "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("vgg16", "VGG16", 224, "caffe", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    Backbone("simple_cnn", None, 128, "unit", None,
             note="small CNN trained from scratch: the baseline transfer learning must beat"),
]}


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise EdgeclfError(f"unknown model {name!r}; choose one of: {', '.join(BACKBONES)}") from None
