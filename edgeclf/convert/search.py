"""The int8 accuracy budget: find, for one artifact, the fastest quantization within ``--max-drop``.

A format module (TFLite, ONNX) describes its *ladder*: candidates from the fastest expected to the
slowest -- recipes first (calibration method and size, per-channel, 7- or 8-bit weights, the ONNX
operator format), then the same model with its most sensitive layers kept in float in growing groups,
then 16-bit activations. Each candidate is built, loaded through the edgeclf runtime (the backend
``run`` and ``bench`` use), and judged on the *selection* images: labelled training images that were
not used for calibration. The validation split is never looked at here, so the figure export reports
on it afterwards is not the one the search tuned on.

The first candidate within budget wins; among candidates of the same expected speed that were both
measured, the smaller wins. When none is within budget the most accurate is kept and export warns.
Every candidate tried is recorded (``Trial``) in ``edgeclf.json``.

The approach follows OpenVINO NNCF's accuracy-aware quantization (rank quantized layers by how much
they alone hurt, revert the worst to float, re-validate, stop at the budget) and Intel Neural
Compressor's tuning order (recipes, then op-wise fallback ranked by impact, then cumulative fallback).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from edgeclf import metrics
from edgeclf.contract import Artifact, Bundle, Recipe
from edgeclf.convert import verify
from edgeclf.errors import EdgeclfError
from edgeclf.log import get_logger

log = get_logger(__name__)

LATENCY_RUNS = 30  # batch-1 invokes timed per candidate (after LATENCY_WARMUP)
LATENCY_WARMUP = 5

CHOSEN, OVER, FAILED, COLLAPSED, SKIPPED = "chosen", "over budget", "failed", "collapsed", "not needed"


@dataclass
class Candidate:
    """One way to quantize: its recipe, how to build it, and where it sits in the speed order."""

    recipe: Recipe
    build: Callable[[], bytes]  # the model file, ready to load
    tier: int = 0  # expected speed rank: lower is faster (same tier: same expected speed)
    note: str = ""


@dataclass
class Trial:
    """One candidate, measured: a row of the search table and of ``edgeclf.json``'s ``search``."""

    label: str
    recipe: dict
    tier: int
    outcome: str = ""
    selection_top1: float | None = None
    selection_drop_pt: float | None = None
    selection_agreement: float | None = None
    p50_ms: float | None = None
    bytes: int = 0
    seconds: float = 0.0
    note: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("selection_top1", "selection_agreement"):
            if d[k] is not None:
                d[k] = round(d[k], 4)
        if d["p50_ms"] is not None:
            d["p50_ms"] = round(d["p50_ms"], 3)
        d["seconds"] = round(d["seconds"], 1)
        return d


@dataclass
class SearchResult:
    data: bytes | None  # the chosen model file (None: every candidate failed)
    recipe: Recipe | None
    trials: list[Trial]
    within_budget: bool
    chosen: Trial | None = None
    seconds: float = 0.0


@dataclass
class Judge:
    """Builds, loads and measures candidates on the selection images against the float reference."""

    bundle: Bundle
    artifact: Artifact  # format and precision of what is searched for (file name, IO filled per candidate)
    images: np.ndarray  # selection images, uint8 NHWC
    labels: np.ndarray
    reference_pred: np.ndarray  # the float model's predictions on them
    budget_pt: float
    work_dir: Path
    threads: int | None = None
    measured: dict[Recipe, tuple[Trial, bytes | None]] = field(default_factory=dict)

    def measure(self, candidate: Candidate) -> tuple[Trial, bytes | None]:
        """Build and measure ``candidate`` (once: a recipe measured before is not built again)."""
        if candidate.recipe in self.measured:
            return self.measured[candidate.recipe]
        trial = Trial(candidate.recipe.label(), _recipe_dict(candidate.recipe), candidate.tier, note=candidate.note)
        t0 = time.perf_counter()
        data = None
        try:
            data = candidate.build()
            trial.bytes = len(data)
            probs, trial.p50_ms = self._run(data)
        except EdgeclfError as exc:
            trial.outcome, trial.note = FAILED, _first_line(exc)
            trial.seconds = time.perf_counter() - t0
            log.debug("search: %s failed: %s", trial.label, trial.note)
            self.measured[candidate.recipe] = (trial, None)
            return trial, None
        pred = probs.argmax(axis=1)
        cmp = metrics.compare(pred, self.labels, self.reference_pred)
        trial.selection_top1, trial.selection_drop_pt, trial.selection_agreement = cmp.top1, cmp.drop_pt, cmp.agreement
        reason = verify.collapse_reason(pred, self.labels, len(self.bundle.classes), cmp.top1,
                                        metrics.top1(self.reference_pred, self.labels), self.bundle.classes,
                                        verify.predicted_share(self.reference_pred, len(self.bundle.classes)))
        if reason:
            trial.outcome, trial.note, data = COLLAPSED, reason, None
        else:
            trial.outcome = CHOSEN if self.within(trial) else OVER
        trial.seconds = time.perf_counter() - t0
        log.info("  %-44s drop %+.2f pt, agreement %.1f%%, p50 %.2f ms, %.2f MB, %.0f s", trial.label,
                 trial.selection_drop_pt, 100 * trial.selection_agreement, trial.p50_ms, trial.bytes / 1e6,
                 trial.seconds)
        self.measured[candidate.recipe] = (trial, data)
        return trial, data

    def within(self, trial: Trial) -> bool:
        return trial.selection_drop_pt is not None and trial.selection_drop_pt <= self.budget_pt + 1e-9

    def _run(self, data: bytes) -> tuple[np.ndarray, float]:
        from edgeclf.runtime.backends import open_backend
        from edgeclf.runtime.model import ModelRef

        suffix = ".tflite" if self.artifact.format == "tflite" else ".onnx"
        with tempfile.NamedTemporaryFile(prefix=".search-", suffix=suffix, dir=self.work_dir) as fh:
            fh.write(data)
            fh.flush()
            art = Artifact(file=Path(fh.name).name, format=self.artifact.format, precision=self.artifact.precision)
            backend = open_backend(ModelRef(Path(fh.name), self.bundle, art, "search"), threads=self.threads)
            try:
                probs = np.concatenate([backend.predict(self.images[k:k + 32]) for k in range(0, len(self.images), 32)])
                tensor = backend.prepare(np.ascontiguousarray(self.images[:1]))
                for _ in range(LATENCY_WARMUP):
                    backend.infer(tensor)
                times = []
                for _ in range(LATENCY_RUNS):
                    t = time.perf_counter_ns()
                    backend.infer(tensor)
                    times.append((time.perf_counter_ns() - t) / 1e6)
            finally:
                backend.close()
        return probs, float(np.median(times))


def run_search(judge: Judge, ladder: Iterable[Candidate]) -> SearchResult:
    """Walk ``ladder`` until a candidate is within budget; see the module docstring."""
    t0 = time.perf_counter()
    trials: list[Trial] = []
    best: tuple[Trial, bytes] | None = None
    for candidate in ladder:
        trial, data = judge.measure(candidate)
        if not any(t is trial for t in trials):
            trials.append(trial)
        if data is None:
            continue
        if best is None or _better(trial, best[0]):
            best = (trial, data)
        if judge.within(trial):
            # a candidate of the same expected speed measured before and also within budget: the smaller
            same_tier = [(t, d) for t, d in judge.measured.values()
                         if d is not None and t.tier == trial.tier and judge.within(t)]
            chosen, data = min(same_tier, key=lambda td: td[0].bytes)  # min keeps the first on a tie
            return _finish(trials, chosen, data, True, t0)
    if best is None:
        return SearchResult(None, None, trials, False, None, time.perf_counter() - t0)
    return _finish(trials, best[0], best[1], False, t0)


def _better(a: Trial, b: Trial) -> bool:
    """More accurate on selection (then: agrees more with float, then faster)."""
    return (a.selection_drop_pt, -a.selection_agreement, a.p50_ms) < (b.selection_drop_pt, -b.selection_agreement,
                                                                     b.p50_ms)


def _finish(trials: list[Trial], chosen: Trial, data: bytes, within: bool, t0: float) -> SearchResult:
    for t in trials:
        if t is chosen:
            t.outcome = CHOSEN if within else "kept (best, over budget)"
        elif t.outcome == CHOSEN:  # within budget but not taken (a smaller one of the same speed won)
            t.outcome = "within budget, larger"
    recipe = Recipe.from_dict(chosen.recipe)
    return SearchResult(data, recipe, trials, within, chosen, time.perf_counter() - t0)


def _recipe_dict(recipe: Recipe) -> dict:
    d = asdict(recipe)
    d["float_layers"] = list(recipe.float_layers)
    return d


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def doubling(n: int, start: int = 1) -> Iterator[int]:
    """1, 2, 4, ... up to and including ``n`` (the float-fallback group sizes)."""
    k = start
    while k < n:
        yield k
        k *= 2
    if n >= start:
        yield n
