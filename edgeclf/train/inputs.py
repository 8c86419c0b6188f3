"""What a stage fits on, as tf.data: batches of cached features read from disk, or of decoded images.
TensorFlow: imported by the training path only.

Every element is (inputs, one-hot labels, sample weights). Class weights travel as sample weights, and on
a cluster the validation batches of a worker with fewer images are padded with rows of weight 0, so
that every worker runs the same number of steps (a collective all-reduce waits for all of them).

``Plan`` says how many steps make an epoch and how many rows each replica takes per step: ``--batch``
is the global batch, split over the replicas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeclf.train.cache import FeatureStore


@dataclass(frozen=True)
class Plan:
    global_batch: int
    replicas: int  # in sync, all workers
    local_replicas: int  # on this worker
    workers: int

    @property
    def replica_batch(self) -> int:
        return max(1, self.global_batch // self.replicas)

    def steps(self, total_rows: int) -> int:
        """Steps of one pass over ``total_rows`` (all workers together)."""
        return max(1, math.ceil(total_rows / (self.replica_batch * self.replicas)))

    def local_batches(self, steps: int) -> int:
        return steps * self.local_replicas


def feature_dataset(store: FeatureStore, labels: np.ndarray, k: int, plan: Plan, steps: int, shuffle: bool,
                    seed: int, class_weight: dict[int, float] | None = None):
    """Batches of ``store``'s rows (labels: per image of the store), ``steps`` steps per iteration.

    Training (``shuffle``): a new permutation per pass over the rows, full batches, wrapping around
    when a worker's share runs out before the cluster's epoch does. Evaluation: rows in order, once;
    on a cluster, padded with weight-0 rows to the common number of steps.
    """
    import tensorflow as tf

    rows = store.rows
    batches, b = plan.local_batches(steps), plan.replica_batch
    weights = np.ones(k, np.float32) if class_weight is None else np.array([class_weight[i] for i in range(k)],
                                                                           np.float32)
    row_labels = np.asarray(labels, dtype=np.int64)[store.image_of_row] if rows else np.zeros(0, np.int64)
    passes = [0]

    def order() -> np.ndarray:
        if not shuffle:
            return np.arange(rows)
        rng = np.random.default_rng([seed, passes[0]])
        passes[0] += 1
        return rng.permutation(rows)

    def batch(idx: np.ndarray, size: int):
        idx = np.sort(idx)  # within a batch the order does not matter; sorted reads are closer together
        x = store.read(idx).astype(np.float32)
        y = np.eye(k, dtype=np.float32)[row_labels[idx]]
        w = weights[row_labels[idx]]
        pad = size - len(idx)
        if pad > 0:
            x = np.concatenate([x, np.zeros((pad, *store.shape), np.float32)])
            y = np.concatenate([y, np.zeros((pad, k), np.float32)])
            w = np.concatenate([w, np.zeros(pad, np.float32)])
        return x, y, w

    def generate():
        if plan.workers == 1:  # one machine: an epoch is one pass, the last batch may be short
            perm = order()
            for start in range(0, rows, b):
                yield batch(perm[start:start + b], 0)
            return
        pos, perm = 0, order()
        for _ in range(batches):  # a cluster: every worker yields the same number of full batches
            if shuffle:
                take = []
                while rows and sum(map(len, take)) < b:
                    if pos == rows:
                        pos, perm = 0, order()
                    n = min(b - sum(map(len, take)), rows - pos)
                    take.append(perm[pos:pos + n])
                    pos += n
                idx = np.concatenate(take) if take else np.zeros(0, np.int64)
            else:
                idx = np.arange(pos, min(pos + b, rows))
                pos += len(idx)
            yield batch(idx, b)

    spec = (tf.TensorSpec((None, *store.shape), tf.float32), tf.TensorSpec((None, k), tf.float32),
            tf.TensorSpec((None,), tf.float32))
    ds = tf.data.Dataset.from_generator(generate, output_signature=spec)
    n = math.ceil(rows / b) if plan.workers == 1 else batches
    ds = ds.apply(tf.data.experimental.assert_cardinality(n))
    return ds.prefetch(2)


def image_batches(samples, size: int, k: int, plan: Plan, steps: int, resize: str, shuffle: bool, seed: int,
                  augmenter=None, class_weight: dict[int, float] | None = None, cache_budget: int = 1 << 30):
    """The same as :func:`feature_dataset` for decoded images (the ``--no-cache`` path).

    Decoded images are kept in memory only when they fit in ``cache_budget`` bytes; above that they
    are decoded again every epoch, so memory does not grow with the data set.
    """
    import tensorflow as tf

    from edgeclf.imageio import load_resized

    n = len(samples)
    b = plan.replica_batch
    paths = np.array([s.path for s in samples] or [""])
    labels = np.array([s.label for s in samples] or [0], dtype=np.int32)
    weights = np.ones(n or 1, np.float32) if class_weight is None else \
        np.array([class_weight[int(y)] for y in labels], np.float32)
    ds = tf.data.Dataset.from_tensor_slices((paths[:n], labels[:n], weights[:n]))

    def decode(path, label, weight):
        img = tf.numpy_function(lambda p: load_resized(p.decode("utf-8"), size, size, resize), [path], tf.uint8,
                                stateful=False)
        img.set_shape((size, size, 3))
        return img, label, weight

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if n * size * size * 3 <= cache_budget:
        ds = ds.cache()
    batches = plan.local_batches(steps)
    if shuffle:
        ds = ds.shuffle(min(n, 10_000) or 1, seed=seed, reshuffle_each_iteration=True)
        if plan.workers > 1:
            ds = ds.repeat()
    elif plan.workers > 1:  # pad with weight-0 images to the cluster's common number of steps
        pad = batches * b - n
        if pad > 0:
            blank = tf.data.Dataset.from_tensors((tf.zeros((size, size, 3), tf.uint8), 0, 0.0)).repeat(pad)
            ds = ds.concatenate(blank)
    ds = ds.batch(b)
    if plan.workers > 1:
        ds = ds.take(batches)

    def finish(img, label, weight):
        img = tf.cast(img, tf.float32)
        if augmenter is not None and shuffle:
            img = augmenter(img, training=True)
        return img, tf.one_hot(label, k), weight

    return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
