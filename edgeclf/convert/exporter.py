"""``edgeclf export``: a trained Keras model -> verified TFLite/ONNX models + ``edgeclf.json``.

    result = export_model(ExportOptions(target="runs/train/exp", int8=True))
    result.exit_code   # 0 ok (warnings, if any, are printed); 3 over budget with --strict; 4 a model failed

Steps: resolve the source (run folder or .keras) -> load Keras once -> (optional QAT) -> for each
format of the table: convert (int8: the accuracy-budget search of :mod:`edgeclf.convert.search`),
embed metadata, write atomically -> verify every file through the edgeclf runtime on the validation
split -> write ``labels.txt`` and ``edgeclf.json`` last.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgeclf import fsutil
from edgeclf.config import ExportOptions
from edgeclf.contract import CONTRACT_FILE, Artifact, Bundle, InputSpec
from edgeclf.convert import verify
from edgeclf.convert.calibration import (CalibrationSet, SelectionSet, calibration_set, selection_set,
                                         split_training, stratified_sample)
from edgeclf.convert.formats import ExportFormat, select_formats
from edgeclf.convert.results import (EXIT_DROP, EXIT_FAILED, EXIT_OK, ExportResult, ExportRow,  # noqa: F401 (API)
                                     print_search, print_summary)
from edgeclf.convert.source import ExportSource, resolve_source
from edgeclf.errors import EdgeclfError, first_line
from edgeclf.log import get_logger
from edgeclf.status import Status

log = get_logger(__name__)

SELECTION_VIEWS = 2  # random views of each selection image the int8 search judges on (runs without a holdout) ...
SELECTION_VIEWS_JUDGED = 600  # ... or more views of each, up to MAX_SELECTION_VIEWS, until this many are judged
MAX_SELECTION_VIEWS = 6


def selection_views(images: int) -> int:
    """Random views judged per selection image: ``SELECTION_VIEWS``, more for a small training split (its
    selection takes half of it), so that about ``SELECTION_VIEWS_JUDGED`` views resolve half a point."""
    return max(SELECTION_VIEWS, min(MAX_SELECTION_VIEWS, -(-SELECTION_VIEWS_JUDGED // max(images, 1))))


def load_keras(path: Path):
    """The trained model, or a one-line error for a file Keras cannot read."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # zip errors, missing config, unknown layers, ...
        first = first_line(exc)
        raise EdgeclfError(f"{path}: Keras cannot load this model ({first})") from exc


@dataclass(frozen=True)
class ExportContext:
    """What the format modules get, and all they get: the loaded model, the bundle, the options, the images
    int8 learns from and is judged on, and where files go. Frozen: a format returns what it made (an
    :class:`edgeclf.convert.formats.Exported`) and writes nothing into the context. Values computed once and
    shared between formats (calibration images, the fp32 ONNX graph, the QAT model) live in its memo."""

    source: ExportSource
    options: ExportOptions
    bundle: Bundle
    out_dir: Path
    keras: object  # the loaded Keras model
    warn: Callable[[str], None]
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    def keras_model(self):
        return self.keras

    def cached(self, key: str, make: Callable[[], object]):
        """A value computed once and shared between formats (e.g. the fp32 ONNX graph that int8 quantizes)."""
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    def _training_split(self) -> tuple[list, list]:
        """(calibration, selection) samples. Selection: the run's held-out images (never trained on) when it
        has them, else training images not used for calibration."""
        def make():
            n_select = self.options.selection_images if self.options.search != "none" else 0
            held = self.source.holdout
            if held and n_select > 0:
                return (split_training(self.source.train, self.options.calib_images, 0, self.options.seed)[0],
                        stratified_sample(held, n_select, self.options.seed + 1))
            return split_training(self.source.train, self.options.calib_images, n_select, self.options.seed)

        return self.cached("training-split", make)

    @property
    def selection_from(self) -> str:
        """Where the selection images come from: ``holdout`` (the run held them out of training) or ``views``
        (random views of training images that are not calibration images)."""
        return "holdout" if self.source.holdout else "views"

    def calibration(self) -> CalibrationSet:
        if self.options.calibration is not None:  # given (tests, the Python API)
            return self.options.calibration
        inp = self.bundle.input
        return self.cached("calibration", lambda: calibration_set(self._training_split()[0], inp.height, inp.width,
                                                                  inp.resize, warn=self.warn))

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
        """The search's judge: labelled images disjoint from calibration and validation. The images the run
        held out of training when it did so; else :func:`selection_views` random views of each selected training
        image (:func:`edgeclf.convert.calibration.random_views`: a model gets every training image right, so
        an int8 copy of it agrees on them whatever its quality; on views of them it does not)."""
        samples = self._training_split()[1]
        if not samples:
            raise EdgeclfError("the int8 search needs selection images: the training split has too few "
                               "images (use --search none)")
        inp = self.bundle.input

        def make():
            chosen = selection_set(samples, inp.height, inp.width, inp.resize)
            if self.selection_from == "holdout":
                return chosen
            return chosen.views(selection_views(len(chosen)), self.options.seed)

        return self.cached("selection", make)

    def float_tflite(self) -> bytes:
        """The fp32 TFLite model (the float reference), converted once."""
        from edgeclf.convert import tflite

        return self.cached("tflite-fp32-bytes", lambda: tflite.convert(self.keras, "fp32"))

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
                wide = images.astype(np.int16)
                for _ in range(search.UNSTABLE_DRAWS):  # (small integer types: 600 views are 90 M values)
                    noise = rng.integers(-search.UNSTABLE_NOISE, search.UNSTABLE_NOISE + 1, images.shape, np.int8)
                    noisy = np.clip(wide + noise, 0, 255).astype(np.uint8)
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
                     sel.labels, probs, self.options.max_drop, self.out_dir, self.options.threads, stable,
                     self.selection_from)

    @staticmethod
    def search(judge, steps):
        """Walk ``steps`` with ``judge`` (:func:`edgeclf.convert.search.run_search`); every candidate failing is
        an error."""
        from edgeclf.convert.search import run_search

        result = run_search(judge, steps)
        if result.data is None:
            raise EdgeclfError("every int8 candidate failed: " + "; ".join(
                f"{t.label}: {t.note}" for t in result.trials))
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
    temperature = options.temperature if options.temperature is not None else (source.temperature or 1.0)
    if temperature != 1.0:
        from edgeclf.temperature import fold_into_keras

        fold_into_keras(model, temperature)  # every format is converted from this model: all carry it
        log.info("scores calibrated: logits divided by temperature %.3g (%s)", temperature,
                 "--temperature" if options.temperature is not None else "fitted by training, report.json")

    bundle = Bundle(classes=list(source.classes),
                    input=InputSpec(height=source.imgsz, width=source.imgsz, resize=source.resize),
                    source=_source_info(source, options, temperature))
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = out_dir / CONTRACT_FILE
    if stale.exists():  # a half-finished re-export must not look complete with the old contract
        stale.unlink()
    ctx = ExportContext(source, options, bundle, out_dir, model, warn)
    searches: dict = {}  # format name -> SearchResult

    rows: list[ExportRow] = []
    artifacts: list[tuple[ExportFormat, Artifact]] = []
    failures: list[str] = []
    for fmt in formats:
        log.info("exporting %s -> %s", fmt.name, fmt.file)
        t = time.perf_counter()
        try:
            exported = fmt.export(ctx)
        except EdgeclfError as exc:
            failures.append(f"{fmt.name}: {exc}")
            rows.append(ExportRow(fmt.name, fmt.file, status=Status.FAILED, note=str(exc)))
            log.error("%s failed: %s", fmt.name, exc)
            continue
        artifact = exported.artifact
        if exported.search is not None:
            searches[fmt.name] = exported.search
        path = out_dir / fmt.file
        artifact.bytes = path.stat().st_size
        artifact.sha256 = fsutil.sha256(path)
        artifact.extra["export_seconds"] = round(time.perf_counter() - t, 1)
        artifacts.append((fmt, artifact))

    val_probs: dict[str, np.ndarray] = {}
    reference = verify.verify_all(ctx, artifacts, rows, failures, warn, val_probs)
    verify.judge_budget(ctx, rows, warn, searches)

    failed = {r.name for r in rows if r.status == Status.FAILED}
    bundle.artifacts = [a for f, a in artifacts if f.name not in failed]
    bundle.source["reference"] = reference
    bundle.source["export_seconds"] = round(time.perf_counter() - t0, 1)
    if val_probs:
        from edgeclf.convert.verify import write_predictions

        val = ctx.source.val[: len(next(iter(val_probs.values())))]
        verified = {k: v for k, v in val_probs.items() if k not in failed}
        write_predictions(out_dir, val, ctx.source.info["data"], verified, bundle.classes)
    bundle.save(out_dir)
    order = [f.name for f in formats]
    return ExportResult(out_dir, bundle, sorted(rows, key=lambda r: order.index(r.name)), warnings, failures,
                        reference, options.strict, searches)


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


def _source_info(source: ExportSource, options: ExportOptions, temperature: float) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("edgeclf", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    info = {"backbone": source.backbone, "model": str(source.model_path), "keras_val_top1": source.keras_val_top1,
            "versions": versions, "max_drop_pt": options.max_drop, "search": options.search, "temperature": temperature}
    if source.run_dir is not None:
        info["run"] = str(source.run_dir)
    if "data" in source.info:
        info["data"] = source.info["data"]
    if options.qat:
        info["qat"] = True
    return info


