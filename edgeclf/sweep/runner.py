"""Run the sweep: one scan, then per candidate ``edgeclf train``, ``export`` and ``bench`` as processes of
their own, each stage skipped when its file says it is finished. No TensorFlow in this process."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edgeclf import fsutil, rundir
from edgeclf.errors import EdgeclfError
from edgeclf.log import get_logger
from edgeclf.sweep.options import SweepOptions

log = get_logger(__name__)
STATE = "state.json"
STAGES = ("train", "export", "bench", "remote")  # remote: the bench on the --remote devices (when any)


def stages(opts: SweepOptions) -> tuple[str, ...]:
    return STAGES if opts.remotes else STAGES[:3]


@dataclass(frozen=True)
class Candidate:
    model: str
    imgsz: int
    folder: Path  # the sweep folder

    @property
    def name(self) -> str:
        return f"{self.model}-{self.imgsz}"

    @property
    def run(self) -> Path:
        return self.folder / "runs" / self.name

    @property
    def export(self) -> Path:
        return self.run / rundir.EXPORT

    @property
    def bench(self) -> Path:
        return self.run / "bench"

    @property
    def bench_remote(self) -> Path:
        return self.run / "bench-remote"

    def finished(self, stage: str) -> bool:
        """A stage is finished when the file it writes last is there."""
        if stage == "train":
            try:
                return bool(json.loads((self.run / rundir.STATE).read_text(encoding="utf-8")).get("done"))
            except (OSError, ValueError, AttributeError):
                return False
        if stage == "export":
            return (self.export / "edgeclf.json").is_file()
        return ((self.bench if stage == "bench" else self.bench_remote) / "bench.json").is_file()


class SweepState:
    """``state.json``: per candidate, each stage's wall seconds and the failure, if any (atomic writes)."""

    def __init__(self, folder: Path):
        self.path = folder / STATE
        self.data = fsutil.read_json_dict(self.path)
        self.data.setdefault("candidates", {})

    def candidate(self, name: str) -> dict:
        return self.data["candidates"].setdefault(name, {"seconds": {}, "error": None})

    def save(self) -> None:
        fsutil.write_json(self.path, self.data)


def new_sweep_folder(project: str | Path, name: str) -> Path:
    folder = fsutil.free_dir(project, name)
    folder.mkdir(parents=True)
    return folder


def scan_once(opts: SweepOptions, folder: Path, state: SweepState) -> None:
    """The one scan and split every candidate trains on (``train --split-from`` the sweep folder)."""
    if (folder / rundir.SPLIT).is_file():
        return
    from edgeclf.config import TrainConfig
    from edgeclf.data.dataset import scan

    cfg = TrainConfig(data=opts.data)
    t0 = time.perf_counter()
    ds = scan(opts.data, val_split=_train_arg(opts, "--val-split", float, cfg.val_split),
              seed=_train_arg(opts, "--seed", int, cfg.seed), holdout=_train_arg(opts, "--holdout", float, cfg.holdout))
    fsutil.write_json(folder / rundir.DATA_REPORT, ds.report.to_dict())
    ds.save(folder / rundir.SPLIT)
    state.data["scan_seconds"] = round(time.perf_counter() - t0, 1)
    state.save()
    counts = ds.report.counts
    log.info(f"scanned {opts.data}: {len(ds.classes)} classes, " + ", ".join(
        f"{sum(c.values())} {split}" for split, c in counts.items()) + f" ({state.data['scan_seconds']:.0f} s)")


def _train_arg(opts: SweepOptions, flag: str, cast, default):
    """A split setting given in --train-args (the sweep's one scan must make the split train would)."""
    args = opts.train_args
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return cast(args[i + 1])
        if a.startswith(flag + "="):
            return cast(a.split("=", 1)[1])
    return default


def stage_command(stage: str, c: Candidate, opts: SweepOptions) -> list[str]:
    def opt(flag: str, value) -> list[str]:
        return [flag, str(value)] if value is not None else []

    if stage == "train":
        if (c.run / rundir.ARGS).is_file() and (c.run / rundir.SPLIT).is_file():
            return ["train", "--resume", str(c.run)]
        return ["train", opts.data, "--model", c.model, "--imgsz", str(c.imgsz), "--project", str(c.run.parent),
                "--name", c.name, "--split-from", str(c.folder), *opt("--epochs", opts.epochs),
                *opt("--fine-tune-epochs", opts.fine_tune_epochs), *opt("--weights", opts.weights), *opts.train_args]
    if stage == "export":
        return ["export", str(c.run), "--int8", "--out", str(c.export), *opt("--max-drop", opts.max_drop),
                *opt("--formats", opts.formats), *opts.export_args]
    if stage == "bench":
        return ["bench", str(c.export), "--data", opts.data, "--out", str(c.bench), "--log", "",
                *opt("--runs", opts.runs), *opt("--warmup", opts.warmup), *opt("--max-images", opts.max_images),
                *opts.bench_args]
    remotes = [x for r in opts.remotes for x in ("--remote", r)]
    same = [*opt("--runs", opts.runs), *opt("--warmup", opts.warmup), *opt("--max-images", opts.max_images),
            *opts.bench_args]
    return ["bench", str(c.export), "--data", opts.data, "--out", str(c.bench_remote), "--log", "", "--no-local",
            *remotes, *(opts.remote_bench_args if opts.remote_bench_args is not None else same)]


def _prepare(stage: str, c: Candidate) -> None:
    """Clear what a killed stage left half-written (a finished stage is never run again)."""
    if stage == "train" and c.run.exists() and not (c.run / rundir.SPLIT).is_file():
        shutil.rmtree(c.run)  # killed before its split was saved: nothing to resume
    elif stage == "export" and c.export.exists():
        shutil.rmtree(c.export)
    elif stage == "bench" and c.bench.exists():
        shutil.rmtree(c.bench)
    elif stage == "remote" and c.bench_remote.exists():
        shutil.rmtree(c.bench_remote)


def one_line_reason(output: str, code: int) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1][len("error:"):].strip()
    return lines[-1] if lines else f"exit status {code}"


def run_stage(stage: str, c: Candidate, opts: SweepOptions) -> tuple[float, str | None]:
    """Run one stage as ``python -m edgeclf STAGE …``, its output to the sweep's logs; (seconds, failure)."""
    _prepare(stage, c)
    logs = c.folder / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"{c.name}.{stage}.log"
    cmd = [sys.executable, "-m", "edgeclf", *stage_command(stage, c, opts)]
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
                              ).returncode
    seconds = round(time.perf_counter() - t0, 1)
    if code in (130, -2):  # Ctrl-C reached the stage too: the sweep stops, --resume continues it
        raise KeyboardInterrupt
    if code < 0:
        return seconds, f"killed by signal {-code} (out of memory?) (see {log_path})"
    # export's 4: a model failed (conversion or collapse) and is left out; the others are verified
    if code == 0 or (stage == "export" and code == 4 and c.finished("export")):
        return seconds, None
    return seconds, one_line_reason(log_path.read_text(encoding="utf-8", errors="replace"), code) + \
        f" (see {log_path})"


def candidates(opts: SweepOptions, folder: Path) -> list[Candidate]:
    return [Candidate(m, s, folder) for m, s in opts.candidates()]


def check(opts: SweepOptions) -> None:
    from edgeclf.models.registry import BACKBONES

    if not opts.data or not Path(opts.data).is_dir():
        raise EdgeclfError(f"{opts.data or 'DATA'}: no such folder")
    unknown = [m for m in opts.models if m not in BACKBONES]
    if unknown:
        raise EdgeclfError(f"--models {unknown[0]}: unknown backbone (choose from {', '.join(BACKBONES)})")
    bad = [s for s in opts.sizes if not 32 <= s <= 1024]
    if bad:
        raise EdgeclfError(f"--imgsz {bad[0]}: input sizes are 32 to 1024 px")
    for k, v in opts.budget().items():
        if v <= 0:
            raise EdgeclfError(f"--{k.replace('_', '-')} must be above 0 (got {v})")
