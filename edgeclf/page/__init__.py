"""``report.html``: one self-contained page per run folder that a person opens to see a run — curves,
confusion matrix, per-class figures, the data report, the validation images it gets wrong, and after export
and bench the formats with their int8 recipes and search, the images where int8 and float disagree, and the
bench per device. ``edgeclf train`` writes it, ``edgeclf export`` and ``edgeclf bench`` bring it up to date
(they note their output folder in the run's ``report_sources.json``), ``edgeclf report RUN`` rebuilds it.

Images are embedded (data: URIs, small JPEG thumbnails, a bounded number per gallery): the page is one file,
opens offline and asks nothing of the network. No TensorFlow.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from edgeclf import fsutil, rundir
from edgeclf.errors import EdgeclfError, first_line

PAGE = "report.html"
SOURCES = "report_sources.json"  # the export and bench folders that belong on the page


def _sources(run_dir: Path) -> dict[str, list[str]]:
    try:
        d = json.loads((run_dir / SOURCES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        d = {}
    return {k: [str(p) for p in d.get(k, []) if isinstance(p, str)] for k in ("exports", "benches")} \
        if isinstance(d, dict) else {"exports": [], "benches": []}


def note_source(run_dir: Path, kind: str, folder: Path) -> None:
    """Remember an export ("exports") or bench ("benches") folder for the run's page (newest last)."""
    d = _sources(Path(run_dir))
    path = str(Path(folder).resolve())
    d[kind] = [p for p in d[kind] if p != path] + [path]
    fsutil.write_json(Path(run_dir) / SOURCES, d)


def _folders(run_dir: Path, kind: str, marker: str) -> list[Path]:
    found = [Path(p) for p in _sources(run_dir)[kind]]
    if kind == "exports":
        found.insert(0, (run_dir / rundir.EXPORT).resolve())
    seen, out = set(), []
    for p in reversed(found):  # newest first, each once, only those still there
        if p not in seen and (p / marker).is_file():
            seen.add(p)
            out.append(p)
    return out


def build(run_dir: str | Path) -> Path:
    """Write ``RUN/report.html`` from the run's files and its noted export and bench folders; its path."""
    from edgeclf.page import field, html, sections

    run_dir = Path(run_dir)
    info = rundir.load_run(run_dir)  # one-line error when it is not a run folder
    rep = None
    try:
        rep = json.loads((run_dir / rundir.REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    root = rundir.split_root(run_dir)
    exports = _folders(run_dir, "exports", "edgeclf.json")
    benches = _folders(run_dir, "benches", "bench.json")[:3]  # the three newest
    parts = [sections.training(run_dir, rep), sections.per_class(run_dir, rep), sections.data(run_dir),
             sections.mistakes(run_dir, rep, root), sections.exports(exports), sections.disagreements(exports),
             sections.bench(benches)]
    if field.wanted(rep):  # a run trained with --add (the field loop): after the mistakes on the original photos
        parts.insert(4, field.section(run_dir, rep, sections.MAX_THUMBS))
    subtitle = (f"{info.config.model}, {info.imgsz} px, {len(info.classes)} classes; data {root}; "
                f"page written {time.strftime('%Y-%m-%d %H:%M')}")
    return fsutil.write_text(run_dir / PAGE, html.page(f"edgeclf run {run_dir.name}", subtitle, parts))


def try_build(run_dir: str | Path | None, kind: str | None = None, folder: Path | None = None) -> Path | None:
    """Note ``folder`` and rebuild the page of ``run_dir`` if it is a run folder here; never fails the command
    that calls it (a page that cannot be written is a warning)."""
    from edgeclf import log

    if not run_dir or not (Path(run_dir) / rundir.ARGS).is_file():
        return None
    try:
        if kind and folder is not None:
            note_source(Path(run_dir), kind, folder)
        return build(run_dir)
    except (EdgeclfError, OSError, ValueError, KeyError) as exc:
        log.warning("%s not updated: %s", Path(run_dir) / PAGE, first_line(exc))
        return None
