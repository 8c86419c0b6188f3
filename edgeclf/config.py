"""Settings as dataclasses, saved as ``args.yaml`` in the run folder (resume reads them back)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from edgeclf import fsutil
from edgeclf.errors import EdgeclfError


IO_TYPES = ("uint8", "int8", "float")  # input/output of the full-integer TFLite model
SEARCH_MODES = ("auto", "none")
ONNX_CALIBRATE_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIB_IMAGES = 300
DEFAULT_SELECTION_IMAGES = 300  # without a holdout: two random views of each (600 judged; more views of fewer)


@dataclass
class TrainConfig:
    data: str
    model: str = "mobilenet_v2"
    imgsz: int | None = None  # None: the backbone's default
    weights: str = "imagenet"  # imagenet | none | path to a .h5/.weights.h5
    epochs: int = 15  # stage 1: backbone frozen, head trained
    fine_tune_epochs: int = 4  # stage 2: top layers unfrozen (0: skip)
    unfreeze: str = "38"  # top weighted backbone layers trained in stage 2, or "all" (MobileNetV2: its last 6 blocks)
    batch: int = 32
    lr: float = 1e-3
    fine_tune_lr: float = 1e-4
    optimizer: str = "adam"  # adam | rmsprop
    schedule: str = "cosine"  # cosine (with warmup) | plateau
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    ema: float = 0.99  # > 0: validate, checkpoint and keep a moving average of the weights (momentum per step)
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
    holdout: float = 0.0  # share of the training split never trained on (export's int8 search judges on it then)
    seed: int = 0
    resize: str = "bilinear"
    project: str = "runs/train"
    name: str = "exp"
    distributed: bool = False  # MultiWorkerMirroredStrategy across the hosts TF_CONFIG names
    split_from: str | None = None  # a run folder (or its split.json): train on its exact split, no scan
    add: list[str] = field(default_factory=list)  # --add DIR...: labelled field images (DIR/labels.csv) to train on
    field_val: float = 0.3  # share of the field images held out as the field validation set (stratified)
    compare: str | None = None  # a previous run folder: its model judged on the same field validation images

    def save(self, path: str | Path) -> Path:
        return fsutil.write_text(path, yaml.safe_dump(asdict(self), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        try:
            d = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise EdgeclfError(f"{path}: cannot read the run's settings ({exc})") from exc
        known = {f.name for f in fields(cls)}
        d.setdefault("holdout", 0.0)  # runs from before the holdout held nothing out
        d.setdefault("ema", 0.0)  # ... nor averaged their weights
        d["add"] = list(d.get("add") or [])
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class ExportOptions:
    target: str | Path  # run folder or .keras file
    out: str | Path | None = None  # default: RUN_DIR/export (or beside the .keras)
    formats: str | None = None  # "tflite-fp32,onnx" ...; None: all (float only without int8)
    int8: bool = False
    io: str = "uint8"  # int8 TFLite input/output: uint8 (camera pixels, MediaPipe) | int8 | float
    calib_images: int = DEFAULT_CALIB_IMAGES
    selection_images: int = DEFAULT_SELECTION_IMAGES  # the search judges candidates on these (train, not calib)
    max_drop: float = 0.5  # points vs the float model: the int8 budget
    search: str = "auto"  # auto: search each int8 artifact for the fastest within budget; none: one fixed recipe
    strict: bool = False  # an artifact over budget exits 3 instead of warning
    temperature: float | None = None  # logits divided by this in every file; None: the run's fitted one (report.json)
    bias_correction: bool = True  # the search corrects each int8 candidate's biases against float first
    qat: bool = False
    qat_epochs: int = 2
    data: str | None = None  # bare .keras: the photo folder (calibration + verification)
    labels: str | None = None  # bare .keras: class names, one per line, output order
    imgsz: int | None = None
    resize: str | None = None
    onnx_per_channel: bool | None = None  # None: per-channel (the search may try per-tensor)
    onnx_reduce_range: bool | None = None  # 7-bit weights; None: chosen (search, or by agreement without it)
    onnx_calibrate: str | None = None  # minmax | percentile | entropy; None: the search tries each
    opset: int = 13
    seed: int = 0
    threads: int | None = None
    verify_images: int | None = None  # None: the whole validation split
    calibration: Any = None  # library use: a convert.calibration.CalibrationSet to calibrate on instead

    def check(self) -> None:
        """Reject bad combinations up front, with one-line errors (the one place options are validated)."""
        if self.max_drop < 0:
            raise EdgeclfError(f"--max-drop must be >= 0 (got {self.max_drop})")
        if self.temperature is not None and not 0 < self.temperature < float("inf"):
            raise EdgeclfError(f"--temperature must be a positive number (got {self.temperature})")
        if self.io not in IO_TYPES:
            raise EdgeclfError(f"--io {self.io!r}: choose one of {', '.join(IO_TYPES)}")
        if self.search not in SEARCH_MODES:
            raise EdgeclfError(f"--search {self.search!r}: choose one of {', '.join(SEARCH_MODES)}")
        if self.onnx_calibrate is not None and self.onnx_calibrate not in ONNX_CALIBRATE_METHODS:
            raise EdgeclfError(f"--onnx-calibrate {self.onnx_calibrate!r}: choose one of "
                               f"{', '.join(ONNX_CALIBRATE_METHODS)}")
        if self.calib_images < 1:
            raise EdgeclfError(f"--calib-images must be at least 1 (got {self.calib_images})")
        if self.selection_images < 0:
            raise EdgeclfError(f"--selection-images must be 0 or more (got {self.selection_images})")


def default(cls, name: str):
    """The default of field ``name`` of dataclass ``cls``: what a CLI option shows and uses, written once."""
    from dataclasses import MISSING

    f = cls.__dataclass_fields__[name]
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")
