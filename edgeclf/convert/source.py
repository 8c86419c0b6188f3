"""What is being exported: a run folder of ``edgeclf train`` or a bare ``.keras`` file. No TensorFlow.

Both resolve to an :class:`ExportSource`: the model file, class names in output order, input size,
resize method, and the training/validation images (the exact split of the run, or a scan of
``--data`` for a bare model).
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from edgeclf.errors import EdgeclfError
from edgeclf.imageio import DEFAULT_RESIZE, RESIZE_METHODS


@dataclass
class ExportSource:
    model_path: Path
    classes: list[str]
    imgsz: int
    resize: str
    train: list  # [Sample] for calibration
    val: list  # [Sample] for verification
    holdout: list = field(default_factory=list)  # [Sample] never trained on: the int8 search's judge
    run_dir: Path | None = None
    backbone: str | None = None
    keras_val_top1: float | None = None
    temperature: float | None = None  # fitted by training on validation (report.json); None: none fitted
    info: dict = field(default_factory=dict)

    @property
    def default_out(self) -> Path:
        from edgeclf.rundir import EXPORT

        base = self.run_dir if self.run_dir is not None else self.model_path.parent
        return base / EXPORT


def _check_keras_file(path: Path) -> None:
    if not path.is_file():
        raise EdgeclfError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):
        raise EdgeclfError(f"{path}: not a readable .keras model (corrupt or truncated file); re-run training "
                           f"or point to another model")


def _read_labels(path: str | Path) -> list[str]:
    p = Path(path)
    try:
        names = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as exc:
        raise EdgeclfError(f"{p}: cannot read labels ({exc.strerror or exc})") from exc
    if len(names) < 2:
        raise EdgeclfError(f"{p}: needs at least two class names, one per line")
    return names


def resolve_source(target: str | Path, data: str | None = None, labels: str | None = None,
                   imgsz: int | None = None, resize: str | None = None,
                   weights: str = "best") -> ExportSource:
    """A run folder (its ``weights/best.keras``, split and settings) or a bare ``.keras`` file.

    A bare model needs ``data`` (a folder ``edgeclf train`` would accept) for calibration and
    verification; class names come from ``labels`` (one per line) or the data folder's class folders,
    the input size from the model itself unless ``imgsz`` is given.
    """
    from edgeclf.data.dataset import scan
    from edgeclf.rundir import load_run

    target = Path(target)
    if resize is not None and resize not in RESIZE_METHODS:
        raise EdgeclfError(f"--resize {resize!r}: choose one of {', '.join(RESIZE_METHODS)}")
    if target.is_dir():
        run = load_run(target)
        model_path = run.best if weights == "best" else run.last
        _check_keras_file(model_path)
        cfg = run.config
        ds = run.dataset() if data is None else scan(data, val_split=cfg.val_split, seed=cfg.seed, holdout=cfg.holdout)
        if ds.classes != list(run.classes):
            raise EdgeclfError(f"--data {data}: classes {ds.classes} differ from the run's {run.classes}")
        if labels is not None and _read_labels(labels) != list(run.classes):
            raise EdgeclfError(f"--labels {labels} differs from the run's classes {run.classes}")
        return ExportSource(model_path, list(run.classes), int(imgsz or run.imgsz),
                            resize or run.config.resize or DEFAULT_RESIZE, ds.train, ds.val, ds.holdout, run_dir=target,
                            backbone=run.config.model, keras_val_top1=run.val_top1(),
                            temperature=run.temperature(),
                            info={"run": str(target), "data": str(ds.root)})
    if target.suffix != ".keras":
        if not target.exists():
            raise EdgeclfError(f"{target}: no such run folder or model file")
        raise EdgeclfError(f"{target}: expected a run folder of `edgeclf train` or a .keras model file")
    _check_keras_file(target)
    if data is None:
        raise EdgeclfError(f"{target} is a bare model: give --data DATA (the photo folder it was trained on), "
                           f"used for calibration and verification")
    ds = scan(data)
    classes = _read_labels(labels) if labels is not None else list(ds.classes)
    if labels is not None and sorted(classes) != sorted(ds.classes):
        raise EdgeclfError(f"--labels {labels} names {classes}, but {data} has classes {ds.classes}")
    if classes != list(ds.classes):
        # Labels may order classes differently from the folder scan: remap sample labels to the model's order.
        from edgeclf.data.dataset import Sample

        index = {c: i for i, c in enumerate(classes)}
        remap = lambda ss: [Sample(s.path, index[ds.classes[s.label]], s.split) for s in ss]
        train, val = remap(ds.train), remap(ds.val)
    else:
        train, val = ds.train, ds.val
    return ExportSource(target, classes, int(imgsz) if imgsz else 0, resize or DEFAULT_RESIZE, train, val,
                        info={"model": str(target), "data": str(ds.root)})
