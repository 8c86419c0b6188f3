"""Bench's accuracy figures from each device's predictions: per row against the float model of the same
export on the same device (top-1, Δ, agreement, exact McNemar, worst class), against the same file on the
first device (answers changed, lost and gained: another ISA's kernels), and with the device's own decoding
of the photos (``--decode-on device``). Pure functions of the predictions: no runtime, no process.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from edgeclf.status import Status

if TYPE_CHECKING:
    from edgeclf.bench.rows import BenchRow
    from edgeclf.bench.valset import ExportInfo

REFERENCE_ORDER = (("tflite-fp32", "litert"), ("onnx-fp32", "onnxruntime"))


def _reference(device: str, index: int, probs: dict) -> tuple[str, str, np.ndarray] | None:
    """The float model of the same export on the same device: tflite-fp32 (LiteRT), else onnx-fp32, else
    any fp32 measured."""
    for name, backend in REFERENCE_ORDER:
        p = probs.get((device, index, name, backend))
        if p is not None:
            return name, backend, p
    for (dev, i, name, backend), p in probs.items():
        if dev == device and i == index and p is not None and name.endswith("-fp32"):
            return name, backend, p
    return None


def add_metrics(rows: list[BenchRow], exports: list[ExportInfo], probs: dict, min_top1: float | None) -> None:
    """Accuracy of every row from its device's predictions: top-1/top-5/macro-F1 (classification_report),
    against the float reference of the same export on the same device (compare, McNemar, worst class)."""
    from edgeclf.stats import mcnemar_exact, worst_class_drop
    from edgeclf.metrics import classification_report, compare

    reports: dict[tuple, dict] = {}

    def report_of(key, p, e):
        if key not in reports:
            reports[key] = classification_report(p, e.labels, e.bundle.classes)
        return reports[key]

    refs: dict[tuple, tuple] = {}
    for device in dict.fromkeys(r.device for r in rows):
        for i, e in enumerate(exports):
            ref = _reference(device, i, probs)
            if ref is None:
                continue
            name, backend, p = ref
            rep = report_of((device, i, name, backend), p, e)
            refs[(device, i)] = (p.argmax(axis=1), rep)
            e.references[device] = {"format": name, "backend": backend, "top1": rep["top1"]}
    for row in rows:
        e = row.export
        i = row.key[1]
        art = e.bundle.artifact(row.format)
        row.export_top1 = art.val_top1
        row.export_val_images = art.extra.get("val_images")
        p = probs.get(row.key)
        if p is None:
            continue
        rep = report_of(row.key, p, e)
        pred = p.argmax(axis=1)
        row.top1, row.top5, row.macro_f1, row.per_class = rep["top1"], rep.get("top5"), rep["macro_f1"], \
            rep["per_class"]
        ref = refs.get((row.device, i))
        if ref is not None:
            ref_pred, ref_rep = ref
            cmp = compare(pred, e.labels, ref_pred)
            row.drop_pt, row.agreement = cmp.drop_pt, cmp.agreement
            test = mcnemar_exact(pred, ref_pred, e.labels)
            row.mcnemar_p, row.only_reference_right, row.only_model_right = \
                test.p_value, test.only_reference_right, test.only_model_right
            worst = worst_class_drop(rep["per_class"], ref_rep["per_class"])
            if worst is not None:
                row.worst_class, row.worst_class_drop_pt = worst
        if art.val_top1 is not None:
            row.export_diff_pt = round((rep["top1"] - float(art.val_top1)) * 100, 2)
        if row.ok and min_top1 is not None and rep["top1"] < min_top1:
            row.status, row.note = Status.BELOW_FLOOR, f"top-1 {rep['top1']:.2%} < {min_top1:.2%}"


def add_cross_device(rows: list[BenchRow], probs: dict) -> None:
    """Each device's answers against the first device's for the same artifact and backend: the same file on
    other kernels (another ISA: x86 VNNI against ARM NEON or dot product) can answer differently."""
    from edgeclf.stats import mcnemar_exact

    first = rows[0].device if rows else None
    for row in rows:
        if row.device == first:
            continue
        p, p_first = probs.get(row.key), probs.get((first, *row.key[1:]))
        if p is None or p_first is None:
            continue
        pred, pred_first = p.argmax(axis=1), p_first.argmax(axis=1)
        test = mcnemar_exact(pred, pred_first, row.export.labels)
        row.vs_first_changed = int((pred != pred_first).sum())
        row.vs_first_lost, row.vs_first_gained = test.only_reference_right, test.only_model_right


def cross_device_note(name: str, rows: list[BenchRow], first: str) -> str | None:
    """One sentence: which files answer differently on ``name`` than on the first device."""
    compared = [r for r in rows if r.vs_first_changed is not None]
    if name == first or not compared:
        return None
    moved = [r for r in compared if r.vs_first_changed]
    if not moved:
        return f"{name}: every file gives the same answer as on {first} for every image"
    same = sorted({r.format for r in compared if not r.vs_first_changed})
    return (f"{name}: against {first}, the same file answers differently on " + "; ".join(
        f"{r.format} ({r.backend}) {r.vs_first_changed} of {r.val_images} images ({r.vs_first_lost} lost, "
        f"{r.vs_first_gained} gained)" for r in moved) + (f"; identical: {', '.join(same)}" if same else ""))


def add_device_decoding(rows: list[BenchRow], probs: dict, decoded_probs: dict) -> None:
    """``--decode-on device``: top-1 on the photos each device decoded and resized itself, and how many
    images change their answer against the same model fed this machine's decoding."""
    for row in rows:
        p, p_device = probs.get(row.key), decoded_probs.get(row.key)
        if p is None or p_device is None:
            continue
        pred = p_device.argmax(axis=1)
        row.device_decode_top1 = float((pred == row.export.labels).mean())
        row.device_decode_changed = int((pred != p.argmax(axis=1)).sum())


def decoding_notes(name: str, decoded: dict, rows: list[BenchRow]) -> list[str]:
    """One sentence per image set the device decoded: its bytes against this machine's, and the top-1."""
    notes = []
    for label, c in decoded.items():
        mine = [r for r in rows if r.device_decode_top1 is not None and label in (r.model, "")]
        moved = [r for r in mine if r.device_decode_changed]
        answers = "the same top-1 class for every image on every model" if not moved else "; ".join(
            f"{r.format} ({r.backend}) {(r.device_decode_top1 - r.top1) * 100:+.2f} pt, {r.device_decode_changed} "
            f"answers changed" for r in moved)
        notes.append(f"{name}: {label}: decoded on the device (OpenCV {c.get('opencv')}): {c['identical_images']} "
                     f"of {c['images']} images byte-identical to this machine's decoding (max |difference| "
                     f"{c['max_abs_diff']}, {c['pixels_differing']:.3%} of values differ); with its decoding: "
                     f"{answers}")
    return notes


def isa_note(name: str, machine: str | None, rows: list[BenchRow]) -> str | None:
    """Rows on ``name`` whose top-1 moved from export's figure where export verified on another ISA."""
    moved, where = [], set()
    for r in rows:
        art = r.export.bundle.artifact(r.format) if r.export else None
        on = art.extra.get("verified_on") if art else None
        if (r.export_diff_pt and on and machine and on != machine
                and r.export_val_images in (None, r.val_images)):
            moved.append(f"{r.format} ({r.backend}) {r.export_diff_pt:+.2f} pt")
            where.add(on)
    if not moved:
        return None
    return (f"{name} ({machine}): {'; '.join(moved)} against the top-1 export measured on {', '.join(sorted(where))}: "
            f"the same file on another ISA's kernels (int8 requantization and fused kernels differ by ISA); bench "
            f"the board you ship to")
