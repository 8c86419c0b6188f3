"""The run folder: what ``edgeclf train`` writes, and ``edgeclf export`` and ``edgeclf bench`` read.
Shared ground beside :mod:`edgeclf.contract` (the export folder). No TensorFlow.

    runs/train/<name>/
      args.yaml  data_report.json  split.json  results.csv  results.png  report.json
      confusion_matrix.png  confusion_matrix_normalized.png  state.json
      val_predictions.csv          (every validation image: true and predicted class, scores)
      field_val_predictions.csv    (with --add: every field validation image's answers; edgeclf.train.field_eval)
      report.html                  (the page: edgeclf.page; export and bench bring it up to date)
      weights/best.keras  weights/last.keras
      export/                      (edgeclf export's default output: the contract)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgeclf.config import TrainConfig
from edgeclf.data.dataset import Dataset
from edgeclf.errors import EdgeclfError
from edgeclf.models.registry import get_backbone

ARGS = "args.yaml"
SPLIT = "split.json"
STATE = "state.json"
REPORT = "report.json"
RESULTS = "results.csv"
DATA_REPORT = "data_report.json"
BEST = "weights/best.keras"
LAST = "weights/last.keras"
EXPORT = "export"
PREDICTIONS = "val_predictions.csv"
PREDICTION_FIELDS = ("file", "true", "predicted", "score", "true_score")


@dataclass
class RunInfo:
    dir: Path
    config: TrainConfig
    classes: list[str]
    imgsz: int

    @property
    def best(self) -> Path:
        return self.dir / BEST

    @property
    def last(self) -> Path:
        return self.dir / LAST

    def dataset(self) -> Dataset:
        """The exact train/val split the model was trained on."""
        return Dataset.load(self.dir / SPLIT)

    def val_top1(self) -> float | None:
        """Validation top-1 from ``report.json`` (None when training has not finished)."""
        return report_top1(self.dir)

    def temperature(self) -> float | None:
        """The temperature training fitted (``report.json``'s ``calibration``), or None."""
        t = (_report(self.dir).get("calibration") or {}).get("temperature")
        return float(t) if isinstance(t, (int, float)) and t > 0 else None


def _report(run_dir: Path) -> dict:
    from edgeclf.fsutil import read_json_dict

    return read_json_dict(Path(run_dir) / REPORT)


def report_top1(run_dir: Path) -> float | None:
    v = _report(run_dir).get("top1")
    return float(v) if isinstance(v, (int, float)) else None


def split_root(run_dir: Path) -> Path | None:
    """The data folder a run's ``split.json`` was made from (None if unreadable)."""
    try:
        return Path(json.loads((Path(run_dir) / SPLIT).read_text(encoding="utf-8"))["root"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def new_run_dir(project: str | Path, name: str) -> Path:
    """``project/name``, or ``name2``, ``name3``… when taken (as Ultralytics users know)."""
    from edgeclf import fsutil

    candidate = fsutil.free_dir(project, name)
    (candidate / "weights").mkdir(parents=True)
    return candidate


def latest_run(project: str | Path) -> Path:
    runs = [p for p in Path(project).glob("*") if (p / ARGS).is_file()]
    if not runs:
        raise EdgeclfError(f"no run to resume under {project}")
    return max(runs, key=lambda p: (p / ARGS).stat().st_mtime)


def load_run(run_dir: str | Path) -> RunInfo:
    """Read a run folder written by ``edgeclf train``; one-line errors when it is not one."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise EdgeclfError(f"{run_dir}: no such run folder")
    if not (run_dir / ARGS).is_file():
        raise EdgeclfError(f"{run_dir}: not an edgeclf run folder (no {ARGS})")
    cfg = TrainConfig.load(run_dir / ARGS)
    split = run_dir / SPLIT
    if not split.is_file():
        raise EdgeclfError(f"{run_dir}: no {SPLIT}; the run did not get past its data scan")
    classes = json.loads(split.read_text(encoding="utf-8"))["classes"]
    return RunInfo(run_dir, cfg, classes, cfg.imgsz or get_backbone(cfg.model).size)


def write_predictions(run_dir: Path, samples: list, root: Path, probs, classes: list[str]) -> Path:
    """``val_predictions.csv``: one row per validation image, in the split's order: its path relative to the
    data folder, true and predicted class, the predicted class's score and the true class's."""
    import csv
    import io
    import os

    from edgeclf import fsutil

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PREDICTION_FIELDS)
    for s, p in zip(samples, probs):
        pred = int(p.argmax())
        writer.writerow([os.path.relpath(s.path, root), classes[s.label], classes[pred], f"{float(p[pred]):.4f}",
                         f"{float(p[s.label]):.4f}"])
    return fsutil.write_text(Path(run_dir) / PREDICTIONS, buf.getvalue())


def read_predictions(run_dir: Path) -> list[dict]:
    """The rows of ``val_predictions.csv`` (empty when the run has none: trained before it was written)."""
    return read_score_rows(Path(run_dir) / PREDICTIONS, ("score", "true_score"))


def read_score_rows(path: Path, scores: tuple[str, ...]) -> list[dict]:
    """The rows of a run's predictions CSV, the ``scores`` columns as floats where filled ([] without the file)."""
    import csv

    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k in scores:
            if r.get(k):
                r[k] = float(r[k])
    return rows
