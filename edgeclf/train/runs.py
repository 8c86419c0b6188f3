"""The run being trained: settings checked, the data scanned (or a saved split reused), the run folder created
or resumed, a cluster's workers agreed on one run. :mod:`edgeclf.train.trainer` trains it."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgeclf import fsutil, rundir
from edgeclf.config import TrainConfig
from edgeclf.data.dataset import Dataset, format_report, scan
from edgeclf.errors import EdgeclfError
from edgeclf.log import get_logger
from edgeclf.models.registry import get_backbone
from edgeclf.train.stages import Stage, plan_stages
from edgeclf.train.state import RunState

log = get_logger(__name__)


@dataclass
class Run:
    """A run folder being trained: its settings, data split, state and plan."""

    dir: Path | None  # None on a cluster worker that is not the chief: it writes no run folder
    cfg: TrainConfig
    data: Dataset
    state: RunState
    stages: list[Stage] = field(default_factory=list)

    def __post_init__(self):
        self.stages = self.stages or plan_stages(self.cfg)


def check_config(cfg: TrainConfig) -> None:
    """Settings a run cannot start with: one-line errors before anything is written."""
    backbone = get_backbone(cfg.model)
    cfg.imgsz = int(cfg.imgsz or backbone.size)
    if cfg.imgsz < backbone.min_size:
        raise EdgeclfError(f"{cfg.model} needs --imgsz of at least {backbone.min_size}")
    if cfg.optimizer not in ("adam", "rmsprop"):
        raise EdgeclfError(f"--optimizer must be adam or rmsprop (got {cfg.optimizer})")
    if str(cfg.unfreeze) != "all" and not str(cfg.unfreeze).isdigit():
        raise EdgeclfError(f"--unfreeze takes a number of layers or 'all' (got {cfg.unfreeze})")
    if cfg.cache_views < 0:
        raise EdgeclfError(f"--cache-views must be 0 or more (got {cfg.cache_views})")
    if cfg.batch < 1:
        raise EdgeclfError(f"--batch must be 1 or more (got {cfg.batch})")
    from edgeclf.train.field_eval import check_field_options

    check_field_options(cfg)


def prepare_run(cfg: TrainConfig, exact_name: bool = False) -> Run:
    """Scan the data and create the run folder with the settings, data report and exact split
    (``project/name``, or ``name2``, ``name3``… when taken, unless ``exact_name``)."""
    check_config(cfg)
    ds = split_from(cfg) if cfg.split_from else scan(cfg.data, val_split=cfg.val_split, seed=cfg.seed,
                                                     holdout=cfg.holdout, add=cfg.add, field_val=cfg.field_val)
    log.info(format_report(ds.report))
    if cfg.compare:
        from edgeclf.train.field_eval import check_compare

        check_compare(cfg.compare, ds)
    if exact_name:
        run_dir = Path(cfg.project) / cfg.name
        (run_dir / "weights").mkdir(parents=True, exist_ok=True)
    else:
        run_dir = rundir.new_run_dir(cfg.project, cfg.name)
    cfg.data = str(Path(cfg.data).resolve())
    cfg.save(run_dir / rundir.ARGS)
    fsutil.write_json(run_dir / rundir.DATA_REPORT, ds.report.to_dict())
    ds.save(run_dir / rundir.SPLIT)
    log.info(f"run folder: {run_dir}")
    return Run(run_dir, cfg, ds, RunState())


def split_from(cfg: TrainConfig) -> Dataset:
    """The exact split (and data report) another run or a sweep saved, for ``--split-from``; it must be of
    the same data folder. The holdout share is the split's."""
    from edgeclf.data.dataset import DataReport

    source = Path(cfg.split_from)
    folder = source.parent if source.name == rundir.SPLIT else source
    if not (folder / rundir.SPLIT).is_file():
        raise EdgeclfError(f"--split-from {source}: no {rundir.SPLIT} there")
    try:
        d = json.loads((folder / rundir.DATA_REPORT).read_text(encoding="utf-8"))
        rep = DataReport(**{k: v for k, v in d.items() if k != "total"})
    except (OSError, ValueError, TypeError):
        rep = None
    ds = Dataset.load(folder / rundir.SPLIT, rep)
    if Path(ds.root).resolve() != Path(cfg.data).resolve():
        raise EdgeclfError(f"--split-from {source}: that split is of {ds.root}, not of {cfg.data}")
    cfg.holdout = float(rep.holdout) if rep else cfg.holdout
    return ds


def resume_run(resume: str | Path, project: str | Path) -> Run:
    """The run folder ``resume`` (``"last"``: the latest under ``project``) as it was left."""
    run_dir = rundir.latest_run(project) if str(resume) == "last" else Path(resume)
    info = rundir.load_run(run_dir)
    state = RunState.load(run_dir)
    if not state.done:
        if state.epoch > 0 and not (run_dir / rundir.LAST).is_file():
            raise EdgeclfError(f"{run_dir}: {rundir.LAST} is missing; cannot resume")
        log.info(f"resuming {run_dir} after epoch {state.epoch}")
    return Run(run_dir, info.config, info.dataset(), state)


def open_cluster_run(cfg: TrainConfig, cluster) -> Run:
    """The run of a cluster: the chief creates ``--project/--name`` or resumes it when it is there (a
    restarted cluster); the other workers scan the same data and take the chief's state."""
    from dataclasses import asdict

    check_config(cfg)
    if cluster.is_chief:
        run_dir = Path(cfg.project) / cfg.name
        if (run_dir / rundir.ARGS).is_file():
            run = resume_run(run_dir, cfg.project)
        elif run_dir.is_dir() and any(run_dir.iterdir()):
            raise EdgeclfError(f"{run_dir} exists and is not a run folder: choose another --name")
        else:
            run = prepare_run(cfg, exact_name=True)
    else:
        run = Run(None, cfg, scan(cfg.data, val_split=cfg.val_split, seed=cfg.seed, holdout=cfg.holdout, add=cfg.add,
                                  field_val=cfg.field_val), RunState())
    cluster.same_everywhere(_fingerprint(run.cfg, run.data), "the training settings or the data split")
    for split in ("train", "val"):
        if len(run.data.split(split)) < cluster.workers:
            raise EdgeclfError(f"{len(run.data.split(split))} {split} images for {cluster.workers} workers: every "
                               f"worker needs a share of each split")
    run.state = RunState(**cluster.broadcast_json(asdict(run.state)))
    return run


def _fingerprint(cfg: TrainConfig, ds: Dataset) -> int:
    """What every worker of a cluster must agree on: the settings that shape training, and the split."""
    import hashlib
    from dataclasses import asdict

    local = {"data", "project", "name", "cache_dir", "distributed", "split_from"}  # may differ from host to host
    settings = {k: v for k, v in asdict(cfg).items() if k not in local}
    split = [(os.path.relpath(s.path, ds.root), s.label, s.split) for s in ds.samples]
    digest = hashlib.sha256(json.dumps([settings, ds.classes, split], sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:6], "big")  # 48 bits: exact in the float64 the all-reduce carries
