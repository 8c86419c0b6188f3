"""``edgeclf export``: a trained Keras model -> verified TFLite/ONNX models + ``edgeclf.json``.

    result = export_model(ExportOptions(target="runs/train/exp", int8=True))
    result.exit_code   # 0 ok (warnings, if any, are printed); 3 over budget with --strict; 4 a model failed

Steps: resolve the source (run folder or .keras) -> load Keras once -> (optional QAT) -> for each
format of the table: convert (int8: the accuracy-budget search of :mod:`edgeclf.convert.search`),
embed metadata, write atomically -> verify every file through the edgeclf runtime on the validation
split -> write ``labels.txt`` and ``edgeclf.json`` last.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgeclf import fsutil, metrics
from edgeclf.config import ExportOptions
from edgeclf.contract import CONTRACT_FILE, Artifact, Bundle, InputSpec
from edgeclf.convert.calibration import (CalibrationSet, SelectionSet, calibration_set, load_images, selection_set,
                                         split_training, stratified_sample)
from edgeclf.convert.formats import ExportFormat, select_formats
from edgeclf.convert.source import ExportSource, resolve_source
from edgeclf.errors import EdgeclfError
from edgeclf.log import get_logger
from edgeclf.status import Status

log = get_logger(__name__)

EXIT_OK = 0
EXIT_DROP = 3  # with --strict: an artifact lost more than --max-drop
EXIT_FAILED = 4  # an artifact failed: collapsed, or its conversion failed; it is not in edgeclf.json
KERAS_CHECK_IMAGES = 32  # the float reference (fp32 TFLite) is checked against Keras on this many images
KERAS_CHECK_TOLERANCE = 1e-3  # max |p_tflite - p_keras|


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


def load_keras(path: Path):
    """The trained model, or a one-line error for a file Keras cannot read."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # zip errors, missing config, unknown layers, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise EdgeclfError(f"{path}: Keras cannot load this model ({first})") from exc


class ExportJob:
    """What the format modules get: the loaded model, the bundle, the images int8 learns from, writes."""

    def __init__(self, source: ExportSource, options: ExportOptions, bundle: Bundle, out_dir: Path,
                 keras_model, warn: Callable[[str], None]):
        self.source, self.options, self.bundle, self.out_dir = source, options, bundle, out_dir
        self._keras = keras_model
        self.qat_info: dict | None = None  # set by --qat
        self.searches: dict = {}  # format name -> SearchResult
        self._calib = options.calibration
        self._selection: SelectionSet | None = None
        self._split: tuple[list, list] | None = None
        self._cache: dict[str, object] = {}
        self.warn = warn

    def keras_model(self):
        return self._keras

    def cached(self, key: str, make: Callable[[], object]):
        """A value shared between formats (e.g. the fp32 ONNX graph that int8 quantizes)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _training_split(self) -> tuple[list, list]:
        """(calibration, selection) samples. Selection: the run's held-out images (never trained on) when it
        has them, else training images not used for calibration."""
        if self._split is None:
            n_select = self.options.selection_images if self.options.search != "none" else 0
            held = self.source.holdout
            if held and n_select > 0:
                self._split = (split_training(self.source.train, self.options.calib_images, 0, self.options.seed)[0],
                               stratified_sample(held, n_select, self.options.seed + 1))
            else:
                self._split = split_training(self.source.train, self.options.calib_images, n_select, self.options.seed)
                if n_select > 0:
                    log.info("this model's run held no images out of training (edgeclf train --holdout): the int8 "
                             "search judges on training images, which the model may have learned by heart")
        return self._split

    @property
    def selection_from(self) -> str:
        """Where the selection images come from: ``holdout`` (never trained on) or ``train``."""
        return "holdout" if self.source.holdout else "train"

    def calibration(self) -> CalibrationSet:
        if self._calib is None:
            inp = self.bundle.input
            self._calib = calibration_set(self._training_split()[0], inp.height, inp.width, inp.resize, warn=self.warn)
        return self._calib

    def larger_calibration(self, growth: int) -> CalibrationSet | None:
        """``growth`` times more calibration images (training split minus selection), or None if there are none."""
        if self.options.calibration is not None:
            return None
        calib, selection = self._training_split()
        chosen = {s.path for s in selection}
        pool = [s for s in self.source.train if s.path not in chosen]
        n = min(len(pool), growth * len(calib))
        if n <= len(calib):
            return None
        key = f"calibration-{n}"
        inp = self.bundle.input
        return self.cached(key, lambda: calibration_set(stratified_sample(pool, n, self.options.seed), inp.height,
                                                        inp.width, inp.resize))

    def selection(self) -> SelectionSet:
        """Labelled images disjoint from calibration and validation, held out of training when the run did so:
        the search's judge."""
        if self._selection is None:
            samples = self._training_split()[1]
            if not samples:
                raise EdgeclfError("the int8 search needs selection images: the training split has too few "
                                   "images (use --search none)")
            inp = self.bundle.input
            self._selection = selection_set(samples, inp.height, inp.width, inp.resize)
        return self._selection

    def float_tflite(self) -> bytes:
        """The fp32 TFLite model (the float reference), converted once."""
        from edgeclf.convert import tflite

        return self.cached("tflite-fp32-bytes", lambda: tflite.convert(self._keras, "fp32"))

    def selection_reference(self) -> tuple[np.ndarray, np.ndarray]:
        """The float reference's probabilities on the selection images, and which of them are stable
        (their float top-1 survives +-2 levels of pixel noise; see :mod:`edgeclf.convert.search`)."""
        def make():
            from edgeclf.convert import search
            from edgeclf.runtime.backends import open_backend
            from edgeclf.runtime.model import ModelRef

            images = self.selection().images
            art = Artifact(file=".reference_fp32.tflite", format="tflite", precision="fp32")
            path = self.out_dir / art.file
            fsutil.write_bytes(path, self.float_tflite())
            backend = open_backend(ModelRef(path, self.bundle, art, "export"), threads=self.options.threads)
            try:
                def predict(x):
                    return np.concatenate([backend.predict(x[k:k + 32]) for k in range(0, len(x), 32)])

                probs = predict(images)
                pred = probs.argmax(axis=1)
                rng = np.random.default_rng(self.options.seed)
                stable = np.ones(len(pred), bool)
                for _ in range(search.UNSTABLE_DRAWS):
                    noise = rng.integers(-search.UNSTABLE_NOISE, search.UNSTABLE_NOISE + 1, images.shape)
                    noisy = np.clip(images.astype(np.int16) + noise, 0, 255).astype(np.uint8)
                    stable &= predict(noisy).argmax(axis=1) == pred
            finally:
                backend.close()
                path.unlink(missing_ok=True)
            if not stable.all():
                log.info("  %d of %d selection images left out of the judgement: the float model's own top-1 "
                         "flips under +-%d levels of pixel noise", int((~stable).sum()), len(stable),
                         search.UNSTABLE_NOISE)
            return probs, stable

        return self.cached("reference-selection", make)

    def judge(self, fmt: ExportFormat):
        """The search's judge for ``fmt``: selection images, float reference, budget, this machine."""
        from edgeclf.convert.search import Judge

        sel = self.selection()
        probs, stable = self.selection_reference()
        return Judge(self.bundle, Artifact(file=fmt.file, format=fmt.format, precision=fmt.precision), sel.images,
                     sel.labels, probs, self.options.max_drop, self.out_dir, self.options.threads, stable)

    def search(self, fmt: ExportFormat, judge, steps):
        """Walk ``steps`` for ``fmt`` with ``judge``; the result is kept (the export table prints it) and says
        where its selection images came from. Every candidate failing is an error."""
        from edgeclf.convert.search import run_search

        result = run_search(judge, steps)
        if result.data is None:
            raise EdgeclfError("every int8 candidate failed: " + "; ".join(
                f"{t.label}: {t.note}" for t in result.trials))
        result.selection_from = self.selection_from
        self.searches[fmt.name] = result
        return result

    def write_model(self, file: str, data: bytes) -> Path:
        return fsutil.write_bytes(self.out_dir / file, data)


def export_model(options: ExportOptions) -> ExportResult:
    """Export, verify, write the contract. Logs progress; returns the result (the CLI prints its table)."""
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        log.warning(msg)

    options.check()
    formats = select_formats(options.formats, options.int8)
    if options.qat and not any(f.name in ("tflite-int8", "onnx-int8") for f in formats):
        raise EdgeclfError("--qat fine-tunes for the int8 models: add --int8 (and tflite-int8 or onnx-int8 to "
                           "--formats)")
    source = resolve_source(options.target, data=options.data, labels=options.labels, imgsz=options.imgsz,
                            resize=options.resize)
    out_dir = Path(options.out) if options.out else source.default_out
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgeclfError(f"--out {out_dir}: exists and is not a folder")

    log.info("loading %s", source.model_path)
    t0 = time.perf_counter()
    model = load_keras(source.model_path)
    _check_model(model, source)

    bundle = Bundle(classes=list(source.classes),
                    input=InputSpec(height=source.imgsz, width=source.imgsz, resize=source.resize),
                    source=_source_info(source, options))
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = out_dir / CONTRACT_FILE
    if stale.exists():  # a half-finished re-export must not look complete with the old contract
        stale.unlink()
    job = ExportJob(source, options, bundle, out_dir, model, warn)

    rows: list[ExportRow] = []
    artifacts: list[tuple[ExportFormat, Artifact]] = []
    failures: list[str] = []
    for fmt in formats:
        log.info("exporting %s -> %s", fmt.name, fmt.file)
        t = time.perf_counter()
        try:
            artifact = fmt.export(job)
        except EdgeclfError as exc:
            failures.append(f"{fmt.name}: {exc}")
            rows.append(ExportRow(fmt.name, fmt.file, status=Status.FAILED, note=str(exc)))
            log.error("%s failed: %s", fmt.name, exc)
            continue
        path = out_dir / fmt.file
        artifact.bytes = path.stat().st_size
        artifact.sha256 = fsutil.sha256(path)
        artifact.extra["export_seconds"] = round(time.perf_counter() - t, 1)
        artifacts.append((fmt, artifact))

    val_probs: dict[str, np.ndarray] = {}
    reference = _verify(job, artifacts, rows, failures, warn, val_probs)
    _judge_budget(job, rows, warn)

    failed = {r.name for r in rows if r.status == Status.FAILED}
    bundle.artifacts = [a for f, a in artifacts if f.name not in failed]
    bundle.source["reference"] = reference
    bundle.source["export_seconds"] = round(time.perf_counter() - t0, 1)
    if val_probs:
        from edgeclf.convert.verify import write_predictions

        val = job.source.val[: len(next(iter(val_probs.values())))]
        verified = {k: v for k, v in val_probs.items() if k not in failed}
        write_predictions(out_dir, val, job.source.info["data"], verified, bundle.classes)
    bundle.save(out_dir)
    order = [f.name for f in formats]
    return ExportResult(out_dir, bundle, sorted(rows, key=lambda r: order.index(r.name)), warnings, failures,
                        reference, options.strict, job.searches)


def _check_model(model, source: ExportSource) -> None:
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


def _source_info(source: ExportSource, options: ExportOptions) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("edgeclf", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    info = {"backbone": source.backbone, "model": str(source.model_path), "keras_val_top1": source.keras_val_top1,
            "versions": versions, "max_drop_pt": options.max_drop, "search": options.search}
    if source.run_dir is not None:
        info["run"] = str(source.run_dir)
    if "data" in source.info:
        info["data"] = source.info["data"]
    if options.qat:
        info["qat"] = True
    return info


def _verify(job: ExportJob, artifacts, rows: list[ExportRow], failures: list[str], warn, val_probs: dict) -> dict:
    """Evaluate every artifact through the runtime on val; mark collapsed ones failed (file removed). Every
    model's validation probabilities go into ``val_probs`` (the float reference's as "float")."""
    from edgeclf.convert import verify
    from edgeclf.runtime.model import ModelRef

    if not artifacts:
        return {}
    bundle, opts = job.bundle, job.options
    val = job.source.val[: opts.verify_images] if opts.verify_images else job.source.val
    log.info("verifying on %d validation images through the edgeclf runtime", len(val))
    images = load_images(val, bundle.input.height, bundle.input.width, bundle.input.resize)
    labels = np.array([s.label for s in val])
    bundle.root = job.out_dir

    # The float reference: the fp32 TFLite model, checked against Keras on a few images. Keras on the
    # whole validation split would take minutes on a CPU.
    ref_art = Artifact(file=".reference_fp32.tflite", format="tflite", precision="fp32")
    ref_path = job.out_dir / ref_art.file
    fsutil.write_bytes(ref_path, job.float_tflite())
    try:
        ref_probs, _ = verify.predict(ModelRef(ref_path, bundle, ref_art, "export"), images, opts.threads)
    finally:
        ref_path.unlink(missing_ok=True)
    k = min(KERAS_CHECK_IMAGES, len(images))
    keras_probs = np.asarray(job.keras_model().predict(images[:k].astype(np.float32), batch_size=k, verbose=0))
    max_diff = float(np.abs(keras_probs - ref_probs[:k]).max())
    ref_pred = ref_probs.argmax(axis=1)
    val_probs["float"] = ref_probs
    ref_top1 = metrics.top1(ref_pred, labels)
    ref_share = verify.predicted_share(ref_pred, len(bundle.classes))
    if ref_share >= verify.COLLAPSE_SHARE:
        warn(f"the trained model itself predicts '{bundle.classes[int(np.bincount(ref_pred).argmax())]}' "
             f"for {ref_share:.0%} of the validation images: check training (the export is faithful)")
    reference = {"artifact": "tflite-fp32", "val_top1": round(ref_top1, 4), "val_images": int(len(val)),
                 "keras_check_images": int(k), "keras_max_abs_diff": round(max_diff, 6),
                 "note": "agreement and drop are measured against the fp32 TFLite model, checked against "
                         "Keras on the first keras_check_images validation images"}
    if max_diff > KERAS_CHECK_TOLERANCE:
        failures.append(f"the fp32 TFLite model differs from Keras by {max_diff:.4f} (probability) on {k} images")
        log.error("the float reference disagrees with Keras (max |dp| %.4f)", max_diff)

    for fmt, art in artifacts:
        ref = ModelRef(job.out_dir / art.file, bundle, art, "export")
        row = ExportRow(fmt.name, art.file, art.bytes, recipe=art.recipe.label() if art.recipe else "")
        try:
            probs, engine = verify.predict(ref, images, opts.threads)
        except EdgeclfError as exc:
            failures.append(f"{fmt.name}: the runtime cannot run it ({exc})")
            row.status, row.note = Status.FAILED, f"runtime: {exc}"
            rows.append(row)
            (job.out_dir / art.file).unlink(missing_ok=True)
            continue
        v = verify.assess(fmt.name, probs, labels, bundle.classes, ref_pred, engine)
        val_probs[fmt.name] = probs
        art.val_top1 = round(v.top1, 4)
        art.extra.update({"agreement": round(v.agreement, 4), "drop_pt": v.drop_pt, "val_images": int(len(val)),
                          "verified_with": engine, "verified_on": platform.machine(),  # int8 kernels differ by ISA
                          "val_lost": v.lost, "val_gained": v.gained,
                          "mcnemar_p": round(v.p_value, 4) if v.p_value is not None else None})
        row.top1, row.agreement, row.drop_pt = v.top1, v.agreement, v.drop_pt
        row.lost, row.gained, row.images = v.lost, v.gained, len(val)
        row.significance = verify.significance(v.lost, v.gained, v.p_value, len(val))
        if v.collapsed:
            row.status, row.note = Status.FAILED, f"collapsed: {v.collapsed}"
            failures.append(f"{fmt.name} collapsed: {v.collapsed}; the file was removed "
                            f"(try more --calib-images, or check the calibration images are real photos)")
            (job.out_dir / art.file).unlink(missing_ok=True)
        rows.append(row)
    return reference


def over_max_drop(row: ExportRow, max_drop: float) -> bool:
    """The one budget rule, as the search applies it to its candidates (:func:`search.over_budget`): a file is
    over --max-drop when the validation images show it (its net loss exceeds the budget by more than they can
    resolve, a one-sided 95 % paired test), not when a point estimate a few images wide passes it."""
    from edgeclf.convert.search import over_budget

    if row.drop_pt is None:
        return False
    if row.lost is None or row.gained is None or not row.images:
        return row.drop_pt > max_drop
    return over_budget(row.lost, row.gained, row.images, max_drop)


def _judge_budget(job: ExportJob, rows: list[ExportRow], warn) -> None:
    """Mark every verified artifact over --max-drop (:func:`over_max_drop`), with the warning that names the fix."""
    from edgeclf.convert import verify

    opts = job.options
    for row in rows:
        if row.status != Status.OK:
            continue
        search = job.searches.get(row.name)
        if search is not None and search.chosen is not None:
            row.selection_drop_pt = search.chosen.selection_drop_pt
        over_val = over_max_drop(row, opts.max_drop)
        over_search = search is not None and not search.within_budget
        if not (over_val or over_search):
            if row.drop_pt is not None and row.drop_pt > opts.max_drop:
                row.note = (f"{row.lost} lost, {row.gained} gained of {row.images}: not shown to be over "
                            f"--max-drop {opts.max_drop:g}")
            continue
        row.status = Status.DROP
        fmt_precision = row.name.split("-", 1)[1]
        if over_search:
            row.note = f"best of {len(search.trials)} candidates; try --qat"
            warn(f"{row.name}: no candidate of the search is within --max-drop {opts.max_drop} pt; kept the best "
                 f"({search.chosen.label}: {search.chosen.selection_drop_pt:+.2f} pt on the selection images, "
                 f"{row.drop_pt:+.2f} pt on validation{'; ' + row.significance if row.significance else ''}); try "
                 f"{verify.advice(row.name, fmt_precision, opts.qat)}")
        else:
            row.note = f"try: {verify.advice(row.name, fmt_precision, opts.qat)}"
            where = ""
            if row.selection_drop_pt is not None:
                c = search.chosen
                where = (f" (within budget on the {search.judged} selection images: {row.selection_drop_pt:+.2f} pt"
                         + (f", {c.selection_lost} lost and {c.selection_gained} gained" if c.selection_lost is not None
                            else "") + ")")
            if search is not None and job.selection_from == "train" and _selection_memorized(job):
                where += (" — the float model classifies every selection image correctly (training images it has "
                          "learned), so the int8 candidates could not be told apart on them; retrain with "
                          "--holdout so that export judges on images the model never saw")
            sig = f" ({row.significance})" if row.significance else ""
            warn(f"{row.name} loses {row.drop_pt:.2f} pt on validation{sig} (> --max-drop {opts.max_drop}){where}; "
                 f"try {verify.advice(row.name, fmt_precision, opts.qat)}")


def _selection_memorized(job: ExportJob) -> bool:
    from edgeclf.convert.search import memorized

    probs, stable = job.selection_reference()
    return memorized(probs, job.selection().labels, stable)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n else "-"


def print_search(result: ExportResult, console) -> None:
    """One table per searched artifact: every candidate tried, in order."""
    from rich.table import Table

    for name, search in result.searches.items():
        left_out = f", {search.unstable} unstable left out" if search.unstable else ""
        table = Table(title=f"{name}: int8 search, {len(search.trials)} candidates in {search.seconds:.0f} s; budget "
                            f"{result.bundle.source.get('max_drop_pt')} pt on {search.judged} selection images"
                            f"{' held out of training' if search.selection_from == 'holdout' else ' (training images)'}"
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
