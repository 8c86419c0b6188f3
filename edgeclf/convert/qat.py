"""``--qat``: quantization-aware fine-tuning before the int8 TFLite conversion.

tfmot 0.8.1 refuses Keras 3 models (model-optimization#1119, #1144), so QAT runs under tf_keras
(``TF_USE_LEGACY_KERAS=1``) in its own process (:mod:`edgeclf.convert.qat_worker`). The parent hands it
the trained weights by layer name (an .npz), the training images and the shared calibration images; the
worker rebuilds the same flat classifier in tf_keras, checks it reproduces the Keras 3 model, replaces
the ``Rescaling`` preprocessing (which tfmot refuses) by an equivalent frozen 1x1 depthwise convolution,
starts every activation range from the calibration images (tfmot's [-6, 6] start would barely move in a
short fine-tuning), fine-tunes with fake quantization (batch-norm frozen, low learning rate) and converts
to int8 TFLite.
The int8 TFLite artifact is then verified like any other. The ONNX int8 artifact is the same QAT model
carried over to ONNX (:mod:`edgeclf.convert.onnx_from_tflite`): the first candidate of its search.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgeclf.convert.calibration import load_images
from edgeclf.errors import EdgeclfError
from edgeclf.log import get_logger
from edgeclf.models.build import head_spec
from edgeclf.models.registry import BACKBONES

log = get_logger(__name__)

QAT_LR = 1e-5
QAT_BATCH = 16


def _backbone_name(ctx) -> str:
    name = ctx.source.backbone
    if name is None:  # a bare .keras: build_classifier names the model edgeclf_<backbone>
        name = ctx.keras_model().name.removeprefix("edgeclf_")
    if name not in BACKBONES:
        raise EdgeclfError(f"--qat cannot run with model {name!r}: it rebuilds a registry backbone in tf_keras "
                           f"(one of {', '.join(BACKBONES)})")
    return name


def qat_model(ctx) -> tuple[bytes, dict]:
    """Fine-tune with fake quantization in a tf_keras subprocess: the int8 TFLite bytes and how the training
    went (once per export: the TFLite and the ONNX int8 artifacts share them)."""
    return ctx.cached("qat", lambda: _qat_tflite(ctx))


def qat_tflite(ctx) -> bytes:
    return qat_model(ctx)[0]


def _qat_tflite(ctx) -> tuple[bytes, dict]:
    model = ctx.keras_model()
    name = _backbone_name(ctx)
    backbone = BACKBONES[name]
    h, w = ctx.bundle.input.height, ctx.bundle.input.width
    calib = ctx.calibration()
    head = head_spec(model)
    with tempfile.TemporaryDirectory(prefix=".qat-", dir=ctx.out_dir) as tmp:
        tmp = Path(tmp)
        weights = {f"{layer.name}::{i}": np.asarray(v) for layer in model.layers
                   for i, v in enumerate(layer.get_weights())}
        np.savez(tmp / "weights.npz", **weights)
        np.save(tmp / "calib.npy", calib.images)
        log.info(f"QAT: loading {len(ctx.source.train)} training images")
        np.save(tmp / "train_x.npy", load_images(ctx.source.train, h, w, ctx.bundle.input.resize))
        np.save(tmp / "train_y.npy", np.array([s.label for s in ctx.source.train], dtype=np.int64))
        probe = calib.images[:8].astype(np.float32)
        np.save(tmp / "probe_x.npy", probe)
        np.save(tmp / "probe_p.npy", np.asarray(model.predict(probe, verbose=0)))
        spec = {"preprocess": backbone.preprocess, "imgsz": h, "num_classes": len(ctx.bundle.classes),
                "head_units": head.units, "dropout": head.dropout,
                "epochs": ctx.options.qat_epochs, "lr": QAT_LR, "batch": QAT_BATCH, "io": ctx.options.io,
                "dir": str(tmp), "backbone": name}
        (tmp / "spec.json").write_text(json.dumps(spec))
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
        log.info(f"QAT: fine-tuning {name} for {ctx.options.qat_epochs} epoch(s) under tf_keras "
                      f"(a separate process; slow on a CPU)")
        proc = subprocess.run([sys.executable, "-m", "edgeclf.convert.qat_worker", str(tmp / "spec.json")],
                              env=env, capture_output=True, text=True)
        result = tmp / "result.json"
        if proc.returncode != 0 or not result.is_file():
            lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("QAT-ERROR: ")]
            reason = lines[-1][len("QAT-ERROR: "):] if lines else \
                (proc.stderr.strip().splitlines() or ["unknown error"])[-1][:300]
            raise EdgeclfError(f"--qat cannot run with {name}: {reason}")
        info = json.loads(result.read_text())
        acc = info["train_accuracy"]
        trained = f"train accuracy {acc:.1%}" if acc == acc else "ranges only, no fine-tuning"  # NaN: 0 epochs
        log.info(f"QAT: done in {info['seconds']:.0f}s ({trained}, "
                      f"tf_keras rebuild max |dp| {info['rebuild_max_abs_diff']:.1e})")
        return (tmp / "model_int8.tflite").read_bytes(), info
