"""Build Keras classifiers from the registry. Imports TensorFlow: only training and export use this.

The model is one *flat* functional graph (the backbone's layers are built on our own input tensor,
not nested as a sub-model), so that layer freezing, caching at a cut point and tfmot's
quantization-aware training all see the same layers:

    Input(H, W, 3) float 0..255 -> preprocessing layers -> backbone -> head_pool -> head_dropout
    -> [head_dense -> head_dropout2] -> head_logits (softmax)
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from edgeclf.errors import EdgeclfError
from edgeclf.models.registry import Backbone, get_backbone

HEAD_PREFIX = "head_"
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


class WeightsNotFound(EdgeclfError):
    """ImageNet weights that are neither on disk nor downloadable."""


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def weights_search_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("EDGECLF_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["EDGECLF_WEIGHTS_DIR"]).expanduser())
    dirs.append(keras_cache_dir())
    return dirs


def resolve_weights(backbone: Backbone, size: int) -> str | None:
    """Path of the no-top ImageNet weights file for ``backbone`` at ``size``.

    Looks in ``$EDGECLF_WEIGHTS_DIR``, then Keras' cache, then lets Keras download it. Offline and
    missing, raises :class:`WeightsNotFound` naming the file and the folder to put it in.
    """
    if backbone.weights_file is None:
        return None
    wanted = backbone.weights_filename(size)
    # No-top weights are fully convolutional: the 224 file serves any input size.
    candidates = [wanted] + ([backbone.weights_filename(224)] if backbone.weights_filename(224) != wanted else [])
    for folder in weights_search_dirs():
        for name in candidates:
            if (folder / name).is_file():
                return str(folder / name)
    # Not on disk: try Keras' own download, briefly.
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        import keras

        ctor = getattr(keras.applications, backbone.constructor)
        kwargs = {"alpha": backbone.alpha} if backbone.alpha is not None else {}
        ctor(include_top=False, weights="imagenet", input_shape=(size, size, 3), **kwargs)
        for name in candidates:
            if (keras_cache_dir() / name).is_file():
                return str(keras_cache_dir() / name)
        return "imagenet"
    except Exception:
        where = os.environ.get("EDGECLF_WEIGHTS_DIR") or str(keras_cache_dir())
        raise WeightsNotFound(
            f"ImageNet weights for {backbone.name} not found and could not be downloaded: put "
            f"{candidates[-1]} in {where} (or set EDGECLF_WEIGHTS_DIR), or train with --weights none"
        ) from None
    finally:
        socket.setdefaulttimeout(old_timeout)


@dataclass(frozen=True)
class HeadSpec:
    units: int = 0  # 0: no hidden dense layer
    dropout: float = 0.2


def _preprocess(x, backbone: Backbone, K, quantizable: bool = False):
    """0..255 RGB -> the backbone's input, as layers of the graph (so it travels into every export).

    ``quantizable``: the affine rescaling as a frozen 1x1 depthwise convolution (same arithmetic) instead
    of ``Rescaling``, which tensorflow-model-optimization's quantization-aware training refuses.
    """
    import numpy as np

    if backbone.preprocess in ("tf", "unit"):
        scale, offset = (1.0 / 127.5, -1.0) if backbone.preprocess == "tf" else (1.0 / 255.0, 0.0)
        if not quantizable:
            return K.layers.Rescaling(scale, offset=offset, name="preprocess")(x)
        layer = K.layers.DepthwiseConv2D(1, use_bias=True, name="preprocess", trainable=False)
        y = layer(x)
        layer.set_weights([np.full((1, 1, 3, 1), scale, np.float32), np.full((3,), offset, np.float32)])
        return y
    if backbone.preprocess == "caffe":
        # RGB -> BGR and mean subtraction as a fixed 1x1 convolution: a standard op in every format.
        conv = K.layers.Conv2D(3, 1, name="preprocess", trainable=False)
        y = conv(x)
        kernel = np.zeros((1, 1, 3, 3), dtype="float32")
        for out_c, in_c in enumerate((2, 1, 0)):
            kernel[0, 0, in_c, out_c] = 1.0
        conv.set_weights([kernel, -np.asarray(CAFFE_MEAN_BGR, dtype="float32")])
        return y
    if backbone.preprocess == "none":  # the backbone normalises by itself (EfficientNet)
        return x
    raise ValueError(f"unknown preprocessing {backbone.preprocess!r}")


def _simple_cnn(x, K):
    for i, filters in enumerate((32, 64, 128, 256)):
        x = K.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"cnn{i}_conv")(x)
        x = K.layers.BatchNormalization(name=f"cnn{i}_bn")(x)
        x = K.layers.ReLU(name=f"cnn{i}_relu")(x)
        x = K.layers.MaxPooling2D(name=f"cnn{i}_pool")(x) if i < 3 else x
    return x


def build_classifier(model: str, size: int, num_classes: int, weights: str = "imagenet",
                     head: HeadSpec = HeadSpec(), K=None, quantizable: bool = False):
    """A Keras model taking RGB float 0..255 (size x size) and giving softmax probabilities.

    ``K`` is the Keras module to build with (default ``keras``, Keras 3); quantization-aware training
    passes ``tf_keras`` with ``quantizable=True`` to rebuild the very same classifier for tfmot.
    """
    if K is None:
        import keras as K

    backbone = get_backbone(model)
    if size < backbone.min_size:
        raise ValueError(f"{model} needs an input of at least {backbone.min_size} px (got {size})")
    inputs = K.Input((size, size, 3), name="image")
    x = _preprocess(inputs, backbone, K, quantizable)
    if backbone.constructor is None:
        x = _simple_cnn(x, K)
    else:
        if weights == "imagenet":
            w = resolve_weights(backbone, size)
        elif weights in ("none", None):
            w = None
        else:
            w = str(weights)
            if not Path(w).is_file():
                raise WeightsNotFound(f"weights file {w} does not exist")
        ctor = getattr(K.applications, backbone.constructor)
        kwargs = {"alpha": backbone.alpha} if backbone.alpha is not None else {}
        base = ctor(include_top=False, weights=w, input_tensor=x, **kwargs)
        x = base.output
    x = K.layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = K.layers.Dropout(head.dropout, name="head_dropout")(x)
    if head.units:
        x = K.layers.Dense(head.units, activation="relu", name="head_dense")(x)
        x = K.layers.Dropout(head.dropout, name="head_dropout2")(x)
    outputs = K.layers.Dense(num_classes, activation="softmax", name="head_logits", dtype="float32")(x)
    return K.Model(inputs, outputs, name=f"edgeclf_{model}")


def head_spec(model) -> HeadSpec:
    """The head a built classifier carries (hidden units, dropout rate), read from its layers."""
    units = 0
    try:
        units = int(model.get_layer("head_dense").units)
    except ValueError:
        pass
    try:
        dropout = float(model.get_layer("head_dropout").rate)
    except ValueError:
        dropout = HeadSpec().dropout
    return HeadSpec(units, dropout)


def is_head(layer) -> bool:
    return layer.name.startswith(HEAD_PREFIX)


def backbone_layers(model) -> list:
    """Layers with weights that belong to the backbone (in graph order), preprocessing excluded."""
    return [l for l in model.layers if not is_head(l) and l.name != "preprocess" and l.weights]


def set_trainable(model, unfreeze: int | str) -> int:
    """Freeze the backbone but its top ``unfreeze`` weighted layers (``'all'``: every layer).

    Batch-norm layers stay frozen, so they run in inference mode and keep their ImageNet statistics.
    Returns how many backbone layers are trainable.
    """
    import keras

    layers = backbone_layers(model)
    n = len(layers) if unfreeze == "all" else max(0, min(int(unfreeze), len(layers)))
    top = set(id(l) for l in layers[len(layers) - n:]) if n else set()
    count = 0
    for layer in model.layers:
        if is_head(layer):
            layer.trainable = True
        elif id(layer) in top and not isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = True
            count += 1
        else:
            layer.trainable = False
    return count
