"""Measure every artifact of one or more export folders side by side, here and on remote devices. No TensorFlow.

    result = run_bench(BenchOptions(exports=["runs/train/exp/export"], data="photos/"))
    report.print_table(result, console)   # what the CLI shows
    result.exit_code   # 0 ok; 3 an artifact below --min-top1 (or failed, when --min-top1 is given)

Steps: read each ``edgeclf.json`` -> take the validation split of ``--data`` (the run's own
``split.json`` when it was made from the same folder, else a scan) -> preflight every ``--remote``
device (:mod:`edgeclf.bench.remote`) -> decode and resize the split once per input size with
:func:`edgeclf.imageio.load_resized` into a temporary ``.npy`` -> on each device, for every artifact x
backend x thread count, one worker process (:mod:`edgeclf.bench.agent`, :mod:`edgeclf.bench.worker`)
loads the model through ``edgeclf.runtime.open_backend``, times batch-1 invokes, reports its peak RSS,
and (once per artifact and backend) predicts the whole validation array -> metrics here, per device
(:mod:`edgeclf.metrics`, :mod:`edgeclf.stats`) -> ``bench.csv/json/md/png`` and a log line.

The jobs run one after another, device after device: latency measured while another model runs would
mean nothing (and a loopback "device" shares this machine's cores).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from edgeclf.bench.compare import (add_cross_device, add_device_decoding, add_metrics, cross_device_note,
                                   decoding_notes, isa_note)
from edgeclf.bench.remote import RemoteDevice, RemoteError, parse_host, unexpand_home
from edgeclf.bench.rows import (DEFAULT_LOG, DEFAULT_PROJECT, EXIT_BELOW, EXIT_OK, LOCAL,  # noqa: F401 (API)
                                BenchOptions, BenchResult, BenchRow)
from edgeclf.bench.valset import ExportInfo, decode_val, load_exports
from edgeclf import fsutil
from edgeclf.contract import Artifact
from edgeclf.errors import EdgeclfError
from edgeclf.runtime.backends import AUTO_ORDER, BACKENDS
from edgeclf.log import get_logger
from edgeclf.status import Status

log = get_logger(__name__)

BACKEND_CHOICES = tuple(BACKENDS)  # the runtime's registry
# Backends measured by default, per format; OpenCV DNN only for float ONNX by default (it cannot run
# integer inputs, and QDQ int8 graphs are unreliable in it): asked for explicitly, it is tried on any
# ONNX model and a failure is that row's status.
DEFAULT_BACKENDS = AUTO_ORDER
OPENCV_DEFAULT_PRECISIONS = ("fp32",)
INSTALL = {name: b.install for name, b in BACKENDS.items()}
LATENCY_IMAGES = 8  # the timed invokes cycle over this many real validation images
DECODE_CHOICES = ("host", "device")


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
    if not o.local and not o.remotes:
        raise EdgeclfError("--no-local measures on remote devices only: give at least one --remote [user@]host")
    if o.ssh_config is not None and not Path(o.ssh_config).is_file():
        raise EdgeclfError(f"--ssh-config {o.ssh_config}: no such file")
    if not Path(o.data).is_dir():
        raise EdgeclfError(f"--data {o.data}: no such data folder")
    if o.max_images is not None and o.max_images < 1:
        raise EdgeclfError(f"--max-images must be at least 1 (got {o.max_images})")
    if o.decode_on not in DECODE_CHOICES:
        raise EdgeclfError(f"--decode-on {o.decode_on!r}: choose one of {', '.join(DECODE_CHOICES)}")


# --- devices -----------------------------------------------------------------------------------------

class LocalDevice:
    """This machine: the agent's jobs run here, in worker processes."""

    name = LOCAL

    def __init__(self):
        from edgeclf.bench.agent import backends_available
        from edgeclf.bench.fingerprint import fingerprint

        self.fingerprint = fingerprint()
        self.backends = backends_available()
        self.thermal_after: dict | None = None

    def run(self, plan: dict, files: dict[str, Path]):
        from edgeclf.bench.agent import run_job
        from edgeclf.bench.fingerprint import thermal

        with tempfile.TemporaryDirectory(prefix="edgeclf-bench-jobs-") as tmp:
            for n, job in enumerate(plan["jobs"]):
                yield (n, *run_job(job, Path("/"), Path(tmp), n, plan["job_timeout"]))
        self.thermal_after = thermal()


def backends_for(art: Artifact, chosen: list[str] | None, available: dict[str, bool],
                 anywhere: dict[str, bool] | None = None, where: str = "") -> list[tuple[str, str | None]]:
    """(backend, reason it cannot run here or None) for each backend that measures ``art`` on a device.

    ``available``: the device's installed backends; ``anywhere``: installed on any device of the bench
    (by default the same), so every device gets a row for a backend some device has, and a device that
    lacks it says so in that row. ``where`` names the device in the reason (" on pi@pi5").
    """
    from edgeclf.runtime import BACKENDS

    anywhere = available if anywhere is None else anywhere
    if chosen is None:
        names = [n for n in DEFAULT_BACKENDS.get(art.format, ())
                 if n != "opencv" or art.precision in OPENCV_DEFAULT_PRECISIONS]
        present = [n for n in names if anywhere.get(n)]
        if names and not present:  # no device has a runtime for this format: one row says so
            return [(names[0], f"no runtime for {art.format} installed{where} (pip install {INSTALL[names[0]]})")]
        names = present
    else:
        names = [n for n in chosen if art.format in BACKENDS[n].formats]
    return [(n, None if available.get(n) else f"{n} is not installed{where} (pip install {INSTALL[n]})")
            for n in names]


@dataclass
class Job:
    """One measurement: a row of the report."""

    device: str
    export: ExportInfo
    export_index: int
    artifact: Artifact
    backend: str
    threads: int
    accuracy: bool  # predict the whole validation array (once per device x artifact x backend)
    reason: str | None  # why it cannot run (then it is not run)


def plan_jobs(device, exports: list[ExportInfo], options: BenchOptions, anywhere: dict[str, bool]) -> list[Job]:
    threads = options.threads or [int(device.fingerprint.get("usable_cores") or 1)]
    where = "" if device.name == LOCAL else f" on {device.name}"
    jobs, seen = [], set()
    for i, e in enumerate(exports):
        for art in e.bundle.artifacts:
            if options.formats and art.name not in options.formats:
                continue
            for backend, reason in backends_for(art, options.backends, device.backends, anywhere, where):
                for t in threads:
                    key = (i, art.name, backend)
                    jobs.append(Job(device.name, e, i, art, backend, t, key not in seen, reason))
                    seen.add(key)
    return jobs


def _wire(jobs: list[Job], options: BenchOptions, remote: bool) -> tuple[dict, dict[str, Path]]:
    """The plan the agent runs (only the jobs that can run) and the files it needs, by name in the tar."""
    files: dict[str, Path] = {}
    images: dict[Path, str] = {}
    decode: dict[str, dict] = {}  # --decode-on device: host image set -> the photos for the device to decode
    wire = []
    for job in jobs:
        if job.reason:
            continue
        e = job.export
        if remote:
            folder = f"exports/{job.export_index}"
            for name in ("edgeclf.json", "labels.txt"):
                if (e.dir / name).is_file():
                    files[f"{folder}/{name}"] = e.dir / name
            files[f"{folder}/{job.artifact.file}"] = e.bundle.path_of(job.artifact)
            npy = images.setdefault(e.images_npy, f"images/{len(images)}.npy")
            files[npy] = e.images_npy
            if options.decode_on == "device" and npy not in decode:
                names = [f"photos/{len(decode)}/{k}{Path(p).suffix.lower()}" for k, p in enumerate(e.val_paths)]
                files.update(zip(names, map(Path, e.val_paths)))
                inp = e.bundle.input
                decode[npy] = {"host_images": npy, "label": e.label, "files": names, "height": inp.height, "width": inp.width,
                               "resize": inp.resize, "out": npy.replace(".npy", ".device.npy")}
        else:
            folder, npy = str(e.dir.resolve()), str(e.images_npy.resolve())
        entry = {"export_dir": folder, "artifact": job.artifact.name, "backend": job.backend,
                 "threads": job.threads, "runs": options.runs, "warmup": options.warmup, "images": npy,
                 "latency_images": LATENCY_IMAGES, "accuracy": job.accuracy}
        if npy in decode and job.accuracy:
            entry["device_images"] = decode[npy]["out"]
        wire.append(entry)
    from edgeclf.bench.agent import PROTOCOL

    return {"protocol": PROTOCOL, "job_timeout": options.job_timeout, "jobs": wire,
            "decode": list(decode.values())}, files


def _row(job: Job, options: BenchOptions) -> BenchRow:
    e, art = job.export, job.artifact
    path = e.bundle.path_of(art)
    size = path.stat().st_size if path.is_file() else art.bytes
    return BenchRow(device=job.device, model=e.label, export_dir=str(e.dir), backbone=e.bundle.source.get("backbone"),
                    imgsz=e.bundle.input.height, format=art.name, precision=art.precision, file=art.file,
                    backend=job.backend, threads=job.threads, size_bytes=size, val_images=len(e.val_paths),
                    runs=options.runs, warmup=options.warmup, recipe=art.recipe.label() if art.recipe else "",
                    val_total=e.val_total or len(e.val_paths),
                    export=e, key=(job.device, job.export_index, art.name, job.backend))


def _fill(row: BenchRow, result: dict) -> None:
    from edgeclf.stats import latency_summary

    if result.get("status") != Status.OK.value:
        row.status, row.note = Status.FAILED, result.get("reason") or "failed"
        return
    row.engine = result.get("engine", "")
    for key in ("import_ms", "load_ms", "cold_start_ms"):
        setattr(row, key, result.get(key))
    lat = latency_summary(result["times_ms"])
    for f in fields(lat):
        if hasattr(row, f.name):
            setattr(row, f.name, getattr(lat, f.name))
    row.rss_peak_mib = result["rss_peak_kib"] / 1024
    row.rss_baseline_mib = result["rss_baseline_kib"] / 1024
    row.rss_model_mib = row.rss_peak_mib - row.rss_baseline_mib


def run_device(device, jobs: list[Job], options: BenchOptions, counter: list[int], total: int):
    """Run ``jobs`` on ``device``; returns (rows, {row key: probs or None}, {row key: probs on the photos the
    device decoded itself})."""
    rows = [_row(job, options) for job in jobs]
    emulated = bool(device.fingerprint.get("emulation"))
    for row in rows:
        row.emulated = emulated
    device_probs: dict[tuple, np.ndarray] = {}
    probs: dict[tuple, np.ndarray | None] = {}
    runnable = []
    for job, row in zip(jobs, rows):
        if job.reason:
            row.status, row.note = Status.FAILED, job.reason
            probs.setdefault(row.key, None)
        else:
            runnable.append((job, row))
    plan, files = _wire(jobs, options, remote=device.name != LOCAL)
    t0 = time.perf_counter()
    done = set()
    try:
        for n, result, p, p_device in device.run(plan, files):
            job, row = runnable[n]
            _fill(row, result)
            done.add(n)
            if job.accuracy:
                probs[row.key] = p if row.ok else None
                if p_device is not None and row.ok:
                    device_probs[row.key] = p_device
            counter[0] += 1
            p50 = f"p50 {row.p50_ms:.2f} ms, " if row.p50_ms is not None else ""
            state = "ok" if row.ok else f"failed: {row.note}"
            log.info(f"[{counter[0]}/{total}] {device.name} {job.export.label} {job.artifact.name} {job.backend} "
                     f"{job.threads} threads: {p50}{time.perf_counter() - t0:.1f} s, {state}")
            t0 = time.perf_counter()
    except RemoteError as exc:  # the device went away mid-bench: what it measured stays, the rest says why
        log.warning(str(exc))
        for n, (job, row) in enumerate(runnable):
            if n not in done:
                row.status, row.note = Status.FAILED, str(exc)
                probs.setdefault(row.key, None)
    return rows, probs, device_probs


def machine_info(threads: list[int]) -> dict:
    """This machine's fingerprint (:func:`edgeclf.bench.fingerprint.fingerprint`) and the thread counts."""
    from edgeclf.bench.fingerprint import fingerprint

    return {**fingerprint(), "threads": threads}


# --- the whole bench ---------------------------------------------------------------------------------

def _remotes(options: BenchOptions) -> list[RemoteDevice]:
    devices, seen = [], set()
    for text in options.remotes:
        host = parse_host(text)
        if host.text in seen:
            raise EdgeclfError(f"--remote {host.text}: given twice")
        seen.add(host.text)
        devices.append(RemoteDevice(host, unexpand_home(options.remote_python), list(options.ssh_options),
                                    options.ssh_config))
    return devices


def _device_info(device, threads: list[int]) -> dict:
    info = {**device.fingerprint, "threads": threads, "thermal_after": device.thermal_after}
    if isinstance(device, RemoteDevice):
        info.update({"remote": device.host.text, "python_executable": device.info.get("executable"),
                     "workdir": device.workdir, "workdir_removed": device.workdir_removed,
                     "bytes_sent": device.bytes_sent, "decoded_on_device": device.decoded or None})
    return info


def run_bench(options: BenchOptions) -> BenchResult:
    """Measure, write ``bench.csv/json/md/png`` into the output folder, log one line; the caller prints
    the table (:func:`edgeclf.bench.report.print_table`)."""
    from edgeclf.bench import report

    _check_options(options)
    remotes = _remotes(options)
    local = LocalDevice() if options.local else None
    if local is not None and options.backends:
        missing = [b for b in options.backends if not local.backends.get(b)]
        if missing:
            raise EdgeclfError(f"--backends {missing[0]}: not installed here (pip install {INSTALL[missing[0]]})")
    t0 = time.perf_counter()
    exports = load_exports(options)
    names = {a.name for e in exports for a in e.bundle.artifacts}
    unknown = [f for f in options.formats or [] if f not in names]
    if unknown:
        raise EdgeclfError(f"--formats {unknown[0]}: no such model in the export folders "
                           f"(there: {', '.join(sorted(names))})")
    out_dir = Path(options.out) if options.out else fsutil.free_dir(DEFAULT_PROJECT, "exp")
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgeclfError(f"--out {out_dir}: exists and is not a folder")
    for device in remotes:  # every device answers before anything is measured
        info = device.preflight()
        log.info(f"{device.name}: edgeclf {info['edgeclf']}, Python {info['python']}, backends "
                 f"{', '.join(n for n, ok in device.backends.items() if ok) or 'none'}")
    devices = ([local] if local else []) + remotes
    anywhere = {n: any(d.backends.get(n) for d in devices) for n in BACKEND_CHOICES}
    plans = [(d, plan_jobs(d, exports, options, anywhere)) for d in devices]
    total = sum(len(jobs) for _, jobs in plans)
    if not any(not j.reason for _, jobs in plans for j in jobs):
        raise EdgeclfError(f"--backends {','.join(options.backends or [])}: none of them runs any artifact here "
                           f"(formats: {', '.join(sorted({a.format for e in exports for a in e.bundle.artifacts}))})")
    rows: list[BenchRow] = []
    probs: dict = {}
    decoded_probs: dict = {}
    counter = [0]
    with tempfile.TemporaryDirectory(prefix="edgeclf-bench-") as tmp_name:
        decode_val(exports, Path(tmp_name))
        for device, jobs in plans:
            device_rows, device_probs, device_decoded = run_device(device, jobs, options, counter, total)
            rows += device_rows
            probs.update(device_probs)
            decoded_probs.update(device_decoded)
    add_metrics(rows, exports, probs, options.min_top1)
    add_device_decoding(rows, probs, decoded_probs)
    add_cross_device(rows, probs)
    threads = {d.name: options.threads or [int(d.fingerprint.get("usable_cores") or 1)] for d in devices}
    first_threads = threads[devices[0].name]
    settings = {"data": str(options.data), "exports": [str(e.dir) for e in exports], "runs": options.runs,
                "warmup": options.warmup, "batch": 1, "threads": first_threads,
                "backends": options.backends or "default", "min_top1": options.min_top1,
                "max_images": options.max_images, "decode_on": options.decode_on,
                "devices": [d.name for d in devices], "command": options.command,
                "created": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.perf_counter() - t0, 1)}
    machine = {**(local.fingerprint if local else machine_info([])), "threads": threads.get(LOCAL, [])}
    result = BenchResult(out_dir, rows, exports, machine, settings, {},
                         devices={d.name: _device_info(d, threads[d.name]) for d in devices})
    from edgeclf.bench.fingerprint import emulation_text, int8_note

    for name, info in result.devices.items():
        note = int8_note(name, info)
        if note and any(r.precision == "int8" for r in rows if r.device == name):
            result.notes.append(note)
        if info.get("workdir") and info.get("workdir_removed") is False:
            result.notes.append(f"{name}: could not remove its temporary folder {info['workdir']}")
        if info.get("emulation"):
            result.notes.append(f"{name}: {emulation_text(info)}: its top-1 is what the ARM kernels answer; its "
                                f"latency, FPS and RAM are the emulator's, not the device's")
        result.notes += decoding_notes(name, info.get("decoded_on_device") or {},
                                       [r for r in rows if r.device == name])
        mine = [r for r in rows if r.device == name]
        for note in (cross_device_note(name, mine, devices[0].name), isa_note(name, info.get("machine"), mine)):
            if note:
                result.notes.append(note)
    out_dir.mkdir(parents=True, exist_ok=True)
    result.files = report.write_all(result)
    if options.log:
        result.files["log"] = report.append_log(result, Path(options.log))
    return result
