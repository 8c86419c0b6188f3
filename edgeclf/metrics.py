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
    y_pred = probs.argmax(axis=1)
    cm = confusion(y_true, y_pred, k)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    out = {
        "images": int(len(y_true)),
        "top1": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "macro_f1": float(f1[support > 0].mean()) if (support > 0).any() else 0.0,
        "per_class": {c: {"precision": round(float(precision[i]), 4), "recall": round(float(recall[i]), 4),
                          "f1": round(float(f1[i]), 4), "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
    }
    if k > 5:
        top5 = np.argsort(-probs, axis=1)[:, :5]
        out["top5"] = float((top5 == y_true[:, None]).any(axis=1).mean())
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
