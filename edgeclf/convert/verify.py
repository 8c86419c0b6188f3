"""Post-export verification through the edgeclf runtime (``edgeclf.runtime``), never through Keras.

Every artifact is loaded by the backend ``run`` and ``bench`` use and evaluated on the validation
split: top-1, agreement with the float reference's predictions, drop in points, and a collapse check
(one class for nearly everything, or chance-level accuracy: tensorflow#41840, ultralytics#22644).
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

import numpy as np

from edgeclf import fsutil, metrics
from edgeclf.contract import Artifact
from edgeclf.convert.calibration import load_images
from edgeclf.convert.results import ExportRow
from edgeclf.errors import EdgeclfError
from edgeclf.log import get_logger
from edgeclf.stats import over_budget
from edgeclf.status import Status

log = get_logger(__name__)

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


MAX_CHANGED_RECORDED = 50  # changed validation answers listed per file in edgeclf.json (val_changed)


def changed_answers(reference: np.ndarray, probs: np.ndarray, labels: np.ndarray, classes: list[str],
                    files: list[str]) -> list[dict]:
    """Each validation image on which a file's top-1 differs from the float reference's, with how sure the
    float model was there: its top two scores and the rank of its margin (log top score over runner-up) among
    the validation images (0: the image it is least sure of). An int8 file that changes only answers of
    rank ~0 moved scores the float model itself could not separate (a near tie), not ones it was sure of.
    Least certain first; at most ``MAX_CHANGED_RECORDED``."""
    reference, probs = np.asarray(reference, np.float64), np.asarray(probs, np.float64)
    ref_pred, pred = reference.argmax(axis=1), probs.argmax(axis=1)
    top = np.sort(reference, axis=1)[:, ::-1]
    margin = np.log(np.clip(top[:, 0], 1e-12, 1)) - np.log(np.clip(top[:, 1], 1e-12, 1)) if top.shape[1] > 1 \
        else np.full(len(top), np.inf)
    changed = np.where(pred != ref_pred)[0]
    out = []
    for i in sorted(changed, key=lambda i: margin[i])[:MAX_CHANGED_RECORDED]:
        kind = "lost" if ref_pred[i] == labels[i] else "gained" if pred[i] == labels[i] else "changed"
        out.append({"image": files[i], "label": classes[int(labels[i])], "float": classes[int(ref_pred[i])],
                    "this": classes[int(pred[i])], kind: True, "float_scores": [round(float(x), 4) for x in top[i, :2]],
                    "margin_rank": round(float((margin < margin[i]).mean()), 4)})
    return out


def lost_ranks(changed: list[dict]) -> str:
    """'0.7 %' / '0.7, 1.2 %': the float model's margin ranks on the images a file lost (for a note)."""
    ranks = [100 * c["margin_rank"] for c in changed if c.get("lost")]
    return ", ".join(f"{r:.1f}" for r in ranks) + " %" if ranks else ""


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


MEMORIZED_TOP1 = 0.995  # float top-1 on the selection images at or above this: they tell candidates little


def memorized(probs: np.ndarray, labels: np.ndarray, stable: np.ndarray | None = None) -> bool:
    """Has the float model learned the selection images by heart (top-1 >= MEMORIZED_TOP1 on the stable
    ones)? Then an int8 candidate rarely flips one of them, whatever it would do on new images: a model
    fine-tuned until training accuracy is ~100 % leaves the search little to go on."""
    keep = np.ones(len(labels), bool) if stable is None else np.asarray(stable, bool)
    if not keep.any():
        return False
    return float((np.asarray(probs)[keep].argmax(axis=1) == np.asarray(labels)[keep]).mean()) >= MEMORIZED_TOP1


# --- every exported file on validation, and the budget ---------------------------------------------------

KERAS_CHECK_IMAGES = 32  # the float reference (fp32 TFLite) is checked against Keras on this many images
KERAS_CHECK_TOLERANCE = 1e-3  # max |p_tflite - p_keras|


def verify_all(ctx, artifacts, rows: list[ExportRow], failures: list[str], warn, val_probs: dict) -> dict:
    """Evaluate every artifact through the runtime on val; mark collapsed ones failed (file removed). Every
    model's validation probabilities go into ``val_probs`` (the float reference's as "float")."""
    from edgeclf.runtime.model import ModelRef

    if not artifacts:
        return {}
    bundle, opts = ctx.bundle, ctx.options
    val = ctx.source.val[: opts.verify_images] if opts.verify_images else ctx.source.val
    log.info("verifying on %d validation images through the edgeclf runtime", len(val))
    images = load_images(val, bundle.input.height, bundle.input.width, bundle.input.resize)
    files = [os.path.relpath(s.path, ctx.source.info["data"]).replace(os.sep, "/") for s in val]
    labels = np.array([s.label for s in val])
    bundle.root = ctx.out_dir

    # The float reference: the fp32 TFLite model, checked against Keras on a few images. Keras on the
    # whole validation split would take minutes on a CPU.
    ref_art = Artifact(file=".reference_fp32.tflite", format="tflite", precision="fp32")
    ref_path = ctx.out_dir / ref_art.file
    fsutil.write_bytes(ref_path, ctx.float_tflite())
    try:
        ref_probs, _ = predict(ModelRef(ref_path, bundle, ref_art, "export"), images, opts.threads)
    finally:
        ref_path.unlink(missing_ok=True)
    k = min(KERAS_CHECK_IMAGES, len(images))
    keras_probs = np.asarray(ctx.keras_model().predict(images[:k].astype(np.float32), batch_size=k, verbose=0))
    max_diff = float(np.abs(keras_probs - ref_probs[:k]).max())
    ref_pred = ref_probs.argmax(axis=1)
    val_probs["float"] = ref_probs
    ref_top1 = metrics.top1(ref_pred, labels)
    ref_share = predicted_share(ref_pred, len(bundle.classes))
    if ref_share >= COLLAPSE_SHARE:
        warn(f"the trained model itself predicts '{bundle.classes[int(np.bincount(ref_pred).argmax())]}' "
             f"for {ref_share:.0%} of the validation images: check training (the export is faithful)")
    reference = {"artifact": "tflite-fp32", "val_top1": round(ref_top1, 4), "val_images": int(len(val)),
                 "keras_check_images": int(k), "keras_max_abs_diff": round(max_diff, 6),
                 "note": "agreement and drop are measured against the fp32 TFLite model, checked against "
                         "Keras on the first keras_check_images validation images"}
    if max_diff > KERAS_CHECK_TOLERANCE:
        failures.append(f"the fp32 TFLite model differs from Keras by {max_diff:.4f} (probability) on {k} images")
        log.error("the float reference disagrees with Keras (max |dp| %.4f)", max_diff)

    for fmt, art in artifacts:
        ref = ModelRef(ctx.out_dir / art.file, bundle, art, "export")
        row = ExportRow(fmt.name, art.file, art.bytes, recipe=art.recipe.label() if art.recipe else "")
        try:
            probs, engine = predict(ref, images, opts.threads)
        except EdgeclfError as exc:
            failures.append(f"{fmt.name}: the runtime cannot run it ({exc})")
            row.status, row.note = Status.FAILED, f"runtime: {exc}"
            rows.append(row)
            (ctx.out_dir / art.file).unlink(missing_ok=True)
            continue
        v = assess(fmt.name, probs, labels, bundle.classes, ref_pred, engine)
        val_probs[fmt.name] = probs
        changed = changed_answers(ref_probs, probs, labels, bundle.classes, files)
        art.val_top1 = round(v.top1, 4)
        art.extra.update({"agreement": round(v.agreement, 4), "drop_pt": v.drop_pt, "val_images": int(len(val)),
                          "verified_with": engine, "verified_on": platform.machine(),  # int8 kernels differ by ISA
                          "val_lost": v.lost, "val_gained": v.gained,
                          "mcnemar_p": round(v.p_value, 4) if v.p_value is not None else None,
                          "val_changed": changed})
        row.top1, row.agreement, row.drop_pt = v.top1, v.agreement, v.drop_pt
        row.lost, row.gained, row.images = v.lost, v.gained, len(val)
        row.lost_ranks = lost_ranks(changed)
        row.significance = significance(v.lost, v.gained, v.p_value, len(val))
        if v.collapsed:
            row.status, row.note = Status.FAILED, f"collapsed: {v.collapsed}"
            failures.append(f"{fmt.name} collapsed: {v.collapsed}; the file was removed "
                            f"(try more --calib-images, or check the calibration images are real photos)")
            (ctx.out_dir / art.file).unlink(missing_ok=True)
        rows.append(row)
    return reference


def over_max_drop(row: ExportRow, max_drop: float) -> bool:
    """The one budget rule, as the search applies it to its candidates (:func:`search.over_budget`): a file is
    over --max-drop when the validation images show it (its net loss exceeds the budget by more than they can
    resolve, a one-sided 95 % paired test), not when a point estimate a few images wide passes it."""
    if row.drop_pt is None:
        return False
    if row.lost is None or row.gained is None or not row.images:
        return row.drop_pt > max_drop
    return over_budget(row.lost, row.gained, row.images, max_drop)


def judge_budget(ctx, rows: list[ExportRow], warn, searches: dict) -> None:
    """Mark every verified artifact over --max-drop (:func:`over_max_drop`), with the warning that names the fix.
    ``searches``: format name -> the SearchResult that chose its file."""
    opts = ctx.options
    for row in rows:
        if row.status != Status.OK:
            continue
        search = searches.get(row.name)
        if search is not None and search.chosen is not None:
            row.selection_drop_pt = search.chosen.selection_drop_pt
        over_val = over_max_drop(row, opts.max_drop)
        over_search = search is not None and not search.within_budget
        if not (over_val or over_search):
            if row.drop_pt is not None and row.drop_pt > opts.max_drop:
                row.note = (f"{row.lost} lost, {row.gained} gained of {row.images}: not shown to be over "
                            f"--max-drop {opts.max_drop:g}")
                if row.lost_ranks:  # how sure float was of what this file lost
                    row.note += f" (float's margin rank on the images lost: {row.lost_ranks})"
            continue
        row.status = Status.DROP
        fmt_precision = row.name.split("-", 1)[1]
        if over_search:
            row.note = f"best of {len(search.trials)} candidates; try --qat"
            warn(f"{row.name}: no candidate of the search is within --max-drop {opts.max_drop} pt; kept the best "
                 f"({search.chosen.label}: {search.chosen.selection_drop_pt:+.2f} pt on the selection images, "
                 f"{row.drop_pt:+.2f} pt on validation{'; ' + row.significance if row.significance else ''}); try "
                 f"{advice(row.name, fmt_precision, opts.qat)}")
        else:
            row.note = f"try: {advice(row.name, fmt_precision, opts.qat)}"
            where = ""
            if row.selection_drop_pt is not None:
                c = search.chosen
                where = (f" (within budget on the {search.judged} selection images: {row.selection_drop_pt:+.2f} pt"
                         + (f", {c.selection_lost} lost and {c.selection_gained} gained" if c.selection_lost is not None
                            else "") + ")")
            if search is not None and ctx.selection_from != "holdout" and _selection_memorized(ctx):
                where += (" — the float model classifies every selection image correctly (views of training "
                          "images it has learned), so the int8 candidates could not be told apart on them; "
                          "retrain with --holdout 0.1 so that export judges on images the model never saw")
            sig = f" ({row.significance})" if row.significance else ""
            warn(f"{row.name} loses {row.drop_pt:.2f} pt on validation{sig} (> --max-drop {opts.max_drop}){where}; "
                 f"try {advice(row.name, fmt_precision, opts.qat)}")


def _selection_memorized(ctx) -> bool:
    probs, stable = ctx.selection_reference()
    return memorized(probs, ctx.selection().labels, stable)
