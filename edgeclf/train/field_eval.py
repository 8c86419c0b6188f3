"""The field loop's figures in ``report.json``: did the labelled field images (``--add DIR``) help, and did they
cost anything on the original photos?

* ``field_val``: the best model on the field validation set (the ``--field-val`` share of the field images, never
  trained on): top-1, counts per class; every image's answer in ``field_val_predictions.csv``;
* ``compare`` (``--compare RUN``, a previous run, typically the deployed model): RUN's model on the very same field
  validation images, RUN's own validation top-1 (its ``report.json``), and the deltas (this run minus RUN).

The top-1 on the original validation split stays ``report.json``'s ``top1``. The run's page shows all of it
(:mod:`edgeclf.page.field`).
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np

from edgeclf import fsutil, rundir
from edgeclf.errors import EdgeclfError
from edgeclf.log import get_logger

log = get_logger(__name__)

FIELD_PREDICTIONS = "field_val_predictions.csv"
FIELDS = ("file", "true", "predicted", "score", "true_score", "previous", "previous_score")


def check_field_options(cfg) -> None:
    """``--add``, ``--field-val`` and ``--compare`` as a run can start with them (one-line errors); paths made
    absolute, as ``args.yaml`` records them."""
    from edgeclf.data.field import LABELS

    if not 0.0 <= cfg.field_val < 1.0:
        raise EdgeclfError(f"--field-val must be at least 0 and below 1 (got {cfg.field_val})")
    if cfg.add and cfg.split_from:
        raise EdgeclfError("--add and --split-from together: --split-from reuses a split as it is; train with --add "
                           "alone (its split.json records every field image)")
    cfg.add = [str(Path(d).expanduser().resolve()) for d in cfg.add or []]
    for d in cfg.add:
        if not Path(d).is_dir():
            raise EdgeclfError(f"--add {d}: no such folder")
        if not (Path(d) / LABELS).is_file():
            raise EdgeclfError(f"--add {d}: no {LABELS} there (label the frames first: edgeclf label {d})")
    if cfg.compare:
        info = rundir.load_run(cfg.compare)  # one-line error when it is not a run folder
        if not info.best.is_file():
            raise EdgeclfError(f"--compare {cfg.compare}: no {rundir.BEST} (that run has not finished training)")
        cfg.compare = str(info.dir.resolve())


def check_resume(cfg, resume: str) -> None:
    """``--resume`` with ``--add``/``--compare``: a run resumes with the settings its ``args.yaml`` saved, so
    these must be the run's own (repeating the first command with ``--resume`` is fine); anything else is an
    error rather than silently ignored."""
    run_dir = rundir.latest_run(cfg.project) if str(resume) == "last" else Path(resume)
    saved = rundir.load_run(run_dir).config
    given = [str(Path(d).expanduser().resolve()) for d in cfg.add]
    if cfg.add and given != list(saved.add):
        raise EdgeclfError(f"--resume {run_dir}: that run was started with --add {' '.join(saved.add) or '(none)'}; "
                           f"a run resumes with its own field folders (start a new run to add others)")
    if cfg.compare and str(Path(cfg.compare).resolve()) != (saved.compare or ""):
        raise EdgeclfError(f"--resume {run_dir}: that run compares with {saved.compare or 'no run'}; a run resumes "
                           f"with its own --compare")


def check_compare(run: str | Path, ds) -> None:
    """The previous run must answer with the same classes, in the same order."""
    info = rundir.load_run(run)
    if list(info.classes) != list(ds.classes):
        raise EdgeclfError(f"--compare {run}: that model's classes ({', '.join(info.classes)}) are not this data's "
                           f"({', '.join(ds.classes)})")


def predict(model, samples, size: int, resize: str, batch: int = 64) -> np.ndarray:
    """Class probabilities of a whole Keras classifier (RGB 0..255 in) on the images of ``samples``."""
    from edgeclf.convert.calibration import load_images

    out = [model(load_images(samples[i:i + batch], size, size, resize).astype(np.float32), training=False).numpy()
           for i in range(0, len(samples), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _figures(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    pred = probs.argmax(axis=1)
    per_class = {c: {"images": int((labels == i).sum()), "correct": int(((labels == i) & (pred == i)).sum())}
                 for i, c in enumerate(classes)}
    correct = int((pred == labels).sum())
    return {"top1": correct / len(labels), "images": int(len(labels)), "correct": correct,
            "wrong": int(len(labels) - correct), "per_class": per_class}


def add_field_figures(session, rep: dict) -> dict:
    """``rep`` (``report.json``'s content) with ``field``, ``field_val`` and ``compare`` where the run has field
    images or a ``--compare`` run; ``field_val_predictions.csv`` written beside it."""
    cfg, ds = session.cfg, session.ds
    field_train = [s for s in ds.train if s.origin]
    if not (cfg.add or cfg.compare):
        return rep
    rep["field"] = {"dirs": list(cfg.add), "field_val_share": cfg.field_val, "train_images": len(field_train),
                    "field_val_images": len(ds.field_val), "predictions": FIELD_PREDICTIONS}
    samples = ds.field_val
    labels = np.array([s.label for s in samples], dtype=np.int64)
    probs = prev_probs = None
    if samples:
        probs = predict(session.model, samples, session.size, cfg.resize)
        temperature = float((rep.get("calibration") or {}).get("temperature") or 1.0)
        from edgeclf import temperature as temp

        probs = temp.scale(probs, temperature).astype(np.float32)  # the scores the exported model gives
        rep["field_val"] = _figures(probs, labels, ds.classes)
        log.info(f"field validation top-1 {rep['field_val']['top1']:.2%} on {len(samples)} field images "
                 f"(validation top-1 {rep['top1']:.2%})")
    if cfg.compare:
        rep["compare"], prev_probs = _compare(cfg.compare, ds, samples, labels, rep)
    if samples and session.cluster.is_chief and session.run.dir is not None:
        write_predictions(session.run.dir / FIELD_PREDICTIONS, samples, probs, prev_probs, ds.classes)
    return rep


def _compare(run: str, ds, samples, labels: np.ndarray, rep: dict) -> tuple[dict, np.ndarray | None]:
    """The previous run's model on the same field validation images, its validation top-1, and the deltas."""
    import keras

    info = rundir.load_run(run)
    prev_rep = fsutil.read_json_dict(info.dir / rundir.REPORT)
    out: dict = {"run": str(info.dir), "val_top1": prev_rep.get("top1"), "val_images": prev_rep.get("images")}
    try:
        prev_val = {os.path.abspath(s.path) for s in info.dataset().val}
    except EdgeclfError:
        prev_val = set()
    out["same_val_images"] = prev_val == {os.path.abspath(s.path) for s in ds.val}
    if isinstance(out["val_top1"], (int, float)):
        out["val_top1_delta"] = rep["top1"] - out["val_top1"]
    prev_probs = None
    if samples:
        try:
            prev_train = {os.path.abspath(s.path) for s in info.dataset().split("train")}
        except EdgeclfError:
            prev_train = set()
        model = keras.models.load_model(info.best, compile=False)
        prev_probs = predict(model, samples, info.imgsz, info.config.resize)
        temperature = info.temperature() or 1.0
        from edgeclf import temperature as temp

        prev_probs = temp.scale(prev_probs, temperature).astype(np.float32)
        figures = _figures(prev_probs, labels, ds.classes)
        out["field_val_top1"] = figures["top1"]
        out["field_val_correct"] = figures["correct"]
        out["field_val_top1_delta"] = rep["field_val"]["top1"] - figures["top1"]
        out["field_val_trained_on"] = sum(1 for s in samples if os.path.abspath(s.path) in prev_train)
        log.info(f"{info.dir.name} (--compare): field validation top-1 {figures['top1']:.2%} -> "
                 f"{rep['field_val']['top1']:.2%}; validation top-1 "
                 + (f"{out['val_top1']:.2%} -> {rep['top1']:.2%}" if "val_top1_delta" in out else "unknown"))
    return out, prev_probs


def write_predictions(path: Path, samples, probs: np.ndarray, prev: np.ndarray | None, classes: list[str]) -> Path:
    """One row per field validation image: its absolute path, true and predicted class, the predicted and the true
    class's score, and with ``--compare`` the previous model's answer and score."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(FIELDS if prev is not None else FIELDS[:5])
    for i, s in enumerate(samples):
        p = probs[i]
        pred = int(p.argmax())
        row = [os.path.abspath(s.path), classes[s.label], classes[pred], f"{float(p[pred]):.4f}",
               f"{float(p[s.label]):.4f}"]
        if prev is not None:
            q = int(prev[i].argmax())
            row += [classes[q], f"{float(prev[i][q]):.4f}"]
        writer.writerow(row)
    return fsutil.write_text(path, buf.getvalue())


def read_field_predictions(run_dir: Path) -> list[dict]:
    """The rows of ``field_val_predictions.csv`` (empty when the run has none)."""
    return rundir.read_score_rows(Path(run_dir) / FIELD_PREDICTIONS, ("score", "true_score", "previous_score"))
