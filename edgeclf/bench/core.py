"""Measure every artifact of one or more export folders side by side. No TensorFlow.

    result = run_bench(BenchOptions(exports=["runs/train/exp/export"], data="photos/"))
    result.exit_code   # 0 ok; 3 an artifact below --min-top1 (or failed, when --min-top1 is given)

Steps: read each ``edgeclf.json`` -> take the validation split of ``--data`` (the run's own
``split.json`` when it was made from the same folder, else a scan) -> decode and resize it once per input
size with :func:`edgeclf.imageio.load_resized` into a temporary ``.npy`` -> for every artifact x backend x
thread count, one child process (:mod:`edgeclf.bench.worker`) loads the model through
``edgeclf.runtime.open_backend``, times batch-1 invokes, reports its peak RSS, and (once per artifact and
backend) predicts the whole validation array -> metrics here with
:func:`edgeclf.metrics.classification_report` -> table, ``bench.csv/json/md/png`` and a log line.

The children run one after another: latency measured while another model runs would mean nothing.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeclf.contract import Artifact, Bundle, ContractError, load_bundle
from edgeclf.errors import EdgeclfError

DEFAULT_RUNS = 100
DEFAULT_WARMUP = 10
DEFAULT_PROJECT = Path("runs/bench")  # --out default: runs/bench/exp, exp2, ...
DEFAULT_LOG = DEFAULT_PROJECT / "bench_log.jsonl"  # one JSON line appended per bench run
BACKEND_CHOICES = ("litert", "onnxruntime", "opencv")
# Backends measured by default, per format; OpenCV DNN only for float ONNX by default (it cannot run
# integer inputs, and QDQ int8 graphs are unreliable in it): asked for explicitly, it is tried on any
# ONNX model and a failure is that row's status.
DEFAULT_BACKENDS = {"tflite": ("litert",), "onnx": ("onnxruntime", "opencv")}
OPENCV_DEFAULT_PRECISIONS = ("fp32",)
INSTALL = {"litert": "ai-edge-litert", "onnxruntime": "onnxruntime", "opencv": "opencv-python-headless"}
REFERENCE_ORDER = (("tflite-fp32", "litert"), ("onnx-fp32", "onnxruntime"))
EXIT_OK = 0
EXIT_BELOW = 3  # an artifact below --min-top1 (or failed, when --min-top1 is given)
LATENCY_IMAGES = 8  # the timed invokes cycle over this many real validation images
JOB_TIMEOUT = 1800  # seconds per child process


class BenchFailed(EdgeclfError):
    exit_code = EXIT_BELOW


@dataclass
class BenchOptions:
    exports: list[str | Path]
    data: str | Path
    out: str | Path | None = None  # default: runs/bench/exp (exp2, exp3 ... when taken)
    runs: int = DEFAULT_RUNS
    warmup: int = DEFAULT_WARMUP
    threads: list[int] | None = None  # None: every core this process may use
    backends: list[str] | None = None  # None: every installed backend that applies
    min_top1: float | None = None  # fraction 0..1
    log: str | Path | None = DEFAULT_LOG  # None: no log line
    command: str = ""  # the command line, recorded in the outputs
    job_timeout: float = JOB_TIMEOUT


@dataclass
class ExportInfo:
    """One export folder under test and its validation images."""

    dir: Path
    bundle: Bundle
    label: str  # "mobilenet_v2 224"
    val_paths: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None
    split_source: str = ""  # where the validation split came from
    images_npy: Path | None = None
    reference: dict = field(default_factory=dict)


@dataclass
class BenchResult:
    out_dir: Path
    rows: list[dict]
    exports: list[ExportInfo]
    machine: dict
    settings: dict
    files: dict[str, Path]
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_BELOW if any(r["status"] != "ok" for r in self.rows) and self.settings.get("min_top1") is not None \
            else EXIT_OK


# --- inputs ------------------------------------------------------------------------------------------

def parse_threads(text: str | None) -> list[int] | None:
    """``"1,2,4"`` -> [1, 2, 4]."""
    if text is None or not str(text).strip():
        return None
    try:
        values = [int(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise EdgeclfError(f"--threads {text!r}: expected a number or a comma list such as 1,2,4") from None
    if not values or any(v < 1 for v in values):
        raise EdgeclfError(f"--threads {text!r}: thread counts must be at least 1")
    return list(dict.fromkeys(values))


def parse_backends(text: str | None) -> list[str] | None:
    if text is None or not str(text).strip():
        return None
    names = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    bad = [n for n in names if n not in BACKEND_CHOICES]
    if bad:
        raise EdgeclfError(f"--backends: unknown backend {bad[0]!r}; choose from {', '.join(BACKEND_CHOICES)}")
    return list(dict.fromkeys(names))


def free_dir(project: Path, name: str = "exp") -> Path:
    """``project/name``, or ``name2``, ``name3`` ... when taken."""
    candidate, n = project / name, 2
    while candidate.exists():
        candidate, n = project / f"{name}{n}", n + 1
    return candidate


def _check_options(o: BenchOptions) -> None:
    if not o.exports:
        raise EdgeclfError("give at least one export folder: edgeclf bench EXPORT_DIR --data DATA")
    if o.runs < 1:
        raise EdgeclfError(f"--runs must be at least 1 (got {o.runs})")
    if o.warmup < 0:
        raise EdgeclfError(f"--warmup must be 0 or more (got {o.warmup})")
    if o.min_top1 is not None and not 0.0 <= o.min_top1 <= 1.0:
        raise EdgeclfError(f"--min-top1 is a fraction between 0 and 1 (got {o.min_top1}; 0.9 means 90 %)")
    if o.threads is not None and (not o.threads or any(t < 1 for t in o.threads)):
        raise EdgeclfError("--threads: thread counts must be at least 1")
    if not Path(o.data).is_dir():
        raise EdgeclfError(f"--data {o.data}: no such data folder")


def _label(bundle: Bundle, folder: Path) -> str:
    backbone = bundle.source.get("backbone") or folder.resolve().parent.name or folder.name
    return f"{backbone} {bundle.input.height}"


def _run_split(bundle: Bundle, folder: Path, data: Path):
    """The run's own ``split.json`` when the export came from a run trained on ``data``, else None."""
    from edgeclf.data.dataset import Dataset

    from edgeclf.rundir import SPLIT, split_root

    run = bundle.source.get("run")
    candidates = ([Path(run)] if run else []) + [folder.parent]
    for run_dir in candidates:
        split = run_dir / SPLIT
        root = split_root(run_dir)
        if root is None:
            continue
        if root.resolve() == data.resolve():
            try:
                return Dataset.load(split), f"{split} (the run's split)"
            except (EdgeclfError, OSError, ValueError, KeyError):
                return None
    return None


def load_exports(options: BenchOptions, console) -> list[ExportInfo]:
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
        found = _run_split(e.bundle, e.dir, data)
        if found is None:
            if scanned is None:
                console.print(f"scanning {data}")
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
        e.val_paths = [s.path for s in val]
        e.labels = np.array([index[ds.classes[s.label]] for s in val], dtype=np.int64)
    return exports


def decode_val(exports: list[ExportInfo], tmp: Path, console) -> None:
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
            console.print(f"decoded {len(images)} validation images at {inp.height}x{inp.width} ({inp.resize}) "
                          f"in {time.perf_counter() - t:.1f} s")
        e.images_npy = cache[key]


# --- jobs --------------------------------------------------------------------------------------------

def _installed(name: str) -> bool:
    from edgeclf.runtime import BACKENDS

    return BACKENDS[name].available()


def backends_for(art: Artifact, chosen: list[str] | None) -> list[tuple[str, str | None]]:
    """(backend, reason it cannot run) for each backend that measures ``art``."""
    from edgeclf.runtime import BACKENDS

    if chosen is None:
        names = [n for n in DEFAULT_BACKENDS.get(art.format, ())
                 if n != "opencv" or art.precision in OPENCV_DEFAULT_PRECISIONS]
        installed = [n for n in names if _installed(n)]
        if installed:
            return [(n, None) for n in installed]
        first = names[0] if names else "-"
        return [(first, f"no runtime for {art.format} installed (pip install {INSTALL.get(first, first)})")]
    return [(n, None) for n in chosen if art.format in BACKENDS[n].formats]


def _run_child(spec: dict, tmp: Path, n: int, timeout: float) -> dict:
    spec_path = tmp / f"spec_{n}.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    try:
        proc = subprocess.run([sys.executable, "-m", "edgeclf.bench.worker", str(spec_path)], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "fail", "reason": f"timed out after {timeout:.0f} s"}
    result_path = Path(spec["result"])
    if result_path.is_file():
        return json.loads(result_path.read_text(encoding="utf-8"))
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        return {"status": "fail", "reason": f"the runtime crashed ({sig})"}
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    return {"status": "fail", "reason": f"exit {proc.returncode}: {lines[-1][:200] if lines else 'no output'}"}


def _row(e: ExportInfo, art: Artifact, backend: str, threads: int, options: BenchOptions) -> dict:
    path = e.bundle.path_of(art)
    size = path.stat().st_size if path.is_file() else art.bytes
    return {"model": e.label, "export_dir": str(e.dir), "backbone": e.bundle.source.get("backbone"),
            "imgsz": e.bundle.input.height, "format": art.name, "precision": art.precision, "file": art.file,
            "backend": backend, "engine": "", "threads": threads, "status": "ok", "note": "", "size_bytes": size,
            "val_images": len(e.val_paths), "runs": options.runs, "warmup": options.warmup}


def run_jobs(exports: list[ExportInfo], options: BenchOptions, tmp: Path, console) -> tuple[list[dict], dict]:
    from edgeclf.runtime import default_threads

    threads = options.threads or [default_threads()]
    plan = []
    for e in exports:
        for art in e.bundle.artifacts:
            for backend, reason in backends_for(art, options.backends):
                for t in threads:
                    plan.append((e, art, backend, t, reason))
    if not plan:
        raise EdgeclfError(f"--backends {','.join(options.backends or [])}: none of them runs any artifact here "
                           f"(formats: {', '.join(sorted({a.format for e in exports for a in e.bundle.artifacts}))})")
    rows, probs = [], {}
    for n, (e, art, backend, t, reason) in enumerate(plan):
        row = _row(e, art, backend, t, options)
        row["_key"], row["_export"] = (id(e), art.name, backend), e
        rows.append(row)
        first = (id(e), art.name, backend) not in probs
        if reason:
            row["status"], row["note"] = "fail", reason
            probs.setdefault((id(e), art.name, backend), None)
            continue
        spec = {"export_dir": str(e.dir), "artifact": art.name, "backend": backend, "threads": t,
                "runs": options.runs, "warmup": options.warmup, "images": str(e.images_npy),
                "latency_images": LATENCY_IMAGES, "accuracy": first, "probs_out": str(tmp / f"probs_{n}.npy"),
                "result": str(tmp / f"result_{n}.json")}
        t0 = time.perf_counter()
        result = _run_child(spec, tmp, n, options.job_timeout)
        if result.get("status") != "ok":
            row["status"], row["note"] = "fail", result.get("reason", "failed")
            if first:
                probs[(id(e), art.name, backend)] = None
        else:
            row["engine"] = result["engine"]
            for key in ("load_ms", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "std_ms", "min_ms", "max_ms", "fps"):
                row[key] = result[key]
            row["rss_peak_mib"] = result["rss_peak_kib"] / 1024
            row["rss_baseline_mib"] = result["rss_baseline_kib"] / 1024
            row["rss_model_mib"] = row["rss_peak_mib"] - row["rss_baseline_mib"]
            if first:
                probs[(id(e), art.name, backend)] = np.load(spec["probs_out"])
        state = "ok" if row["status"] == "ok" else f"fail: {row['note']}"
        p50 = f"p50 {row['p50_ms']:.2f} ms, " if "p50_ms" in row else ""
        console.print(f"[{n + 1}/{len(plan)}] {e.label} {art.name} {backend} {t} threads: {p50}"
                      f"{time.perf_counter() - t0:.1f} s, {state}", markup=False)
    return rows, probs


# --- metrics -----------------------------------------------------------------------------------------

def _reference(e: ExportInfo, probs: dict) -> tuple[str, str, np.ndarray] | None:
    """The float model of the same export: tflite-fp32 (LiteRT), else onnx-fp32, else any fp32 measured."""
    for name, backend in REFERENCE_ORDER:
        p = probs.get((id(e), name, backend))
        if p is not None:
            return name, backend, p
    for (eid, name, backend), p in probs.items():
        if eid == id(e) and p is not None and name.endswith("-fp32"):
            return name, backend, p
    return None


def add_metrics(rows: list[dict], exports: list[ExportInfo], probs: dict, min_top1: float | None) -> None:
    from edgeclf.metrics import classification_report

    reports: dict[tuple, dict] = {}
    for e in exports:
        ref = _reference(e, probs)
        if ref is not None:
            name, backend, p = ref
            ref_pred = p.argmax(axis=1)
            ref_top1 = float((ref_pred == e.labels).mean())
            e.reference = {"format": name, "backend": backend, "top1": ref_top1, "_pred": ref_pred}
    for row in rows:
        e: ExportInfo = row["_export"]
        key = row["_key"]
        p = probs.get(key)
        art = e.bundle.artifact(row["format"])
        row["export_top1"] = art.val_top1
        row["export_val_images"] = art.extra.get("val_images")
        if p is None:
            continue
        if key not in reports:
            reports[key] = classification_report(p, e.labels, e.bundle.classes)
        rep = reports[key]
        row["top1"] = rep["top1"]
        if "top5" in rep:
            row["top5"] = rep["top5"]
        row["macro_f1"] = rep["macro_f1"]
        row["per_class"] = rep["per_class"]
        if e.reference:
            row["drop_pt"] = round((e.reference["top1"] - rep["top1"]) * 100, 2)
            row["agreement"] = float((p.argmax(axis=1) == e.reference["_pred"]).mean())
        if art.val_top1 is not None:
            row["export_diff_pt"] = round((rep["top1"] - float(art.val_top1)) * 100, 2)
        if row["status"] == "ok" and min_top1 is not None and rep["top1"] < min_top1:
            row["status"], row["note"] = "below --min-top1", f"top-1 {rep['top1']:.2%} < {min_top1:.2%}"


def machine_info(threads: list[int]) -> dict:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    try:
        fields: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip().lower(), value.strip())
        # x86: "model name"; Raspberry Pi / ARM boards: "Model" (the board) or "Hardware"
        cpu = next((fields[k] for k in ("model name", "hardware") if fields.get(k)), None) or \
            (fields["model"] if not fields.get("model", "0").isdigit() else cpu)
    except OSError:
        pass
    from edgeclf.runtime import default_threads

    versions = {}
    for pkg in ("edgeclf", "numpy", "ai-edge-litert", "tflite-runtime", "onnxruntime", "onnxruntime-gpu",
                "opencv-python-headless", "opencv-python", "opencv-contrib-python"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": default_threads(), "os": platform.platform(),
            "python": platform.python_version(), "versions": versions, "threads": threads}


# --- the whole bench ---------------------------------------------------------------------------------

def _console():
    from rich.console import Console

    return Console(highlight=False, width=max(160, Console().width))  # the combined table is wide


def run_bench(options: BenchOptions, console=None) -> BenchResult:
    """Measure, write ``bench.csv/json/md/png`` into the output folder, print the table, log one line."""
    from edgeclf.bench import report
    from edgeclf.runtime import default_threads

    console = console or _console()
    _check_options(options)
    if options.backends:
        missing = [b for b in options.backends if not _installed(b)]
        if missing:
            raise EdgeclfError(f"--backends {missing[0]}: not installed here (pip install {INSTALL[missing[0]]})")
    t0 = time.perf_counter()
    exports = load_exports(options, console)
    out_dir = Path(options.out) if options.out else free_dir(DEFAULT_PROJECT)
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgeclfError(f"--out {out_dir}: exists and is not a folder")
    threads = options.threads or [default_threads()]
    with tempfile.TemporaryDirectory(prefix="edgeclf-bench-") as tmp_name:
        tmp = Path(tmp_name)
        decode_val(exports, tmp, console)
        rows, probs = run_jobs(exports, options, tmp, console)
    add_metrics(rows, exports, probs, options.min_top1)
    settings = {"data": str(options.data), "exports": [str(e.dir) for e in exports], "runs": options.runs,
                "warmup": options.warmup, "batch": 1, "threads": threads,
                "backends": options.backends or "default", "min_top1": options.min_top1,
                "command": options.command, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "seconds": round(time.perf_counter() - t0, 1)}
    result = BenchResult(out_dir, rows, exports, machine_info(threads), settings, {})
    out_dir.mkdir(parents=True, exist_ok=True)
    result.files = report.write_all(result, console)
    if options.log:
        result.files["log"] = report.append_log(result, Path(options.log))
    report.print_table(result, console)
    return result
