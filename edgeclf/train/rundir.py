"""The run folder that ``edgeclf train`` writes and ``edgeclf export`` reads. No TensorFlow.

    runs/train/<name>/
      args.yaml  data_report.json  split.json  results.csv  results.png  report.json
      confusion_matrix.png  confusion_matrix_normalized.png  state.json
      weights/best.keras  weights/last.keras
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
BEST = "weights/best.keras"
LAST = "weights/last.keras"


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

    def state(self) -> dict:
        p = self.dir / STATE
        return json.loads(p.read_text()) if p.is_file() else {}


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
