"""The validation images a bench measures: each export folder's split of ``--data``, an optional stratified
subset of it (``--max-images``), and the images decoded and resized once, here, by the one decoder.

The images are the ones export verified on, listed in the export folder's ``val_split.json`` and found under
``--data`` (bench reads nothing but the export folder and the photos). For an export written before that file:
the run's own ``split.json`` when the export came from a run trained on the same folder, else the validation
split of a scan of ``--data``. ``--max-images N`` keeps N of those images, each class in
proportion (at least one each while N allows), chosen with a fixed seed: every device, every run and every
export of the same data measures the very same images.
"""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeclf.contract import VAL_SPLIT_FILE, Bundle, ContractError, load_bundle
from edgeclf.errors import EdgeclfError
from edgeclf.log import get_logger

log = get_logger(__name__)

SUBSET_SEED = 0


def stratified_subset(labels: np.ndarray, n: int | None, seed: int = SUBSET_SEED) -> np.ndarray:
    """Indices of ``n`` of ``labels`` (all of them when ``n`` is None or not smaller), each class in proportion
    to its size (largest remainders; every class keeps one image while ``n`` is at least the number of
    classes), drawn with ``seed``; in their original order."""
    labels = np.asarray(labels)
    total = len(labels)
    if n is None or n >= total:
        return np.arange(total)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / total
    take = np.floor(quota).astype(int)
    if n >= len(classes):
        take = np.maximum(take, 1)
    while take.sum() > n:  # one per class overshot: take back from a class that keeps more than one
        over = np.where(take > 1, take - quota, -np.inf)
        take[np.argmax(over)] -= 1
    for i in np.argsort(-(quota - take), kind="stable")[: n - take.sum()]:
        take[i] += 1
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


@dataclass
class ExportInfo:
    """One export folder under test and its validation images."""

    dir: Path
    bundle: Bundle
    label: str  # "mobilenet_v2 224"
    val_paths: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    split_source: str = ""  # where the validation split came from
    val_total: int = 0  # images in the validation split (more than val_paths with --max-images)
    images_npy: Path | None = None
    references: dict[str, dict] = field(default_factory=dict)  # device -> its float reference (format, top1...)

    @property
    def reference(self) -> dict:
        """The float reference on the first device measured (the local machine unless --no-local)."""
        return next(iter(self.references.values()), {})



def _label(bundle: Bundle, folder: Path) -> str:
    backbone = bundle.source.get("backbone") or folder.resolve().parent.name or folder.name
    return f"{backbone} {bundle.input.height}"


def _export_split(folder: Path, data: Path):
    """The validation images export verified on (its ``val_split.json``), found under ``data``: the very same
    images on every machine. None for an export written before that file."""
    from types import SimpleNamespace

    from edgeclf.data.dataset import Sample

    path = folder / VAL_SPLIT_FILE
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        files, labels, classes = list(d["files"]), [int(x) for x in d["labels"]], list(d["classes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EdgeclfError(f"{path}: unreadable ({exc}); export again to write it") from exc
    missing = [f for f in files if not (data / f).is_file()]
    if missing:
        raise EdgeclfError(f"--data {data}: {missing[0]} is missing ({len(missing)} of the {len(files)} validation "
                           f"images export verified on, listed in {path}): give the data set the model was exported "
                           f"with")
    val = [Sample(str(data / f), label, "val") for f, label in zip(files, labels)]
    return SimpleNamespace(classes=classes, val=val), f"{path} (the images export verified on)"


def _run_split(bundle: Bundle, folder: Path, data: Path):
    """For an export without ``val_split.json``: the run's own ``split.json`` when the export came from a run
    trained on ``data``, else None (then the split is a scan's). A run's split that cannot be read is an error,
    not a silent scan that could pick other images."""
    from edgeclf.data.dataset import Dataset

    run = bundle.source.get("run")
    for run_dir in ([Path(run)] if run else []) + [folder.parent]:
        split = run_dir / "split.json"
        if not split.is_file():
            continue
        try:
            root = Path(json.loads(split.read_text(encoding="utf-8"))["root"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EdgeclfError(f"{split}: unreadable ({exc}): cannot tell which images the model was validated "
                               f"on") from exc
        if root.resolve() == data.resolve():
            return Dataset.load(split), f"{split} (the run's split)"
    return None


def load_exports(options) -> list[ExportInfo]:
    """Each export folder of ``options.exports`` with its validation images (``options.max_images``: a
    stratified, seeded subset of them, the same on every device)."""
    from edgeclf.data.dataset import scan

    data = Path(options.data)
    exports: list[ExportInfo] = []
    seen: set[Path] = set()
    for folder in map(Path, options.exports):
        bundle = load_bundle(folder)  # one-line ContractError for a missing folder / no edgeclf.json
        if not bundle.artifacts:
            raise ContractError(f"{folder / 'edgeclf.json'} lists no artifacts: nothing to bench")
        if folder.resolve() in seen:
            raise EdgeclfError(f"{folder}: given twice")
        seen.add(folder.resolve())
        exports.append(ExportInfo(folder, bundle, _label(bundle, folder)))
    labels = [e.label for e in exports]
    for e in exports:  # same backbone and size twice: tell them apart by folder
        if labels.count(e.label) > 1:
            e.label = f"{e.label} ({e.dir})"

    scanned = None
    for e in exports:
        found = _export_split(e.dir, data) or _run_split(e.bundle, e.dir, data)
        if found is None:
            if scanned is None:
                log.info(f"scanning {data}")
                scanned = scan(data)
            ds, e.split_source = scanned, f"{data} (val split of a scan)"
        else:
            ds, e.split_source = found
        missing = [c for c in ds.classes if c not in e.bundle.classes]
        if missing:
            raise EdgeclfError(f"--data {data}: class {missing[0]!r} is not one the model {e.dir} knows "
                               f"({', '.join(e.bundle.classes[:6])}{', ...' if len(e.bundle.classes) > 6 else ''})")
        val = ds.val
        if not val:
            raise EdgeclfError(f"--data {data}: no validation images (expected {data}/val/<class>/... "
                               f"or class folders to split)")
        index = {c: e.bundle.classes.index(c) for c in ds.classes}
        labels = np.array([index[ds.classes[s.label]] for s in val], dtype=np.int64)
        keep = stratified_subset(labels, options.max_images, SUBSET_SEED)
        e.val_total = len(val)
        e.val_paths = [val[i].path for i in keep]
        e.labels = labels[keep]
        if len(keep) < len(val):
            e.split_source += f"; {len(keep)} of {len(val)} (--max-images, stratified, seed {SUBSET_SEED})"
    return exports


def decode_val(exports: list[ExportInfo], tmp: Path) -> None:
    """Decode and resize each distinct validation set once (the one decoder), shared via .npy files."""
    from edgeclf.imageio import load_resized
    from edgeclf.runtime import default_threads

    cache: dict[tuple, Path] = {}
    for e in exports:
        inp = e.bundle.input
        key = (inp.height, inp.width, inp.resize, tuple(e.val_paths))
        if key not in cache:
            t = time.perf_counter()
            with ThreadPoolExecutor(max_workers=default_threads()) as pool:
                images = list(pool.map(lambda p: load_resized(p, inp.height, inp.width, inp.resize), e.val_paths))
            path = tmp / f"val_{len(cache)}_{inp.height}x{inp.width}_{inp.resize}.npy"
            np.save(path, np.stack(images).astype(np.uint8))
            cache[key] = path
            log.info(f"decoded {len(images)} validation images at {inp.height}x{inp.width} ({inp.resize}) "
                     f"in {time.perf_counter() - t:.1f} s")
        e.images_npy = cache[key]
