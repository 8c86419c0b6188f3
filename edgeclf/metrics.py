"""Classification metrics, numpy only: what train, export and bench all report, computed in one place.

No TensorFlow. ``classification_report`` is what ``report.json`` and bench rows hold; ``compare`` is the
comparison of a model with its float reference (top-1, agreement, drop in points) that export's
verification, the quantization search and bench all use.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def classification_report(probs: np.ndarray, y_true: np.ndarray, classes: list[str]) -> dict:
    """top-1 (and top-5 with more than five classes), per-class precision/recall/F1/support, macro-F1."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=int)
    k = len(classes)
    cm = confusion(y_true, probs.argmax(axis=1) if len(probs) else np.zeros(0, int), k)
    top5 = top5_hits(probs, y_true) if k > 5 else None
    return report_from_counts(cm, classes, top5)


def top5_hits(probs: np.ndarray, y_true: np.ndarray) -> int:
    """How many rows have their true class among the five most probable."""
    if not len(probs):
        return 0
    top5 = np.argsort(-np.asarray(probs), axis=1)[:, :5]
    return int((top5 == np.asarray(y_true, dtype=int)[:, None]).any(axis=1).sum())


def report_from_counts(cm: np.ndarray, classes: list[str], top5: int | None = None) -> dict:
    """:func:`classification_report` from its counts: the confusion matrix (rows: true class) and the
    top-5 hits (given with more than five classes) -- what adds up across batches and machines."""
    cm = np.asarray(cm, dtype=np.int64)
    k = len(classes)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    n = int(cm.sum())
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    out = {
        "images": n,
        "top1": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(f1[support > 0].mean()) if (support > 0).any() else 0.0,
        "per_class": {c: {"precision": round(float(precision[i]), 4), "recall": round(float(recall[i]), 4),
                          "f1": round(float(f1[i]), 4), "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
    }
    if k > 5 and top5 is not None:
        out["top5"] = float(top5 / n) if n else 0.0
    return out


def top1(pred: np.ndarray, labels: np.ndarray) -> float:
    """Share of ``pred`` equal to ``labels`` (0.0 for no images)."""
    pred, labels = np.asarray(pred), np.asarray(labels)
    return float((pred == labels).mean()) if len(labels) else 0.0


@dataclass(frozen=True)
class Comparison:
    """A model's predictions against the labels and against its float reference's predictions."""

    top1: float
    agreement: float | None  # share of images whose top-1 class equals the reference's
    drop_pt: float | None  # reference top-1 minus this top-1, in points (positive: worse)


def compare(pred: np.ndarray, labels: np.ndarray, reference_pred: np.ndarray | None = None) -> Comparison:
    """Top-1 of ``pred``, and its agreement with and drop against ``reference_pred`` (when given)."""
    acc = top1(pred, labels)
    if reference_pred is None:
        return Comparison(acc, None, None)
    ref = top1(reference_pred, labels)
    return Comparison(acc, top1(pred, reference_pred), round((ref - acc) * 100, 2))
