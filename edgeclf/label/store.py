"""What ``edgeclf label DIR`` works on: the collected frames (``DIR/collected.jsonl``) and the answers
(``DIR/labels.csv``). No web framework here.

``labels.csv`` has the columns ``file,label``: ``file`` relative to DIR, an empty ``label`` a discarded frame. Users
and their scripts write this file too, so every answer re-reads it, changes only the rows of the one file
answered, and rewrites it atomically: rows the page did not give (other files, labels that are not classes,
extra columns) stay as they are.
"""
from __future__ import annotations

import csv
import io
import threading
from dataclasses import dataclass, field
from pathlib import Path

from edgeclf import fsutil
from edgeclf.errors import EdgeclfError
from edgeclf.runtime.collect import META, read_records

LABELS = "labels.csv"
HEADER = ["file", "label"]


class LabelError(EdgeclfError):
    """A folder that cannot be labelled (nothing collected, no classes)."""


def read_rows(path: Path) -> list[list[str]]:
    """The rows of a labels file, header left out; [] when missing. A row is [file, label, *extra]."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return []
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] == HEADER:
        rows = rows[1:]
    return [r if len(r) >= 2 else [r[0], ""] for r in rows]


def write_rows(path: Path, rows: list[list[str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    w.writerows(rows)
    fsutil.write_text(path, buf.getvalue())


def _margin(rec: dict) -> float:
    m = rec.get("margin")
    if isinstance(m, (int, float)):
        return float(m)
    scores = sorted((float(t.get("score", 0)) for t in rec.get("top_k") or [] if isinstance(t, dict)), reverse=True)
    if len(scores) >= 2:
        return scores[0] - scores[1]
    return 1.0 - scores[0] if scores else 1.0


@dataclass
class Store:
    folder: Path
    classes: list[str]
    items: list[dict]  # collected frames whose file exists, each once, most uncertain first
    _undo: list[tuple[str, str | None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def labels_path(self) -> Path:
        return self.folder / LABELS

    @property
    def files(self) -> set[str]:
        return {it["file"] for it in self.items}

    def answers(self) -> dict[str, str]:
        """file -> label (or "" discarded) for the collected files labels.csv answers (its last row of each)."""
        known = self.files
        return {r[0]: r[1] for r in read_rows(self.labels_path) if r[0] in known}

    def view(self) -> dict:
        """What the page shows: classes, the frames (unanswered first, most uncertain first), the count done."""
        answers = self.answers()
        items = [{**it, "answer": answers.get(it["file"])} for it in self.items]
        items.sort(key=lambda it: it["answer"] is not None)  # stable: the margin order within each part
        return {"classes": self.classes, "items": items, "done": len(answers), "total": len(self.items)}

    def answer(self, file: str, label: str) -> dict:
        """Label ``file`` (``""``: discard); saved at once. Raises KeyError / ValueError for what cannot be."""
        if file not in self.files:
            raise KeyError(file)
        if label != "" and label not in self.classes:
            raise ValueError(label)
        with self._lock:
            self._undo.append((file, self._apply(file, label)))
        return self.progress()

    def undo(self) -> dict | None:
        """Take the last answer back (the file's row as it was before); None when there is nothing to undo."""
        with self._lock:
            if not self._undo:
                return None
            file, before = self._undo.pop()
            self._apply(file, before)
        return {"file": file, "answer": before, **self.progress()}

    def progress(self) -> dict:
        return {"done": len(self.answers()), "total": len(self.items)}

    def _apply(self, file: str, label: str | None) -> str | None:
        """Set ``file``'s label (None: no row) in the file as it is on disk now; returns its label before."""
        rows = read_rows(self.labels_path)
        before = None
        for r in rows:
            if r[0] == file:
                before = r[1]
        if label is None:
            rows = [r for r in rows if r[0] != file]
        elif before is None:
            rows.append([file, label])
        else:
            for r in rows:
                if r[0] == file:
                    r[1] = label
        write_rows(self.labels_path, rows)
        return before


def open_store(folder: str | Path, classes: list[str] | None = None) -> Store:
    """The frames of ``folder`` and the classes to offer: ``classes`` if given, else the model's (collect.json)
    and every label of the records' top_k, else the labels already in labels.csv."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LabelError(f"{folder}: no such folder (collect one with: edgeclf run MODEL --source 0 --collect {folder})")
    by_file: dict[str, dict] = {}
    root = folder.resolve()
    for rec in read_records(folder):
        rel = rec["file"].replace("\\", "/")
        path = (folder / rel).resolve()
        if root not in path.parents or not path.is_file():
            continue
        by_file[rel] = {"file": rel, "label": str(rec.get("label", "")), "score": rec.get("score"),
                        "margin": round(_margin(rec), 6), "top_k": rec.get("top_k") or [],
                        "reason": str(rec.get("reason", "")), "time": rec.get("time")}
    items = sorted(by_file.values(), key=lambda it: (it["margin"], it["time"] or 0))
    if classes:
        names = list(dict.fromkeys(c for c in classes if c))
    else:
        names = [str(c) for c in fsutil.read_json_dict(folder / META).get("classes") or []]
        extra = {str(t["label"]) for it in items for t in it["top_k"] if isinstance(t, dict) and t.get("label")}
        names += sorted(extra - set(names) - {"unknown"})
        if not names:
            names = sorted({r[1] for r in read_rows(folder / LABELS) if r[1]})
    if not names:
        raise LabelError(f"{folder}: no classes to offer (none in {META}, collected.jsonl or {LABELS}): "
                         "give them with --classes a,b,...")
    if not items:
        raise LabelError(f"{folder}: no collected frame here (collected.jsonl names none that exists)")
    return Store(folder, names, items)
