"""What a frozen backbone computes, computed once: the cut, and the engine and batches that fill the cache.

A flat Keras classifier is split at a *cut*: a single tensor below the first layer that trains (or
that is stochastic, like dropout) through which everything above flows. The frozen bottom runs once
per image (and per augmented view) with the fastest engine here — the bottom converted to TFLite and
run by LiteRT, 10-30x faster than Keras on a CPU — and the top trains in Keras on the cached tensors,
which :mod:`edgeclf.train.cache` keeps on disk.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgeclf.errors import first_line
from edgeclf.log import get_logger

log = get_logger(__name__)

@dataclass
class Cut:
    tensor: object  # the KerasTensor everything above the cut depends on
    index: int  # layers[: index + 1] are below the cut
    trivial: bool  # the cut is at the (preprocessed) input: caching would save nothing
    layer: int = -1  # the layer that outputs ``tensor`` (at or below ``index``)

    def name(self, model) -> str:
        return model.layers[self.layer].name


def _producer(tensor):
    return tensor._keras_history[0]


def _inputs_of(layer) -> list:
    node = layer._inbound_nodes[0]
    return list(node.input_tensors)


def find_cut(model) -> Cut | None:
    """The highest single-tensor cut below every layer that trains or is stochastic."""
    import keras

    layers = model.layers
    pos = {id(l): i for i, l in enumerate(layers)}

    def moving(layer) -> bool:
        stochastic = isinstance(layer, (keras.layers.Dropout, keras.layers.GaussianNoise,
                                        keras.layers.SpatialDropout2D))
        return bool(layer.trainable_weights) or stochastic

    first = next((i for i, l in enumerate(layers) if moving(l)), None)
    if first is None:
        return None
    # Each tensor is live from its producer up to its last consumer: cover[b] counts the tensors
    # alive across the boundary after layer b. A boundary crossed by one tensor is a valid cut.
    last_use: dict[int, tuple[int, object]] = {}
    for j, layer in enumerate(layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        for t in _inputs_of(layer):
            p = pos[id(_producer(t))]
            key = id(t)
            if key not in last_use or last_use[key][0] < j:
                last_use[key] = (j, t)
    spans = [(pos[id(_producer(t))], j, t) for j, t in last_use.values()]
    for b in range(first - 1, -1, -1):
        alive = [t for p, j, t in spans if p <= b < j]
        if len(alive) == 1:
            prep = next((i for i, l in enumerate(layers) if l.name == "preprocess"), 0)
            return Cut(alive[0], b, trivial=b <= prep, layer=pos[id(_producer(alive[0]))])
    return None


def split_model(model, cut: Cut):
    import keras

    bottom = keras.Model(model.input, cut.tensor, name="bottom")
    top = keras.Model(cut.tensor, model.output, name="top")
    return bottom, top


class TFLiteRunner:
    """A Keras model (one or several outputs) converted to fp32 TFLite, run by LiteRT in batches."""

    def __init__(self, keras_model, batch: int = 16, threads: int | None = None):
        import tensorflow as tf

        from ai_edge_litert.interpreter import Interpreter

        converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # it lists every variable
            blob = converter.convert()
        self.interpreter = Interpreter(model_content=blob, num_threads=threads or os.cpu_count() or 1)
        self.batch = batch
        inp = self.interpreter.get_input_details()[0]
        self._in_index = inp["index"]
        self._shape = list(inp["shape"][1:])
        self.interpreter.resize_tensor_input(self._in_index, [batch] + self._shape)
        self.interpreter.allocate_tensors()
        self._out_indices = self._match_outputs(keras_model)

    def _match_outputs(self, keras_model) -> list[int]:
        """TFLite may reorder outputs: match each Keras output to the TFLite one that computes it."""
        details = self.interpreter.get_output_details()
        if len(details) == 1:
            return [details[0]["index"]]
        probe = np.random.default_rng(0).uniform(0, 255, (self.batch, *self._shape)).astype(np.float32)
        expected = keras_model(probe, training=False)
        self.interpreter.set_tensor(self._in_index, probe)
        self.interpreter.invoke()
        got = {d["index"]: self.interpreter.get_tensor(d["index"]) for d in details}
        order = []
        for e in expected:
            e = np.asarray(e)
            same = [i for i, g in got.items() if g.shape == e.shape and i not in order]
            order.append(min(same, key=lambda i: float(np.abs(got[i] - e).mean())))
        return order

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        """Outputs for a batch of float 0..255 images, one array per model output."""
        n = len(images)
        outs: list[list[np.ndarray]] = [[] for _ in self._out_indices]
        for start in range(0, n, self.batch):
            chunk = images[start:start + self.batch].astype(np.float32, copy=False)
            k = len(chunk)
            if k < self.batch:
                chunk = np.concatenate([chunk, np.zeros((self.batch - k, *chunk.shape[1:]), np.float32)])
            self.interpreter.set_tensor(self._in_index, chunk)
            self.interpreter.invoke()
            for o, index in zip(outs, self._out_indices):
                o.append(self.interpreter.get_tensor(index)[:k].copy())
        return [np.concatenate(o) for o in outs]


def decode_all(paths: list[str], size: int, resize: str, workers: int | None = None) -> np.ndarray:
    """Decode and resize images with the one decoder, in parallel threads (OpenCV releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    from edgeclf.imageio import load_resized

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return np.stack(list(pool.map(lambda p: load_resized(p, size, size, resize), paths)))


def make_engine(bottom, batch: int = 16) -> tuple[Callable[[np.ndarray], list[np.ndarray]], str]:
    """The fastest way to run the frozen bottom here: LiteRT when it converts, else Keras."""
    try:
        return TFLiteRunner(bottom, batch=batch), "litert"
    except Exception as exc:  # a layer TFLite cannot convert: Keras still works, slower
        log.warning(f"the feature cache falls back to Keras, slower ({type(exc).__name__}: "
                    f"{first_line(exc, 120)})")

        def run(x):
            out = bottom.predict(x, batch_size=batch, verbose=0)
            return list(out) if isinstance(out, (list, tuple)) else [out]

        return run, "keras"


def augmentation(augmenter, size: int):
    """The Keras augmentation layers as one compiled graph (about 2x faster than eager here)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)], reduce_retracing=True)
    def augment(images):
        return augmenter(images, training=True)

    return lambda x: augment(x).numpy()


def decoded_batches(paths: list[str], size: int, resize: str, views: int, augment, batch: int):
    """(view, images) for every batch of paths: decoded once, clean first, then each augmented view.
    Produced one step ahead in a thread, so decode and augmentation (TensorFlow, GIL released)
    overlap the LiteRT inference of the previous batch."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce():
        try:
            for start in range(0, len(paths), batch):
                images = decode_all(paths[start:start + batch], size, resize).astype(np.float32)
                for v in range(1 + views):
                    if stop.is_set():
                        return
                    q.put((v, images if v == 0 else augment(images)))
            q.put(None)
        except BaseException as exc:  # surfaced in the consumer
            q.put(exc)

    thread = threading.Thread(target=produce, daemon=True, name="feature-batches")
    thread.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)
