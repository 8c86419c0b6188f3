"""Labelled field images for ``edgeclf train DATA --add DIR``: frames a deployed model saw on its camera
(``edgeclf run --collect DIR``), labelled by a person (``edgeclf label DIR``, or by hand). No TensorFlow.

``DIR/labels.csv`` has the columns ``file,label``: ``file`` relative to DIR, an empty ``label`` a discarded frame
(skipped). Every labelled file is decoded once, as the main scan does. A row naming a missing or unreadable file,
a file named twice, or a row without a file is reported (``DataReport.skipped``, one line each) and skipped, never
a traceback. A label that is not one of DATA's classes is an error naming the label and the file: the field set
cannot add classes.

The field images of each DIR join the *training* split, never the validation split; a stratified, seeded share
(``--field-val``) of them is held out as the *field validation set* (split ``field_val``), on which the report
gives a second top-1. Byte-identical frames stay together on one side of that split.
"""
from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edgeclf.errors import EdgeclfError

LABELS = "labels.csv"
FIELD_VAL = "field_val"  # split name of the field validation set
COLUMNS = ("file", "label")


@dataclass
class FieldRow:
    path: Path  # absolute
    label: str
    line: int  # in labels.csv, for messages


@dataclass
class FieldReport:
    """What one ``--add DIR`` gave: ``data_report.json``'s ``field`` list has one per DIR."""

    dir: str
    rows: int = 0  # rows of labels.csv
    labelled: int = 0  # rows with a label
    discarded: int = 0  # rows with an empty label (skipped)
    used: int = 0  # decodable labelled images kept
    train: int = 0
    field_val: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason"}

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def read_labels(folder: str | Path, classes: list[str]) -> tuple[list[FieldRow], FieldReport]:
    """The labelled rows of ``folder/labels.csv`` whose file is there, and what was left out. Raises
    :class:`EdgeclfError` (one line) when there is no readable labels file or a label is not a class."""
    folder = Path(folder).expanduser().resolve()
    report = FieldReport(str(folder))
    if not folder.is_dir():
        raise EdgeclfError(f"--add {folder}: no such folder")
    path = folder / LABELS
    if not path.is_file():
        raise EdgeclfError(f"--add {folder}: no {LABELS} there (label the frames first: edgeclf label {folder})")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            raw = list(enumerate(reader, start=2))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EdgeclfError(f"{path}: cannot be read as CSV ({exc})") from exc
    if not set(COLUMNS) <= set(header):
        raise EdgeclfError(f"{path}: the first line must name the columns file,label (found "
                           f"{','.join(header) or 'nothing'})")
    fi, li = header.index("file"), header.index("label")
    rows, seen, unknown = [], {}, {}
    for line, cells in raw:
        if not any(c.strip() for c in cells):
            continue  # a blank line
        report.rows += 1
        name = cells[fi].strip() if fi < len(cells) else ""
        label = cells[li].strip() if li < len(cells) else ""
        if not label:
            report.discarded += 1
            continue
        report.labelled += 1
        if not name:
            report.skipped.append({"file": f"{path}:{line}", "reason": f"labelled {label!r} but names no file"})
            continue
        if label not in classes:
            unknown.setdefault(label, name)
            continue
        file = (folder / name).resolve()
        shown = str(file)
        if file in seen:
            report.skipped.append({"file": shown, "reason": f"named again on line {line} of {LABELS} (line "
                                                            f"{seen[file]} counts)"})
            continue
        if not file.is_file():
            report.skipped.append({"file": shown, "reason": f"missing (line {line} of {LABELS})"})
            continue
        seen[file] = line
        rows.append(FieldRow(file, label, line))
    if unknown:
        listed = "; ".join(f"{label!r} ({name})" for label, name in sorted(unknown.items()))
        raise EdgeclfError(f"{path}: label {listed} is not one of the data's classes ({', '.join(classes)}): the "
                           f"field set cannot add classes; relabel those rows, clear their label to discard them, "
                           f"or add the class to DATA first")
    return rows, report


def scan_field(dirs: list[str], classes: list[str], share: float, seed: int, check_file, stratified_split,
               workers: int | None = None):
    """Every ``--add`` folder checked and split: ``(items, origins, reports)`` where ``items`` are
    ``(split, class, path, sha256)`` (split ``train`` or ``field_val``), ``origins`` maps each path to the index of
    its folder in ``dirs`` plus one (0 is DATA), and ``reports`` has one :class:`FieldReport` per folder.
    ``check_file`` and ``stratified_split`` are the main scan's (:mod:`edgeclf.data.dataset`)."""
    from concurrent.futures import ThreadPoolExecutor

    if not 0.0 <= share < 1.0:
        raise EdgeclfError(f"--field-val must be at least 0 and below 1 (got {share})")
    items, origins, reports = [], {}, []
    done: dict[Path, int] = {}
    for i, folder in enumerate(dirs, start=1):
        rows, report = read_labels(folder, classes)
        reports.append(report)
        if Path(report.dir) in done:
            raise EdgeclfError(f"--add {folder} is given twice")
        done[Path(report.dir)] = i
        with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 2))) as pool:
            checks = list(pool.map(lambda r: check_file(r.path), rows))
        good = []
        for r, (digest, reason, _) in zip(rows, checks):
            if r.path in origins:
                report.skipped.append({"file": str(r.path), "reason": "already added from another --add folder"})
            elif digest is None:
                report.skipped.append({"file": str(r.path), "reason": reason})
            else:
                good.append(("train", r.label, r.path, digest))
                origins[r.path] = i
        if share > 0:
            good = stratified_split(good, share, seed + 2 + i, to=FIELD_VAL, min_class=2)
        counts = Counter(s for s, _, _, _ in good)
        report.used, report.train, report.field_val = len(good), counts["train"], counts[FIELD_VAL]
        items += good
    return items, origins, reports
