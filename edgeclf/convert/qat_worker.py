"""The tf_keras side of ``--qat`` (see :mod:`edgeclf.convert.qat`). Run only as a subprocess:

    TF_USE_LEGACY_KERAS=1 python -m edgeclf.convert.qat_worker SPEC.json

Errors are printed as one line ``QAT-ERROR: ...`` and exit code 1.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from edgeclf.errors import first_line


class QatError(Exception):
    pass


def build_tf_keras(spec: dict, weights: dict):
    """The trained classifier rebuilt in tf_keras by the same builder training used (models/build.py),
    with a quantizable preprocessing layer, and the trained weights set layer by layer."""
    import tf_keras as K

    from edgeclf.models.build import HeadSpec, build_classifier

    model = build_classifier(spec["backbone"], spec["imgsz"], spec["num_classes"], weights="none",
                             head=HeadSpec(spec["head_units"], spec["dropout"]), K=K, quantizable=True)
    by_layer: dict[str, list] = {}
    for key in weights:
        name, i = key.rsplit("::", 1)
        by_layer.setdefault(name, []).append((int(i), weights[key]))
    replaced = spec["preprocess"] in ("tf", "unit")  # Rescaling became a depthwise conv with its own weights
    for layer in model.layers:
        if layer.name in by_layer and not (layer.name == "preprocess" and replaced):
            layer.set_weights([w for _, w in sorted(by_layer[layer.name], key=lambda t: t[0])])
        if isinstance(layer, K.layers.BatchNormalization):
            layer.trainable = False  # keep the trained statistics; small QAT batches would ruin them
    return model


def init_ranges(qmodel, images: np.ndarray, batch: int = 32) -> None:
    """Start every activation range at what the calibration images produce.

    tfmot starts them at [-6, 6] and moves them by an EMA of decay 0.999 per training step: a short
    fine-tuning leaves them where they started, clipping MobileNetV2's linear bottlenecks and wasting
    levels elsewhere (measured: -19 pt). Here each range becomes the mean of the per-batch min/max over
    the calibration set (EMA decay k/(k+1) on batch k), in training mode so tfmot's own update runs.
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    original = quant_ops.MovingAvgQuantize  # read by the quantizers at each call
    decay = [0.0]

    def calibrating(*args, **kwargs):
        kwargs["ema_decay"] = decay[0]
        return original(*args, **kwargs)

    quant_ops.MovingAvgQuantize = calibrating
    try:
        for k, start in enumerate(range(0, len(images), batch)):
            decay[0] = k / (k + 1)
            qmodel(images[start:start + batch].astype(np.float32), training=True)
    finally:
        quant_ops.MovingAvgQuantize = original


def main(spec_path: str) -> None:
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras as K

    spec = json.loads(Path(spec_path).read_text())
    K.utils.set_random_seed(spec.get("seed", 0))  # dropout and shuffling: the same export, the same model
    d = Path(spec["dir"])
    t0 = time.time()
    weights = dict(np.load(d / "weights.npz"))
    model = build_tf_keras(spec, weights)
    probe_x, probe_p = np.load(d / "probe_x.npy"), np.load(d / "probe_p.npy")
    diff = float(np.abs(model.predict(probe_x, verbose=0) - probe_p).max())
    if diff > 1e-3:
        raise QatError(f"the tf_keras rebuild does not reproduce the trained model (max |dp| {diff:.3g})")
    try:
        qmodel = tfmot.quantization.keras.quantize_model(model)
    except Exception as exc:
        raise QatError(f"tfmot cannot quantize it ({first_line(exc)})") from exc
    calib = np.load(d / "calib.npy")
    init_ranges(qmodel, calib)
    qmodel.compile(K.optimizers.Adam(spec["lr"]), K.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    x, y = np.load(d / "train_x.npy"), np.load(d / "train_y.npy")
    ds = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=0)
          .map(lambda a, b: (tf.cast(a, tf.float32), b)).batch(spec["batch"]))
    hist = qmodel.fit(ds, epochs=spec["epochs"], verbose=0) if spec["epochs"] > 0 else None

    def representative():
        for img in calib:
            yield [img[None].astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(qmodel)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    io = {"int8": tf.int8, "uint8": tf.uint8, "float": tf.float32}[spec["io"]]
    conv.inference_input_type = io
    conv.inference_output_type = io
    (d / "model_int8.tflite").write_bytes(conv.convert())
    acc = hist.history.get("accuracy", [float("nan")])[-1] if hist is not None else float("nan")
    (d / "result.json").write_text(json.dumps({"seconds": time.time() - t0, "train_accuracy": float(acc),
                                               "rebuild_max_abs_diff": diff, "epochs": spec["epochs"]}))


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except QatError as exc:
        print(f"QAT-ERROR: {exc}", flush=True)
        sys.exit(1)
    except Exception as exc:  # one line for the parent, whatever tfmot/tf_keras raised
        print(f"QAT-ERROR: {type(exc).__name__}: {first_line(exc)}", flush=True)
        sys.exit(1)
