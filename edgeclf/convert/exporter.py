"""``edgeclf export``: a trained Keras model -> verified TFLite/ONNX models + ``edgeclf.json``.

    result = export_model(ExportOptions(target="runs/train/exp", int8=True))
    result.exit_code   # 0 ok, 3 exported but an artifact lost more than --max-drop, 4 verification failed

Steps: resolve the source (run folder or .keras) -> load Keras once -> (optional QAT) -> for each
format of the table: convert, embed metadata, write atomically -> verify every file through the
edgeclf runtime on the validation split -> write ``labels.txt`` and ``edgeclf.json`` last.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgeclf import fsutil
from edgeclf.contract import CONTRACT_FILE, Artifact, Bundle, InputSpec
from edgeclf.convert.calibration import DEFAULT_CALIB_IMAGES, CalibrationSet, calibration_set, load_images
from edgeclf.convert.formats import ExportFormat, select_formats
from edgeclf.convert.source import ExportSource, resolve_source
from edgeclf.errors import EdgeclfError

EXIT_OK = 0
EXIT_DROP = 3  # exported and verified, but an artifact lost more than --max-drop (a warning)
EXIT_FAILED = 4  # an artifact failed: collapsed, or its conversion failed; it is not in edgeclf.json
KERAS_CHECK_IMAGES = 32  # the float reference (fp32 TFLite) is checked against Keras on this many images
KERAS_CHECK_TOLERANCE = 1e-3  # max |p_tflite - p_keras|


class VerificationFailed(EdgeclfError):
    exit_code = EXIT_FAILED


@dataclass
class ExportOptions:
    target: str | Path  # run folder or .keras file
    out: str | Path | None = None  # default: RUN_DIR/export (or beside the .keras)
    formats: str | None = None  # "tflite-fp32,onnx" ...; None: all (float only without int8)
    int8: bool = False
    io: str = "int8"  # int8 TFLite input/output type: int8 | uint8 | float
    calib_images: int = DEFAULT_CALIB_IMAGES
    max_drop: float = 1.0  # points
    qat: bool = False
    qat_epochs: int = 2
    data: str | None = None  # bare .keras: the photo folder (calibration + verification)
    labels: str | None = None  # bare .keras: class names, one per line, output order
    imgsz: int | None = None
    resize: str | None = None
    onnx_per_channel: bool = True
    onnx_reduce_range: bool | None = None  # 7-bit weights; None: try both, keep the closer to fp32
    onnx_calibrate: str = "minmax"  # minmax | percentile | entropy
    opset: int = 13
    seed: int = 0
    threads: int | None = None
    verify_images: int | None = None  # None: the whole validation split
    calibration: CalibrationSet | None = None  # library use: calibrate on these images instead


@dataclass
class ExportResult:
    out_dir: Path
    bundle: Bundle
    rows: list[dict]  # per format: name, file, bytes, top1, agreement, drop_pt, status, note
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    reference: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.failures:
            return EXIT_FAILED
        if any(r["status"] == "drop" for r in self.rows):
            return EXIT_DROP
        return EXIT_OK


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_keras(path: Path):
    """The trained model, or a one-line error for a file Keras cannot read."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # zip errors, missing config, unknown layers, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EdgeclfError(f"{path}: Keras cannot load this model ({first[:200]})") from None


class ExportJob:
    """What the format modules get: the loaded model, the bundle, calibration, atomic writes."""

    def __init__(self, source: ExportSource, options: ExportOptions, bundle: Bundle, out_dir: Path,
                 keras_model, warn: Callable[[str], None], console=None):
        self.source, self.options, self.bundle, self.out_dir = source, options, bundle, out_dir
        self._keras = keras_model
        self.console = console
        self.qat_info: dict | None = None  # set by --qat
        self._calib = options.calibration
        self._cache: dict[str, object] = {}
        self.warn = warn

    def keras_model(self):
        return self._keras

    def cached(self, key: str, make: Callable[[], object]):
        """A value shared between formats (e.g. the fp32 ONNX graph that int8 quantizes)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def calibration(self) -> CalibrationSet:
        if self._calib is None:
            h, w = self.bundle.input.height, self.bundle.input.width
            self._calib = calibration_set(self.source.train, self.options.calib_images, h, w,
                                          self.bundle.input.resize, seed=self.options.seed, warn=self.warn)
        return self._calib

    def path_of(self, fmt: ExportFormat) -> Path:
        return self.out_dir / fmt.file

    def write_model(self, file: str, data: bytes) -> Path:
        return fsutil.write_bytes(self.out_dir / file, data)


def _console():
    from rich.console import Console

    return Console(highlight=False, width=max(100, Console().width))


def export_model(options: ExportOptions, console=None) -> ExportResult:
    """Export, verify, write the contract. Returns the result; prints progress and the table."""
    console = console or _console()
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        console.print(f"[yellow]warning:[/yellow] {msg}")

    if options.max_drop < 0:
        raise EdgeclfError(f"--max-drop must be >= 0 (got {options.max_drop})")
    if options.io not in ("int8", "uint8", "float"):
        raise EdgeclfError(f"--io {options.io!r}: choose int8, uint8 or float")
    formats = select_formats(options.formats, options.int8)
    if options.qat and not any(f.name == "tflite-int8" for f in formats):
        raise EdgeclfError("--qat fine-tunes for the int8 TFLite model: add --int8 (and tflite-int8 to --formats)")
    source = resolve_source(options.target, data=options.data, labels=options.labels, imgsz=options.imgsz,
                            resize=options.resize)
    out_dir = Path(options.out) if options.out else source.default_out
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgeclfError(f"--out {out_dir}: exists and is not a folder")

    console.print(f"loading {source.model_path}")
    t0 = time.perf_counter()
    model = load_keras(source.model_path)
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 3:
        raise EdgeclfError(f"{source.model_path}: input shape {shape} is not an RGB NHWC image")
    if not source.imgsz:
        source.imgsz = int(shape[1])
    if (shape[1], shape[2]) != (source.imgsz, source.imgsz):
        raise EdgeclfError(f"{source.model_path}: model input is {shape[1]}x{shape[2]}, expected "
                           f"{source.imgsz}x{source.imgsz} (--imgsz / the run's imgsz)")
    n_out = int(model.output_shape[-1])
    if n_out != len(source.classes):
        raise EdgeclfError(f"{source.model_path}: the model has {n_out} outputs but there are "
                           f"{len(source.classes)} classes ({', '.join(source.classes[:5])}...)")

    bundle = Bundle(classes=list(source.classes),
                    input=InputSpec(height=source.imgsz, width=source.imgsz, resize=source.resize),
                    source=_source_info(source, options))
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = out_dir / CONTRACT_FILE
    if stale.exists():  # a half-finished re-export must not look complete with the old contract
        stale.unlink()
    job = ExportJob(source, options, bundle, out_dir, model, warn, console)

    rows: list[dict] = []
    artifacts: list[tuple[ExportFormat, Artifact]] = []
    failures: list[str] = []
    for fmt in formats:
        console.print(f"exporting {fmt.name} -> {fmt.file}")
        t = time.perf_counter()
        try:
            artifact = fmt.export(job)
        except EdgeclfError as exc:
            failures.append(f"{fmt.name}: {exc}")
            rows.append({"name": fmt.name, "file": fmt.file, "bytes": 0, "status": "failed", "note": str(exc)})
            console.print(f"[red]{fmt.name} failed:[/red] {exc}")
            continue
        path = out_dir / fmt.file
        artifact.bytes = path.stat().st_size
        artifact.sha256 = _sha256(path)
        artifact.extra["export_seconds"] = round(time.perf_counter() - t, 1)
        artifacts.append((fmt, artifact))

    reference = _verify(job, artifacts, rows, failures, warnings, console)

    kept = [a for f, a in artifacts if not any(r["name"] == f.name and r["status"] == "failed" for r in rows)]
    bundle.artifacts = kept
    bundle.source["reference"] = reference
    bundle.source["export_seconds"] = round(time.perf_counter() - t0, 1)
    bundle.save(out_dir)
    result = ExportResult(out_dir, bundle, sorted(rows, key=lambda r: [f.name for f in formats].index(r["name"])),
                          warnings, failures, reference)
    print_summary(result, options, console)
    return result


def _source_info(source: ExportSource, options: ExportOptions) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("edgeclf", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    info = {"backbone": source.backbone, "model": str(source.model_path), "keras_val_top1": source.keras_val_top1,
            "versions": versions}
    if source.run_dir is not None:
        info["run"] = str(source.run_dir)
    if "data" in source.info:
        info["data"] = source.info["data"]
    if options.qat:
        info["qat"] = True
    return info


def _verify(job: ExportJob, artifacts, rows, failures, warnings, console) -> dict:
    """Evaluate every artifact through the runtime on val; mark collapsed ones failed (file removed)."""
    from edgeclf.convert import tflite, verify
    from edgeclf.runtime.model import ModelRef

    if not artifacts:
        return {}
    bundle, opts = job.bundle, job.options
    val = job.source.val[: opts.verify_images] if opts.verify_images else job.source.val
    console.print(f"verifying on {len(val)} validation images through the edgeclf runtime")
    images = load_images(val, bundle.input.height, bundle.input.width, bundle.input.resize)
    labels = np.array([s.label for s in val])
    bundle.root = job.out_dir

    # The float reference: the fp32 TFLite model (exported, or converted here and not kept), checked
    # against Keras on a few images. Keras on the whole val set would take minutes on a CPU.
    ref_art = next((a for f, a in artifacts if f.name == "tflite-fp32"), None)
    tmp_ref = None
    if ref_art is None:
        from edgeclf.convert.metadata import add_tflite_metadata

        data = tflite.convert(job.keras_model(), "fp32")
        tmp_ref = job.out_dir / ".reference_fp32.tflite"
        ref_art = Artifact(file=tmp_ref.name, format="tflite", precision="fp32")
        fsutil.write_bytes(tmp_ref, add_tflite_metadata(data, bundle, ref_art))
    try:
        ref_probs, _ = verify.predict(ModelRef(bundle.root / ref_art.file, bundle, ref_art, "export"), images,
                                      opts.threads)
    finally:
        if tmp_ref is not None and tmp_ref.exists():
            tmp_ref.unlink()
    k = min(KERAS_CHECK_IMAGES, len(images))
    keras_probs = np.asarray(job.keras_model().predict(images[:k].astype(np.float32), batch_size=k, verbose=0))
    max_diff = float(np.abs(keras_probs - ref_probs[:k]).max())
    ref_pred = ref_probs.argmax(axis=1)
    ref_top1 = float((ref_pred == labels).mean())
    ref_share = verify.predicted_share(ref_pred, len(bundle.classes))
    if ref_share >= verify.COLLAPSE_SHARE:
        warnings.append(f"the trained model itself predicts '{bundle.classes[int(np.bincount(ref_pred).argmax())]}' "
                        f"for {ref_share:.0%} of the validation images: check training (the export is faithful)")
        console.print(f"[yellow]warning:[/yellow] {warnings[-1]}")
    reference = {"artifact": "tflite-fp32", "val_top1": round(ref_top1, 4), "val_images": int(len(val)),
                 "keras_check_images": int(k), "keras_max_abs_diff": round(max_diff, 6),
                 "note": "agreement and drop are measured against the fp32 TFLite model, checked against "
                         "Keras on the first keras_check_images validation images"}
    if max_diff > KERAS_CHECK_TOLERANCE:
        failures.append(f"the fp32 TFLite model differs from Keras by {max_diff:.4f} (probability) on {k} images")
        console.print(f"[red]the float reference disagrees with Keras (max |dp| {max_diff:.4f})[/red]")

    for fmt, art in artifacts:
        ref = ModelRef(job.out_dir / art.file, bundle, art, "export")
        try:
            probs, engine = verify.predict(ref, images, opts.threads)
        except EdgeclfError as exc:
            failures.append(f"{fmt.name}: the runtime cannot run it ({exc})")
            rows.append({"name": fmt.name, "file": art.file, "bytes": art.bytes, "status": "failed",
                         "note": f"runtime: {exc}"})
            (job.out_dir / art.file).unlink(missing_ok=True)
            continue
        v = verify.assess(fmt.name, probs, labels, bundle.classes, ref_pred, ref_top1, engine)
        art.val_top1 = round(v.top1, 4)
        art.extra.update({"agreement": round(v.agreement, 4), "drop_pt": v.drop_pt, "val_images": int(len(val)),
                          "verified_with": engine})
        row = {"name": fmt.name, "file": art.file, "bytes": art.bytes, "top1": v.top1, "agreement": v.agreement,
               "drop_pt": v.drop_pt, "status": "ok", "note": ""}
        if v.collapsed:
            row["status"], row["note"] = "failed", f"collapsed: {v.collapsed}"
            failures.append(f"{fmt.name} collapsed: {v.collapsed}; the file was removed "
                            f"(try more --calib-images, or check the calibration images are real photos)")
            (job.out_dir / art.file).unlink(missing_ok=True)
        elif v.drop_pt is not None and v.drop_pt > opts.max_drop:
            row["status"] = "drop"
            row["note"] = f"try: {verify.advice(fmt.name, fmt.precision, opts.qat)}"
            warnings.append(f"{fmt.name} loses {v.drop_pt:.2f} pt (> --max-drop {opts.max_drop}); "
                            f"try {verify.advice(fmt.name, fmt.precision, opts.qat)}")
        rows.append(row)
    return reference


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n else "-"


def print_summary(result: ExportResult, options: ExportOptions, console) -> None:
    from rich.table import Table

    ref = result.reference
    title = (f"validation: {ref.get('val_images', 0)} images, float reference top-1 {ref.get('val_top1', 0):.2%}"
             if ref else "not verified")
    table = Table(title=title)
    for col, just in (("format", "left"), ("file", "left"), ("size", "right"), ("top-1", "right"),
                      ("agree", "right"), ("drop pt", "right"), ("status", "left")):
        table.add_column(col, justify=just)
    for r in result.rows:
        colour = {"ok": "green", "drop": "yellow", "failed": "red"}[r["status"]]
        table.add_row(r["name"], r["file"], _mb(r.get("bytes", 0)),
                      f"{r['top1']:.2%}" if r.get("top1") is not None else "-",
                      f"{r['agreement']:.2%}" if r.get("agreement") is not None else "-",
                      f"{r['drop_pt']:+.2f}" if r.get("drop_pt") is not None else "-",
                      f"[{colour}]{r['status']}[/{colour}]")
    console.print(table)
    for w in result.warnings:
        if "--max-drop" in w:
            console.print(f"[yellow]warning:[/yellow] {w}")
    for f in result.failures:
        console.print(f"[red]failed:[/red] {f}")
    out = result.out_dir
    console.print(f"wrote {out / CONTRACT_FILE} ({len(result.bundle.artifacts)} verified models)")
    if result.bundle.artifacts:
        data = result.bundle.source.get("data") or "DATA"
        console.print("next:")
        console.print(f"  edgeclf bench {out} --data {data}", markup=False)
        console.print(f"  edgeclf run {out} --source 0", markup=False)
