"""What a run folder remembers between epochs: ``state.json`` and ``results.csv``. Plain Python.

After every epoch, in this order: ``weights/last.keras``, ``weights/best.keras`` (when validation accuracy
improved), ``results.csv``, then ``state.json`` — each written atomically. ``state.json`` is the truth a
resumed run starts from; ``results.csv`` is read back up to the epoch it names, one row per epoch.
"""
from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

from edgeclf import fsutil, rundir
from edgeclf.errors import EdgeclfError
from edgeclf.train.stages import Stage

RESULT_FIELDS = ["epoch", "stage", "stage_epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
                 "elapsed"]  # elapsed: wall seconds since training started, feature caching included


@dataclass
class RunState:
    """``state.json``: where training is, so that ``--resume`` continues from there."""

    stage: int = 0  # index of the stage in progress (len(stages) once every stage has run)
    stage_epoch: int = 0  # epochs finished in that stage
    epoch: int = 0  # epochs finished in all stages
    best_val_acc: float = -1.0
    best_epoch: int = -1
    since_best: int = 0  # epochs without a gain in validation accuracy (early stopping)
    done: bool = False  # report.json written
    train_seconds: float = 0.0
    stopped_stage: int | None = None  # the last stage early stopping ended
    feature_cache: dict = field(default_factory=dict)  # the cache entries this run trained on

    @classmethod
    def load(cls, run_dir: Path) -> "RunState":
        path = Path(run_dir) / rundir.STATE
        if not path.is_file():
            return cls()
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EdgeclfError(f"{path}: cannot read the training state ({exc})") from None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, run_dir: Path) -> None:
        fsutil.write_json(Path(run_dir) / rundir.STATE, asdict(self))

    def epochs_before(self, stage_index: int) -> int:
        """Epochs finished before ``stage_index`` started: its first epoch is numbered this + 1."""
        return self.epoch - self.stage_epoch if stage_index == self.stage else self.epoch

    def start_epoch(self, stage_index: int) -> int:
        """Epochs of ``stage_index`` already finished (where its resumed ``fit`` starts)."""
        return self.stage_epoch if stage_index == self.stage else 0

    def stage_finished(self, stage_index: int, stage: Stage) -> bool:
        return (stage_index < self.stage or self.stopped_stage == stage_index
                or self.start_epoch(stage_index) >= stage.epochs)


def read_results(path: Path, upto_epoch: int) -> list[dict]:
    """The rows of ``results.csv`` for epochs 1..``upto_epoch``, one per epoch (the last written wins).

    Rows past ``upto_epoch`` belong to an epoch a kill interrupted before ``state.json`` recorded it:
    that epoch runs again, so its row is dropped here rather than repeated.
    """
    if not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        by_epoch = {}
        for row in csv.DictReader(fh):
            try:
                epoch = int(row["epoch"])
            except (KeyError, TypeError, ValueError):
                continue
            if 1 <= epoch <= upto_epoch:
                by_epoch[epoch] = {k: row.get(k, "") for k in RESULT_FIELDS}
    return [by_epoch[e] for e in sorted(by_epoch)]


def write_results(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=RESULT_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    fsutil.write_text(path, buf.getvalue())


def _copy(src: Path, dst: Path) -> None:
    import shutil

    with fsutil.atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


@dataclass
class EpochOutcome:
    epoch: int  # global epoch number, 1-based
    improved: bool
    stop: bool  # early stopping: no gain for --patience epochs


class EpochRecorder:
    """Everything that follows an epoch, whoever runs it: the checkpoints, the row of ``results.csv``,
    ``state.json`` and the early-stopping decision.

    ``save_weights(path)`` writes the model atomically; ``best.keras`` is a copy of ``last.keras`` made
    when validation accuracy improved. A worker that is not the chief of a cluster keeps the same state
    (its decisions must match the chief's) but writes nothing (``writes=False``).
    """

    def __init__(self, run_dir: Path | None, state: RunState, patience: int, save_weights: Callable[[Path], None],
                 writes: bool = True, t_start: float | None = None):
        writes = writes and run_dir is not None
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.state = state
        self.patience = patience
        self.save_weights = save_weights
        self.writes = writes
        self.t_start = time.time() - state.train_seconds if t_start is None else t_start
        self.rows = read_results(self.run_dir / rundir.RESULTS, state.epoch) if writes else []

    def end_epoch(self, stage_index: int, stage: Stage, stage_epoch: int, logs: dict, lr: float,
                  seconds: float) -> EpochOutcome:
        """Record epoch ``stage_epoch`` (1-based) of ``stage``; ``logs`` are Keras' epoch logs."""
        st = self.state
        epoch = st.epochs_before(stage_index) + stage_epoch
        st.stage, st.stage_epoch, st.epoch = stage_index, stage_epoch, epoch
        val_acc = float(logs.get("val_accuracy", 0.0))
        improved = val_acc > st.best_val_acc
        if improved:
            st.best_val_acc, st.best_epoch, st.since_best = val_acc, epoch, 0
        else:
            st.since_best += 1
        stop = st.since_best >= self.patience
        if stop:
            st.stopped_stage = stage_index
        st.train_seconds = round(time.time() - self.t_start, 1)
        row = {"epoch": epoch, "stage": stage.name, "stage_epoch": stage_epoch,
               "train_loss": f"{logs.get('loss', 0):.5f}", "train_acc": f"{logs.get('accuracy', 0):.5f}",
               "val_loss": f"{logs.get('val_loss', 0):.5f}", "val_acc": f"{val_acc:.5f}", "lr": f"{lr:.3g}",
               "seconds": f"{seconds:.1f}", "elapsed": f"{st.train_seconds:.1f}"}
        self.rows = [r for r in self.rows if int(r["epoch"]) < epoch] + [row]
        if self.writes:
            self.save_weights(self.run_dir / rundir.LAST)
            if improved:
                _copy(self.run_dir / rundir.LAST, self.run_dir / rundir.BEST)
            write_results(self.run_dir / rundir.RESULTS, self.rows)
            st.save(self.run_dir)
        return EpochOutcome(epoch, improved, stop)

    def end_stage(self, stage_index: int) -> None:
        """The stage is over (run out or stopped early): the next one starts from the best weights."""
        self.state.stage, self.state.stage_epoch, self.state.since_best = stage_index + 1, 0, 0
        if self.writes:
            self.state.save(self.run_dir)
