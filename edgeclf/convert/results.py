"""What ``edgeclf export`` returns and prints: one row per artifact (:class:`ExportRow`), the result and its
exit code (:class:`ExportResult`), the search and summary tables."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeclf.contract import CONTRACT_FILE, Bundle
from edgeclf.status import Status

EXIT_OK = 0
EXIT_DROP = 3  # with --strict: an artifact lost more than --max-drop
EXIT_FAILED = 4  # an artifact failed: collapsed, or its conversion failed; it is not in edgeclf.json


@dataclass
class ExportRow:
    """One artifact's line of the export table (and what decides the exit code)."""

    name: str
    file: str
    bytes: int = 0
    status: Status = Status.OK
    top1: float | None = None
    agreement: float | None = None
    drop_pt: float | None = None
    significance: str = ""  # images lost/gained on validation and the McNemar p, in words
    lost: int | None = None  # validation images float gets right and this file wrong
    gained: int | None = None  # and the other way round
    images: int = 0  # validation images verified on
    lost_ranks: str = ""  # the float model's margin rank on each image lost ("0.7 %"; 0: its least sure image)
    selection_drop_pt: float | None = None  # int8 searched: the drop the search judged on
    recipe: str = ""
    note: str = ""


@dataclass
class ExportResult:
    out_dir: Path
    bundle: Bundle
    rows: list[ExportRow]
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    reference: dict = field(default_factory=dict)
    strict: bool = False
    searches: dict = field(default_factory=dict)  # format name -> SearchResult

    @property
    def exit_code(self) -> int:
        if self.failures:
            return EXIT_FAILED
        if self.strict and any(r.status == Status.DROP for r in self.rows):
            return EXIT_DROP
        return EXIT_OK

    def row(self, name: str) -> ExportRow:
        return next(r for r in self.rows if r.name == name)


_SELECTION_FROM = {"holdout": " held out of training", "views": " (random views of training images)",
                   "train": " (training images)"}


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n else "-"


def print_search(result: ExportResult, console) -> None:
    """One table per searched artifact: every candidate tried, in order."""
    from rich.table import Table

    for name, search in result.searches.items():
        left_out = f", {search.unstable} unstable left out" if search.unstable else ""
        table = Table(title=f"{name}: int8 search, {len(search.trials)} candidates in {search.seconds:.0f} s; budget "
                            f"{result.bundle.source.get('max_drop_pt')} pt on {search.judged} selection images"
                            f"{_SELECTION_FROM.get(search.selection_from, '')}"
                            f"{left_out}", title_justify="left")
        for col, just in (("candidate", "left"), ("sel. drop", "right"), ("agree", "right"), ("p50", "right"),
                          ("size", "right"), ("time", "right"), ("outcome", "left")):
            table.add_column(col, justify=just)
        for t in search.trials:
            table.add_row(t.label, f"{t.selection_drop_pt:+.2f}" if t.selection_drop_pt is not None else "-",
                          f"{t.selection_agreement:.1%}" if t.selection_agreement is not None else "-",
                          f"{t.p50_ms:.2f} ms" if t.p50_ms is not None else "-", _mb(t.bytes), f"{t.seconds:.0f} s",
                          t.outcome + (f" ({t.note})" if t.note and t.outcome in ("failed", "collapsed") else ""))
        console.print(table)


def print_summary(result: ExportResult, console) -> None:
    from rich.table import Table

    ref = result.reference
    title = (f"validation: {ref.get('val_images', 0)} images, float reference top-1 {ref.get('val_top1', 0):.2%}"
             if ref else "not verified")
    table = Table(title=title)
    searched = any(r.selection_drop_pt is not None or r.recipe for r in result.rows)
    columns = [("format", "left"), ("file", "left"), ("size", "right"), ("top-1", "right"), ("agree", "right"),
               ("drop pt", "right")] + ([("sel. drop", "right"), ("recipe", "left")] if searched else []) \
        + [("status", "left")]
    for col, just in columns:
        table.add_column(col, justify=just)
    colours = {Status.OK: "green", Status.DROP: "yellow", Status.FAILED: "red"}
    for r in result.rows:
        cells = [r.name, r.file, _mb(r.bytes), f"{r.top1:.2%}" if r.top1 is not None else "-",
                 f"{r.agreement:.2%}" if r.agreement is not None else "-",
                 f"{r.drop_pt:+.2f}" if r.drop_pt is not None else "-"]
        if searched:
            cells += [f"{r.selection_drop_pt:+.2f}" if r.selection_drop_pt is not None else "-", r.recipe or "-"]
        colour = colours.get(r.status, "white")
        table.add_row(*cells, f"[{colour}]{r.status}[/{colour}]")
    console.print(table)
    for w in result.warnings:
        if "--max-drop" in w:
            console.print(f"[yellow]warning:[/yellow] {w}", markup=True, highlight=False)
    for f in result.failures:
        console.print(f"[red]failed:[/red] {f}")
    out = result.out_dir
    console.print(f"wrote {out / CONTRACT_FILE} ({len(result.bundle.artifacts)} verified models)")
    if result.bundle.artifacts:
        data = result.bundle.source.get("data") or "DATA"
        console.print("next:")
        console.print(f"  edgeclf bench {out} --data {data}", markup=False)
        console.print(f"  edgeclf run {out} --source 0", markup=False)
