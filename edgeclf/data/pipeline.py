"""tf.data input pipelines and augmentation (TensorFlow: training only).

Images are decoded and resized by edgeclf.imageio, the same function the runtime uses, in parallel
(OpenCV releases the GIL), then cached in memory, shuffled, batched and prefetched.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from edgeclf.data.dataset import Sample
from edgeclf.imageio import load_resized


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


def image_dataset(samples: Sequence[Sample], size: int, num_classes: int, batch: int, resize: str = "bilinear",
                  shuffle: bool = False, seed: int = 0, augmenter=None, cache: bool = True,
                  one_hot: bool = True):
    """(images float32 0..255 NHWC, labels) batches."""
    import tensorflow as tf

    paths = np.array([s.path for s in samples])
    labels = np.array([s.label for s in samples], dtype=np.int32)

    def _load(path):
        return load_resized(path.decode("utf-8"), size, size, resize)

    def _decode(path, label):
        img = tf.numpy_function(_load, [path], tf.uint8, stateful=False)
        img.set_shape((size, size, 3))
        return img, label

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.map(_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(len(samples), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch)

    def _post(img, label):
        img = tf.cast(img, tf.float32)
        if augmenter is not None:
            img = augmenter(img, training=True)
        if one_hot:
            label = tf.one_hot(label, num_classes)
        return img, label

    ds = ds.map(_post, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
