"""Post-export verification through the edgeclf runtime (``edgeclf.runtime``), never through Keras.

Every artifact is loaded by the backend ``run`` and ``bench`` use and evaluated on the validation
split: top-1, agreement with the float reference's predictions, drop in points, and a collapse check
(one class for nearly everything, or chance-level accuracy: tensorflow#41840, ultralytics#22644).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

COLLAPSE_SHARE = 0.95  # one class predicted for at least this share of images ...
COLLAPSE_TRUE_SHARE = 0.90  # ... while the most common true class is rarer than this
CHANCE_MARGIN = 0.10  # at chance: kept at most this share of the reference's margin above chance


@dataclass
class Verification:
    name: str
    top1: float
    agreement: float | None
    drop_pt: float | None
    predicted_share: float  # share of the most-predicted class
    predicted_class: int
    collapsed: str | None = None  # reason, when collapsed
    engine: str = ""
    extra: dict = field(default_factory=dict)
    lost: int | None = None  # images the float reference classifies right and this model wrong
    gained: int | None = None  # the other way round
    p_value: float | None = None  # exact McNemar test on those: is the difference more than chance?


def predict(model_ref, images: np.ndarray, threads: int | None = None) -> tuple[np.ndarray, str]:
    """Probabilities of ``images`` (uint8 NHWC) through the runtime backend for ``model_ref``."""
    from edgeclf.runtime.backends import open_backend

    backend = open_backend(model_ref, threads=threads)
    try:
        probs = np.concatenate([backend.predict(images[k:k + 32]) for k in range(0, len(images), 32)])
        return probs, backend.describe()
    finally:
        backend.close()


def predicted_share(pred: np.ndarray, num_classes: int) -> float:
    """Share of the most-predicted class."""
    return float(np.bincount(pred, minlength=num_classes).max() / max(1, len(pred)))


def collapse_reason(pred: np.ndarray, labels: np.ndarray, num_classes: int, top1: float,
                    reference_top1: float | None, classes: list[str],
                    reference_share: float | None = None, images: str = "validation images") -> str | None:
    """Why these predictions look like a model the conversion broke, or None.

    Judged against the float reference: when the trained model itself predicts one class for nearly
    everything (e.g. untrained weights), the export is faithful and that is the trainer's problem.
    """
    counts = np.bincount(pred, minlength=num_classes)
    share = counts.max() / max(1, len(pred))
    true_share = np.bincount(labels, minlength=num_classes).max() / max(1, len(labels))
    reference_ok = reference_share is None or reference_share < COLLAPSE_SHARE
    if share >= COLLAPSE_SHARE and true_share < COLLAPSE_TRUE_SHARE and reference_ok:
        return f"predicts '{classes[int(counts.argmax())]}' for {share:.0%} of the {images}"
    chance = 1.0 / num_classes
    if reference_top1 is not None and reference_top1 - chance > 0.1:
        if top1 <= chance + CHANCE_MARGIN * (reference_top1 - chance):
            return f"top-1 {top1:.1%} is at chance ({chance:.0%} for {num_classes} classes)"
    return None


def assess(name: str, probs: np.ndarray, labels: np.ndarray, classes: list[str],
           reference_pred: np.ndarray | None, engine: str = "") -> Verification:
    """Top-1, agreement and drop against the float reference's predictions, and the collapse check."""
    from edgeclf import metrics

    pred = probs.argmax(axis=1)
    cmp = metrics.compare(pred, labels, reference_pred)
    reference_top1 = metrics.top1(reference_pred, labels) if reference_pred is not None else None
    counts = np.bincount(pred, minlength=len(classes))
    ref_share = predicted_share(reference_pred, len(classes)) if reference_pred is not None else None
    reason = collapse_reason(pred, labels, len(classes), cmp.top1, reference_top1, classes, ref_share)
    v = Verification(name, cmp.top1, cmp.agreement, cmp.drop_pt, float(counts.max() / max(1, len(pred))),
                     int(counts.argmax()), reason, engine)
    if reference_pred is not None:
        from edgeclf.stats import mcnemar_exact

        test = mcnemar_exact(pred, reference_pred, labels)
        v.lost, v.gained, v.p_value = test.only_reference_right, test.only_model_right, test.p_value
    return v


def significance(lost: int | None, gained: int | None, p_value: float | None, images: int) -> str:
    """'5 images lost and 0 gained of 736; McNemar p 0.06: <what that means>', for a drop's warning."""
    if lost is None or gained is None or p_value is None:
        return ""
    meaning = ("not distinguishable from float on this many images" if p_value >= 0.05
               else "a real loss, not chance")
    return f"{lost} images lost and {gained} gained of {images}; McNemar p {p_value:.2f}: {meaning}"


def advice(fmt_name: str, precision: str, qat: bool = False) -> str:
    """What to try when an artifact loses more than --max-drop."""
    if qat and fmt_name == "tflite-int8":
        return "more --qat-epochs, or drop --qat (post-training int8), or fp16 (tflite-fp16)"
    if fmt_name == "onnx-int8":
        return ("--qat for the TFLite int8 model, more --calib-images or --selection-images, or ship onnx-fp32 "
                "(every ONNX Runtime recipe, float fallback and 16-bit activations were tried)")
    if precision == "int8":
        return ("--qat (quantization-aware training), more --calib-images or --selection-images, or fp16 "
                "(tflite-fp16) instead")
    if precision == "dynamic":
        return "fp16 (tflite-fp16) instead, or full int8 with --int8"
    return "check that the model exported is the one trained (fp32 should not lose accuracy)"


def write_predictions(out_dir, samples: list, root, probs: dict[str, np.ndarray], classes: list[str]) -> None:
    """The export folder's record of verification: ``val_split.json``, the validation images (relative to the
    data folder ``root``) and labels, so that bench measures the very same images on any machine; and
    ``val_predictions.json``, each verified model's answer and score on them (the float reference as "float"),
    so that a report can show where int8 and float disagree without running anything."""
    import os
    from pathlib import Path

    from edgeclf import fsutil
    from edgeclf.contract import PREDICTIONS_FILE, VAL_SPLIT_FILE

    files = [os.path.relpath(s.path, root).replace(os.sep, "/") for s in samples]
    labels = [int(s.label) for s in samples]
    fsutil.write_json(Path(out_dir) / VAL_SPLIT_FILE, {"classes": list(classes), "files": files, "labels": labels,
                                                       "exported_from": os.path.abspath(root)})
    models = {name: {"pred": [int(i) for i in p.argmax(axis=1)],
                     "score": [round(float(x), 4) for x in p.max(axis=1)]} for name, p in probs.items()}
    fsutil.write_json(Path(out_dir) / PREDICTIONS_FILE, {
        "classes": list(classes), "images": [str(s.path) for s in samples], "labels": labels, "models": models})
