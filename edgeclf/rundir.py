"""The run folder: what ``edgeclf train`` writes, and ``edgeclf export`` and ``edgeclf bench`` read.
Shared ground beside :mod:`edgeclf.contract` (the export folder). No TensorFlow.

    runs/train/<name>/
      args.yaml  data_report.json  split.json  results.csv  results.png  report.json
      confusion_matrix.png  confusion_matrix_normalized.png  state.json
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


def report_top1(run_dir: Path) -> float | None:
    try:
        d = json.loads((Path(run_dir) / REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    v = d.get("top1") if isinstance(d, dict) else None
    return float(v) if isinstance(v, (int, float)) else None


def split_root(run_dir: Path) -> Path | None:
    """The data folder a run's ``split.json`` was made from (None if unreadable)."""
    try:
        return Path(json.loads((Path(run_dir) / SPLIT).read_text(encoding="utf-8"))["root"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def new_run_dir(project: str | Path, name: str) -> Path:
    """``project/name``, or ``name2``, ``name3``… when taken (as Ultralytics users know)."""
    project = Path(project)
    candidate, n = project / name, 2
    while candidate.exists():
        candidate, n = project / f"{name}{n}", n + 1
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
