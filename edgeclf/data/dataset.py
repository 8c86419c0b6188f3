"""Scan a folder of labelled photos: layout, splits, file validation, duplicates. No TensorFlow.

Two layouts are understood:

* already split: ``DATA/train/<class>/...``, ``DATA/val/<class>/...`` (``valid``/``validation`` too),
  optional ``DATA/test/<class>/...``;
* not split: ``DATA/<class>/...``; a stratified, seeded split is made (``val_split``).

``edgeclf train`` also holds a stratified share of the training images out of training (``holdout``, split
name ``holdout``): labelled images the model never learned, on which ``edgeclf export`` judges its int8
candidates. A model fine-tuned until it gets every training image right agrees with any quantized copy of
itself on those images, so they cannot tell a good int8 recipe from a bad one; held-out images can, and the
validation split stays untouched for the figure export reports.

``edgeclf train DATA --add DIR`` adds labelled field images (:mod:`edgeclf.data.field`): to the training split,
and a stratified share of them to the *field validation* split (``field_val``), never to the validation split or
the holdout; ``split.json`` records each image's origin, the duplicate report covers them.

Class folders may hold nested folders. Every candidate file is decoded once; what cannot be decoded is
left out and listed in the report, never a crash and never silently.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeclf import fsutil
from edgeclf.errors import EdgeclfError
from edgeclf.imageio import ImageDecodeError, JUNK_NAMES, decode_rgb, is_candidate

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}
HOLDOUT = "holdout"
FIELD_VAL = "field_val"  # labelled field images held out of training (``--add DIR --field-val``: data.field)
SPLITS = ("train", HOLDOUT, "val", "test", FIELD_VAL)
MIN_HOLDOUT_CLASS = 5  # a class with fewer training images than this gives none to the holdout


class DataError(EdgeclfError):
    pass


@dataclass(frozen=True)
class Sample:
    path: str  # absolute
    label: int
    split: str
    sha256: str = ""  # of the file's bytes, when the scan read it (not kept in split.json)
    origin: int = 0  # 0: the data folder; i: the i-th ``--add`` folder (Dataset.origins)


@dataclass
class DataReport:
    root: str
    layout: str  # "split" (train/val folders given) or "folders" (split made here)
    classes: list[str]
    counts: dict[str, dict[str, int]]
    skipped: list[dict[str, str]] = field(default_factory=list)  # undecodable: {"file", "reason"}
    ignored: int = 0  # hidden/junk files (.DS_Store, Thumbs.db, ...)
    empty_classes: list[str] = field(default_factory=list)
    label_conflicts: list[list[str]] = field(default_factory=list)  # identical bytes, different classes
    split_leaks: list[list[str]] = field(default_factory=list)  # identical bytes in two splits
    duplicates: list[list[str]] = field(default_factory=list)  # identical bytes, same class and split
    val_split: float | None = None
    seed: int | None = None
    holdout: float = 0.0  # share of the training split held out of training
    field: list[dict] = field(default_factory=list)  # one data.field.FieldReport per --add folder
    field_val: float | None = None  # share of the field images held out as the field validation set

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["total"] = self.total
        return d


@dataclass
class Dataset:
    root: Path
    classes: list[str]
    samples: list[Sample]
    report: DataReport
    origins: list[str] = field(default_factory=list)  # [data folder, --add folders...], absolute

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    @property
    def train(self) -> list[Sample]:
        return self.split("train")

    @property
    def val(self) -> list[Sample]:
        return self.split("val")

    @property
    def test(self) -> list[Sample]:
        return self.split("test")

    @property
    def holdout(self) -> list[Sample]:
        """Training images held out of training (export's int8 search judges on them)."""
        return self.split(HOLDOUT)

    @property
    def field_val(self) -> list[Sample]:
        """Labelled field images held out of training (``--add DIR --field-val``)."""
        return self.split(FIELD_VAL)

    def save(self, path: str | Path) -> Path:
        """The exact split, so that export and bench use the same images as training did. Images of an
        ``--add`` folder are recorded by absolute path, and ``origin`` gives each sample's folder in ``origins``."""
        d = {"root": os.path.abspath(self.root), "classes": self.classes,  # export may run from elsewhere
             "samples": [[os.path.abspath(s.path) if s.origin else os.path.relpath(s.path, self.root), s.label,
                          s.split] for s in self.samples]}
        if any(s.origin for s in self.samples):
            d["origins"] = [os.path.abspath(self.root), *self.origins[1:]]
            d["origin"] = [s.origin for s in self.samples]
        return fsutil.write_json(path, d)

    @classmethod
    def load(cls, path: str | Path, report: DataReport | None = None) -> "Dataset":
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        root = Path(d["root"])
        origin = d.get("origin") or [0] * len(d["samples"])
        samples = [Sample(str(root / rel), int(label), split, "", int(o))
                   for (rel, label, split), o in zip(d["samples"], origin)]
        missing = [s.path for s in samples[:1] if not Path(s.path).exists()]
        if missing:
            raise DataError(f"the data set this run was trained on is not at {root} any more ({missing[0]} is missing)")
        rep = report or DataReport(str(root), "split", d["classes"], {})
        return cls(root, list(d["classes"]), samples, rep, list(d.get("origins") or [str(root)]))


def _visible_files(folder: Path) -> tuple[list[Path], int]:
    """All files below ``folder`` (sorted, hidden folders skipped) and the count of junk files."""
    files, junk = [], 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.lower() in JUNK_NAMES:
                junk += 1
            else:
                files.append(Path(dirpath) / name)
    return files, junk


def _class_dirs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")}


PLACEHOLDER_MAX_COLOURS = 64  # "image not found" placeholders and flat graphics; real photos have hundreds
PLACEHOLDER_MAX_SHARE = 0.05  # above this share they are the data (icons, synthetic): keep them


def _colours(img) -> int:
    """Distinct colours on a grid of about 64x64 samples (every pixel of a small image)."""
    import numpy as np

    step = max(1, min(img.shape[:2]) // 64)
    sample = np.ascontiguousarray(img[::step, ::step]).reshape(-1, 3)
    packed = (sample[:, 0].astype(np.uint32) << 16) | (sample[:, 1].astype(np.uint32) << 8) | sample[:, 2]
    return int(np.unique(packed).size)


def _check_file(path: Path) -> tuple[str | None, str | None, int]:
    """(sha256, None, colours) for a decodable image, (None, reason, 0) otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}", 0
    if not is_candidate(path):
        return None, f"not an image file ({path.suffix or 'no extension'})", 0
    try:
        img = decode_rgb(data, str(path))
    except ImageDecodeError:
        return None, "cannot be decoded as an image", 0
    if min(img.shape[:2]) < 2:
        return None, f"image too small ({img.shape[1]}x{img.shape[0]})", 0
    return hashlib.sha256(data).hexdigest(), None, _colours(img)


def scan(root: str | Path, val_split: float = 0.2, seed: int = 0, workers: int | None = None,
         holdout: float = 0.0, add: list[str] | tuple = (), field_val: float = 0.3) -> Dataset:
    """Scan ``root``, check every file once, split if needed, hold out ``holdout`` of the training split, add
    the labelled field images of each ``add`` folder (train, or ``field_val`` for a ``field_val`` share of
    them: :mod:`edgeclf.data.field`), find duplicates. See module doc."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder")
    if not 0.0 < val_split < 1.0:
        raise DataError(f"--val-split must be between 0 and 1 (got {val_split})")
    if not 0.0 <= holdout < 1.0:
        raise DataError(f"--holdout must be at least 0 and below 1 (got {holdout})")
    top = _class_dirs(root)
    split_dirs = {SPLIT_ALIASES[n.lower()]: p for n, p in top.items() if n.lower() in SPLIT_ALIASES}
    layout = "split" if "train" in split_dirs else "folders"
    if layout == "folders":
        split_dirs = {"train": root}

    # (split, class name, file)
    found: list[tuple[str, str, Path]] = []
    ignored = 0
    class_names: set[str] = set()
    for split, folder in split_dirs.items():
        for cname, cdir in _class_dirs(folder).items():
            class_names.add(cname)
            files, junk = _visible_files(cdir)
            ignored += junk
            found += [(split, cname, f) for f in files]
        ignored += sum(1 for p in folder.iterdir() if p.is_file())  # stray files beside the class folders
    if not class_names:
        raise DataError(f"{root}: no class folders found (expected {root}/<class>/*.jpg or {root}/train/<class>/*.jpg)")

    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2))) as pool:
        checks = list(pool.map(lambda t: _check_file(t[2]), found))

    def rel(p: Path | str) -> str:
        return os.path.relpath(p, root)

    skipped = [{"file": rel(f), "reason": reason} for (_, _, f), (_, reason, _) in zip(found, checks) if reason]
    flat = [i for i, (digest, _, colours) in enumerate(checks) if digest and colours < PLACEHOLDER_MAX_COLOURS]
    if flat and len(flat) <= PLACEHOLDER_MAX_SHARE * sum(1 for c in checks if c[0]):
        for i in flat:
            skipped.append({"file": rel(found[i][2]), "reason": f"looks like a placeholder or flat graphic "
                                                              f"({checks[i][2]} colours), not a photo"})
            checks[i] = (None, "placeholder", 0)
    good = [(split, cname, f, digest) for (split, cname, f), (digest, _, _) in zip(found, checks) if digest]

    train_counts = Counter(c for s, c, _, _ in good if s == "train")
    classes = sorted(c for c in class_names if train_counts[c] > 0)
    empty = sorted(c for c in class_names if train_counts[c] == 0)
    if len(classes) < 2:
        raise DataError(f"{root}: fewer than two classes with usable training images "
                        f"(usable: {', '.join(classes) or 'none'}); a classifier needs at least two")
    index = {c: i for i, c in enumerate(classes)}
    good = [g for g in good if g[1] in index]

    if layout == "folders" or "val" not in split_dirs:
        good = _stratified_split(good, val_split, seed)
    if holdout > 0:
        good = _stratified_split(good, holdout, seed + 1, to=HOLDOUT, min_class=MIN_HOLDOUT_CLASS)
    origins, field_reports = {}, []
    if add:  # after the splits above: field images are never validation nor holdout images of DATA
        from edgeclf.data.field import scan_field

        items, origins, field_reports = scan_field(list(add), classes, field_val, seed, _check_file,
                                                   _stratified_split, workers)
        good += items
        for r in field_reports:
            skipped += r.skipped

    def rel(p: Path | str) -> str:  # field images: absolute, as in split.json
        return str(p) if origins.get(p) else os.path.relpath(p, root)

    samples = [Sample(str(f), index[c], s, digest, origins.get(f, 0)) for s, c, f, digest in good]
    counts = {s: {c: 0 for c in classes} for s in SPLITS if any(g[0] == s for g in good)}
    for s, c, _, _ in good:
        counts[s][c] += 1
    if not counts.get("val") or sum(counts["val"].values()) == 0:
        raise DataError(f"{root}: the validation split is empty; add images to val/ or lower --val-split")

    by_hash: dict[str, list[tuple[str, str, Path]]] = defaultdict(list)
    for s, c, f, digest in good:
        by_hash[digest].append((s, c, f))
    conflicts, leaks, dups = [], [], []
    for group in by_hash.values():
        if len(group) < 2:
            continue
        names = [rel(f) for _, _, f in group]
        if len({c for _, c, _ in group}) > 1:
            conflicts.append(names)
        elif len({s for s, _, _ in group}) > 1:
            leaks.append(names)
        else:
            dups.append(names)
        if len({c for _, c, _ in group}) > 1 and len({s for s, _, _ in group}) > 1:
            leaks.append(names)

    report = DataReport(str(root), layout, classes, counts, skipped, ignored, empty, conflicts, leaks, dups,
                        val_split=val_split if layout == "folders" or "val" not in split_dirs else None,
                        seed=seed, holdout=holdout, field=[r.to_dict() for r in field_reports],
                        field_val=field_val if add else None)
    return Dataset(root, classes, samples, report, [str(root.resolve()), *(r.dir for r in field_reports)])


def _stratified_split(good, share: float, seed: int, to: str = "val", min_class: int = 2):
    """Move a seeded ``share`` of each class's training files to split ``to`` (at least one file of a class
    with ``min_class`` files or more); byte-identical files stay together so the split cannot leak them."""
    rng = random.Random(seed)
    out = []
    per_class: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for item in good:
        if item[0] == "train":
            per_class[item[1]][item[3]].append(item)
        else:
            out.append(item)  # the other splits stay as they are
    for cname in sorted(per_class):
        groups = [per_class[cname][h] for h in sorted(per_class[cname])]
        rng.shuffle(groups)
        n_files = sum(len(g) for g in groups)
        n_moved = min(n_files - 1, max(1, round(n_files * share))) if n_files >= min_class else 0
        taken = 0
        for g in groups:
            split = to if taken < n_moved else "train"
            taken += len(g) if split == to else 0
            out += [(split, c, f, h) for _, c, f, h in g]
    return out


def _report_renderables(report: DataReport, max_list: int = 10) -> list:
    """The data report as rich renderables: a title, the table of counts, then what was left out."""
    from rich.table import Table
    from rich.text import Text

    out: list = [f"[b]{report.root}[/b] ({report.layout} layout, {len(report.classes)} classes, {report.total} images)"]
    table = Table()
    table.add_column("class")
    splits = list(report.counts)
    for s in splits:
        table.add_column(s, justify="right")
    for c in report.classes:
        table.add_row(c, *[str(report.counts[s].get(c, 0)) for s in splits])
    table.add_row("[b]total[/b]", *[f"[b]{sum(report.counts[s].values())}[/b]" for s in splits])
    out.append(table)

    def listing(title: str, rows: list[str]) -> None:
        if not rows:
            return
        out.append(f"[yellow]{title} ({len(rows)}):[/yellow]")
        out.extend(Text(f"  {r}") for r in rows[:max_list])
        if len(rows) > max_list:
            out.append(f"  … and {len(rows) - max_list} more (see data_report.json)")

    for f in report.field:
        out.append(f"field images from {f['dir']}: {f['used']} used ({f['train']} train, {f['field_val']} field "
                   f"validation), {f['discarded']} discarded, {len(f['skipped'])} skipped, of {f['rows']} rows")
    listing("skipped, not usable as images", [f"{s['file']}: {s['reason']}" for s in report.skipped])
    listing("class folders with no usable training image, left out", report.empty_classes)
    listing("identical files under different classes (label conflict)", [" = ".join(g) for g in report.label_conflicts])
    listing("identical files in different splits (leak)", [" = ".join(g) for g in report.split_leaks])
    listing("identical files within a class", [" = ".join(g) for g in report.duplicates])
    if report.ignored:
        out.append(f"ignored {report.ignored} hidden/junk files (.DS_Store, Thumbs.db, …)")
    return out


def print_report(report: DataReport, console=None, max_list: int = 10) -> None:
    """A human summary of the data report (rich), for ``edgeclf check``."""
    from rich.console import Console

    console = console or Console()
    for item in _report_renderables(report, max_list):
        console.print(item, highlight=False)


def format_report(report: DataReport, max_list: int = 10, width: int = 100) -> str:
    """The same summary as plain text, for a log message."""
    import io

    from rich.console import Console

    buf = io.StringIO()
    print_report(report, Console(file=buf, width=width, color_system=None, soft_wrap=True), max_list)
    return buf.getvalue().rstrip("\n")
