"""Settings as dataclasses, saved as ``args.yaml`` in the run folder (resume reads them back)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from edgeclf import fsutil
from edgeclf.errors import EdgeclfError


@dataclass
class TrainConfig:
    data: str
    model: str = "mobilenet_v2"
    imgsz: int | None = None  # None: the backbone's default
    weights: str = "imagenet"  # imagenet | none | path to a .h5/.weights.h5
    epochs: int = 15  # stage 1: backbone frozen, head trained
    fine_tune_epochs: int = 12  # stage 2: top layers unfrozen (0: skip)
    unfreeze: str = "20"  # top weighted backbone layers trained in stage 2, or "all" (MobileNetV2: its last 3 blocks)
    batch: int = 32
    lr: float = 1e-3
    fine_tune_lr: float = 1e-4
    optimizer: str = "adam"  # adam | rmsprop
    schedule: str = "cosine"  # cosine (with warmup) | plateau
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    class_weights: str = "none"  # none | auto
    patience: int = 5  # early stopping, epochs without val accuracy gain
    head_units: int = 0
    dropout: float = 0.2
    augment: bool = True
    flip: bool = True
    rotation: float = 0.05  # fraction of a full turn
    zoom: float = 0.1
    contrast: float = 0.1
    cache: bool = True  # train on cached backbone features (fast); False: full forward pass every epoch
    cache_views: int = 2  # augmented copies of each training image in the feature cache
    cache_dir: str | None = None  # the feature cache folder (None: $EDGECLF_CACHE_DIR or ~/.cache/edgeclf)
    val_split: float = 0.2
    seed: int = 0
    resize: str = "bilinear"
    project: str = "runs/train"
    name: str = "exp"
    distributed: bool = False  # MultiWorkerMirroredStrategy across the hosts TF_CONFIG names

    def save(self, path: str | Path) -> Path:
        return fsutil.write_text(path, yaml.safe_dump(asdict(self), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        try:
            d = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise EdgeclfError(f"{path}: cannot read the run's settings ({exc})") from None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def default(cls, name: str):
    """The default of field ``name`` of dataclass ``cls``: what a CLI option shows and uses, written once."""
    from dataclasses import MISSING

    f = cls.__dataclass_fields__[name]
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")
