"""Augmentation (Keras preprocessing layers; TensorFlow: training only).

The tf.data pipelines that feed training are in :mod:`edgeclf.train.inputs`: batches of cached
features, or images decoded and resized by edgeclf.imageio, the same function the runtime uses.
"""
from __future__ import annotations

import numpy as np


def make_augmenter(flip: bool = True, rotation: float = 0.05, zoom: float = 0.1, contrast: float = 0.1,
                   seed: int = 0):
    """Keras preprocessing layers: random flip, rotation, zoom and contrast (training only)."""
    import keras

    layers = []
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation, fill_mode="reflect", seed=seed + 1))
    if zoom:
        layers.append(keras.layers.RandomZoom((-zoom, zoom), fill_mode="reflect", seed=seed + 2))
    if contrast:
        layers.append(keras.layers.RandomContrast(contrast, value_range=(0, 255), seed=seed + 3))
    return keras.Sequential(layers, name="augment") if layers else None


def reseed(augmenter, seed: int, stream: int = 0) -> None:
    """Restart every random layer of ``augmenter`` from a seed derived from (``seed``, ``stream``): the
    augmentation of a chunk of data then depends on nothing that ran before it."""
    import keras

    layers = [layer for layer in augmenter.layers
              if isinstance(getattr(layer, "generator", None), keras.random.SeedGenerator)]
    states = np.random.SeedSequence([seed, stream]).generate_state(len(layers))
    for layer, state in zip(layers, states):
        gen = layer.generator
        gen.state.assign(np.array([state, 0], dtype=gen.state.dtype))
