"""The run folder's plots (matplotlib, headless) and the summary `edgeclf train` prints. The metrics
themselves live in :mod:`edgeclf.metrics`."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from edgeclf import fsutil


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


def print_summary(rep: dict, classes: list[str], run_dir: Path, console) -> None:
    """The per-class table of ``report.json`` and the next command, as ``edgeclf train`` ends."""
    from rich.table import Table

    table = Table(title=f"best model (epoch {rep['best_epoch']}) on {rep['images']} validation images")
    for col in ("class", "precision", "recall", "F1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in classes:
        m = rep["per_class"][c]
        table.add_row(c, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    console.print(table)
    extra = f", top-5 {rep['top5']:.2%}" if "top5" in rep else ""
    console.print(f"[b]val top-1 {rep['top1']:.2%}[/b]{extra}, macro-F1 {rep['macro_f1']:.3f}, "
                  f"{rep['train_seconds']:.0f}s of training. Results in {run_dir}", highlight=False)
    for line in field_lines(rep):
        console.print(line, highlight=False, markup=False)
    if (Path(run_dir) / "report.html").is_file():
        console.print(f"report: {Path(run_dir) / 'report.html'}", highlight=False, markup=False)
    console.print(f"next: edgeclf export {run_dir} --int8", highlight=False, markup=False)


def field_lines(rep: dict) -> list[str]:
    """The field loop's figures (``--add``, ``--compare``) in words: the summary's and the page's."""
    out = []
    fv, cmp_ = rep.get("field_val"), rep.get("compare") or {}
    field = rep.get("field") or {}
    if field:
        out.append(f"field images: {field.get('train_images', 0)} trained on, {field.get('field_val_images', 0)} "
                   f"held out as the field validation set")
    if fv:
        line = f"field validation top-1 {fv['top1']:.2%} ({fv['correct']}/{fv['images']})"
        if isinstance(cmp_.get("field_val_top1"), (int, float)):
            line += (f"; the previous model ({Path(cmp_['run']).name}) {cmp_['field_val_top1']:.2%} on the same "
                     f"images: {100 * cmp_['field_val_top1_delta']:+.1f} pt")
        out.append(line)
    if isinstance(cmp_.get("val_top1"), (int, float)):
        note = "" if cmp_.get("same_val_images") else " (its validation images differ from this run's)"
        out.append(f"validation top-1 {rep['top1']:.2%}; the previous model ({Path(cmp_['run']).name}) "
                   f"{cmp_['val_top1']:.2%}: {100 * cmp_['val_top1_delta']:+.1f} pt{note}")
    return out
