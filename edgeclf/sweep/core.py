"""``run_sweep``: the candidates in order, a line for each as it finishes, a progress bar with the time left on
a terminal, then the rows, the front and the choice written and returned."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeclf import fsutil
from edgeclf.errors import EdgeclfError
from edgeclf.log import get_logger
from edgeclf.sweep import judge
from edgeclf.sweep.options import BUDGET_FIELDS, SweepOptions
from edgeclf.sweep.runner import STAGES, SweepState, candidates, check, new_sweep_folder, run_stage, scan_once, \
    stages

log = get_logger(__name__)
EXIT_OK, EXIT_BUDGET, EXIT_NOTHING = 0, 3, 4


@dataclass
class SweepResult:
    folder: Path
    settings: dict
    rows: list[dict]
    choices: list[judge.Choice]
    budget: dict[str, float]
    cost: dict[str, dict[str, float]]
    scan_seconds: float | None
    seconds: float
    cost_columns: list[str] = field(default_factory=lambda: ["caching", "training", "export", "bench", "remote"])
    files: list[Path] = field(default_factory=list)
    redone: list[str] = field(default_factory=list)  # candidate.stage run by this invocation

    @property
    def exit_code(self) -> int:
        if not any(r["status"] == "ok" for r in self.rows):
            return EXIT_NOTHING
        if self.budget and any(ch.row is None for ch in self.choices):
            return EXIT_BUDGET
        return EXIT_OK

    def to_json(self) -> dict:
        def ch(c: judge.Choice) -> dict:
            return {"device": c.device, "meets_budget": c.row is not None, "choice": c.row, "closest": c.closest,
                    "over": c.over, "judged": c.candidates}

        return {"schema": 1, "settings": self.settings, "budget": self.budget, "rows": self.rows,
                "choices": [ch(c) for c in self.choices], "cost_seconds": self.cost, "scan_seconds": self.scan_seconds,
                "seconds": self.seconds, "ran": self.redone,
                "notes": ["latency is judged on the upper end of the p50's 95 % confidence interval",
                          "on an emulated device top-1 is the device's; p50 and RAM are this machine's"]}


def _caching_seconds(report: dict) -> float:
    """Seconds training spent computing backbone features (report.json's feature_cache), 0 when none."""
    total = 0.0

    def walk(x):
        nonlocal total
        if isinstance(x, dict):
            for k, v in x.items():
                if k == "seconds_computing" and isinstance(v, (int, float)):
                    total += float(v)
                else:
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(report.get("feature_cache") or {})
    return total


def _cost(cands, state: SweepState) -> dict[str, dict[str, float]]:
    out = {}
    for c in cands:
        secs = state.candidate(c.name)["seconds"]
        rep = fsutil.read_json_dict(c.run / "report.json")
        caching = _caching_seconds(rep) if secs.get("train") is not None else None
        out[c.name] = {"caching": caching,
                       "training": (secs["train"] - (caching or 0.0)) if secs.get("train") is not None else None,
                       "export": secs.get("export"), "bench": secs.get("bench"), "remote": secs.get("remote")}
    return out


def _progress(console, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("left"), TimeRemainingColumn(), console=console, transient=True,
                    disable=not console.is_terminal)


def _done_line(c, state: SweepState, i: int, n: int) -> str:
    info = state.candidate(c.name)
    secs = info["seconds"]
    spent = ", ".join(f"{k} {secs[k]:.0f}s" for k in STAGES if secs.get(k) is not None) or "nothing redone"
    if info.get("error"):
        return f"[{i}/{n}] {c.name}: failed at {info.get('failed_stage')}: {info['error']}"
    rep = fsutil.read_json_dict(c.run / "report.json")
    rows = [r for r in judge.collect([c], state.data) if r["status"] == "ok" and r["device"] == "local"]
    best = max(rows, key=lambda r: (r.get("top1") or 0, -(r.get("p50_ms") or 0)), default=None)
    fast = f"; best here {best['format']} {best['top1']:.2%} at p50 {best['p50_ms']:.2f} ms" if best and \
        best.get("p50_ms") is not None else ""
    top1 = f"val {rep['top1']:.2%}" if isinstance(rep.get("top1"), (int, float)) else "val -"
    return f"[{i}/{n}] {c.name}: {top1}{fast} ({spent})"


def run_sweep(opts: SweepOptions, resume: str | Path | None, console, budget_override: dict | None = None,
              retry_failed: bool = False) -> SweepResult:
    """Run (or resume) the sweep. On resume, a budget given (any of its limits) replaces the saved one, and
    failed candidates are tried again only with ``retry_failed``."""
    t0 = time.perf_counter()
    if resume:
        folder = Path(resume)
        if not folder.is_dir():
            raise EdgeclfError(f"--resume {folder}: no such sweep folder")
        opts = SweepOptions.load(folder)
        if budget_override and any(v is not None for v in budget_override.values()):
            for k in BUDGET_FIELDS:  # judged anew on what is finished, nothing redone
                setattr(opts, k, budget_override.get(k))
        check(opts)
        console.print(f"resuming the sweep in {folder}", markup=False, highlight=False)
    else:
        check(opts)
        folder = new_sweep_folder(opts.project, opts.name)
        opts.data = str(Path(opts.data).resolve())
        console.print(f"sweep folder: {folder}", markup=False, highlight=False)
    opts.save(folder)
    state = SweepState(folder)
    scan_once(opts, folder, state)
    cands = candidates(opts, folder)
    redone: list[str] = []
    todo = [(c, s) for c in cands for s in stages(opts)]
    with _progress(console, len(todo)) as bar:
        task = bar.add_task("sweep", total=len(todo))
        for i, c in enumerate(cands, 1):
            info = state.candidate(c.name)
            if info.get("error") and retry_failed:
                info["error"], info["failed_stage"] = None, None
            for stage in stages(opts):
                if info.get("error") or c.finished(stage):
                    bar.advance(task)
                    continue
                bar.update(task, description=f"{c.name}: {stage}")
                if not console.is_terminal:
                    console.print(f"[{i}/{len(cands)}] {c.name}: {stage}…", markup=False, highlight=False)
                seconds, error = run_stage(stage, c, opts)
                redone.append(f"{c.name}.{stage}")
                info["seconds"][stage] = seconds
                if error:
                    info["error"], info["failed_stage"] = error, stage
                state.save()
                bar.advance(task)
            state.save()
            bar.console.print(_done_line(c, state, i, len(cands)), markup=False, highlight=False)
    rows = judge.collect(cands, state.data)
    judge.mark_front(rows)
    budget = opts.budget()
    choices = [judge.choose(rows, dev, budget) for dev in judge.targets(rows, opts.remotes)]
    from dataclasses import asdict

    settings = {k: v for k, v in asdict(opts).items() if k not in BUDGET_FIELDS}
    result = SweepResult(folder, settings, rows, choices, budget, _cost(cands, state),
                         state.data.get("scan_seconds"), round(time.perf_counter() - t0, 1), redone=redone)
    from edgeclf.sweep import report

    result.files = report.write_all(result)
    return result
