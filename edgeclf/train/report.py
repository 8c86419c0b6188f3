"""Classification metrics (numpy only) and the run folder's plots (matplotlib, headless)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from edgeclf import fsutil


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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_fig(fig, path: Path) -> None:
    with fsutil.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _plt().close(fig)


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, normalize: bool) -> None:
    plt = _plt()
    data = cm.astype(float)
    if normalize:
        rows = data.sum(axis=1, keepdims=True)
        data = np.divide(data, rows, out=np.zeros_like(data), where=rows > 0)
    k = len(classes)
    side = max(4.0, 0.6 * k + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    im = ax.imshow(data, cmap="Blues", vmin=0, vmax=1 if normalize else max(1, data.max()))
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (normalised by true class)" if normalize else ""))
    if k <= 30:
        thresh = data.max() / 2 if data.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{data[i, j]:.2f}" if normalize else str(int(data[i, j])), ha="center",
                        va="center", fontsize=8, color="white" if data[i, j] > thresh else "black")
    _save_fig(fig, path)


def plot_results(results_csv: Path, path: Path) -> None:
    """Loss, accuracy and learning rate per epoch, the two stages shaded apart."""
    with open(results_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    plt = _plt()
    epoch = [int(r["epoch"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (a, b, title) in zip(axes, [("train_loss", "val_loss", "loss"), ("train_acc", "val_acc", "accuracy"),
                                        ("lr", None, "learning rate")]):
        ax.plot(epoch, [float(r[a]) for r in rows], marker=".", label=a)
        if b:
            ax.plot(epoch, [float(r[b]) for r in rows], marker=".", label=b)
            ax.legend()
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        stages = [r["stage"] for r in rows]
        for i in range(1, len(stages)):
            if stages[i] != stages[i - 1]:
                ax.axvline(epoch[i] - 0.5, color="grey", linestyle="--", linewidth=1)
    axes[2].set_yscale("log")
    _save_fig(fig, path)
