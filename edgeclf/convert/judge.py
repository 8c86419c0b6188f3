"""The search's judge: builds each int8 candidate, loads it through the edgeclf runtime (the backend ``run``
and ``bench`` use), times it, and measures it on the selection images against the float model.

:mod:`edgeclf.convert.search` walks the ladder and decides; this module only measures and says, for one
candidate, whether the selection images show it over the budget (``Judge.within``: the one budget rule,
:func:`edgeclf.stats.over_budget`, that export's verification applies to the written files too).
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from edgeclf import metrics
from edgeclf.contract import FILE_SUFFIX, Artifact, Bundle, Recipe
from edgeclf.convert import verify
from edgeclf.errors import EdgeclfError, first_line
from edgeclf.log import get_logger
from edgeclf.stats import mcnemar_exact, over_budget

log = get_logger(__name__)

LATENCY_RUNS = 30  # batch-1 invokes timed per candidate (after LATENCY_WARMUP)
LATENCY_WARMUP = 5
LATENCY_SECONDS = 0.5  # ... and at least this long in all (the int8 formats of a small model differ by 0.05 ms)
UNSTABLE_NOISE = 2  # pixel levels: a float prediction that flips under this much noise is a coin flip
UNSTABLE_DRAWS = 4
RANKING_IMAGES = 100  # the selection images where int8 and float differ most: what groups are ranked on
RANKING_SECONDS = 180  # a ranking round stops after this long (big backbones: each revert is a slow convert)
MIN_RANKED_GROUPS = 8  # ... but ranks at least this many groups

CHOSEN, WITHIN, OVER, FAILED, COLLAPSED, SKIPPED = ("chosen", "within budget", "over budget", "failed", "collapsed",
                                                   "skipped")
KL_EPS = 1e-7  # a score below this counts as this in the KL divergence (an int8 output's smallest step is 1/256)
MAX_CANDIDATE_SECONDS = 300  # a candidate whose judgement would take longer is skipped (16-bit on a big backbone)


class TooSlow(EdgeclfError):
    """A candidate too slow to judge on this machine."""


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
    selection_lost: int | None = None  # judged selection images float gets right and this candidate not
    selection_gained: int | None = None  # ... and the other way round
    selection_kl: float | None = None  # mean KL divergence of its scores from float's (nats): how far it moved
    p50_ms: float | None = None
    bytes: int = 0
    seconds: float = 0.0
    note: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("selection_top1", "selection_agreement"):
            if d[k] is not None:
                d[k] = round(d[k], 4)
        if d["selection_kl"] is not None:
            d["selection_kl"] = round(d["selection_kl"], 6)
        if d["p50_ms"] is not None:
            d["p50_ms"] = round(d["p50_ms"], 3)
        d["seconds"] = round(d["seconds"], 1)
        return d


@dataclass
class Judge:
    """Builds, loads and measures candidates on the selection images against the float reference."""

    bundle: Bundle
    artifact: Artifact  # format and precision of what is searched for (file name, IO filled per candidate)
    images: np.ndarray  # selection images, uint8 NHWC
    labels: np.ndarray
    reference_probs: np.ndarray  # the float model's probabilities on them
    budget_pt: float
    work_dir: Path
    threads: int | None = None
    stable: np.ndarray | None = None  # images the drop is judged on (see edgeclf.convert.search); None: all
    selection_from: str = "views"  # "holdout": images the run held out of training; "views": random views of training images
    measured: dict[Recipe, tuple[Trial, bytes | None]] = field(default_factory=dict)
    probs_of: dict[Recipe, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        if self.stable is None:
            self.stable = np.ones(len(self.labels), bool)
        self.reference_pred = self.reference_probs.argmax(axis=1)

    @property
    def judged(self) -> int:
        return int(self.stable.sum())

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
            probs, trial.p50_ms = self._run(data, self.images, latency=True)
        except EdgeclfError as exc:  # TooSlow too: skipped, said at the default log level
            skipped = isinstance(exc, TooSlow)
            trial.outcome, trial.note = SKIPPED if skipped else FAILED, first_line(exc)
            trial.seconds = time.perf_counter() - t0
            log.log(logging.INFO if skipped else logging.DEBUG, "  %-44s %s: %s", trial.label,
                    "skipped" if skipped else "failed", trial.note)
            self.measured[candidate.recipe] = (trial, None)
            return trial, None
        self.probs_of[candidate.recipe] = probs
        pred = probs.argmax(axis=1)
        keep = self.stable
        cmp = metrics.compare(pred[keep], self.labels[keep], self.reference_pred[keep])
        trial.selection_top1, trial.selection_drop_pt, trial.selection_agreement = cmp.top1, cmp.drop_pt, cmp.agreement
        test = mcnemar_exact(pred[keep], self.reference_pred[keep], self.labels[keep])
        trial.selection_lost, trial.selection_gained = test.only_reference_right, test.only_model_right
        trial.selection_kl = kl_divergence(self.reference_probs[keep], probs[keep])
        reason = verify.collapse_reason(pred, self.labels, len(self.bundle.classes), metrics.top1(pred, self.labels),
                                        metrics.top1(self.reference_pred, self.labels), self.bundle.classes,
                                        verify.predicted_share(self.reference_pred, len(self.bundle.classes)),
                                        images="selection images")
        if reason:
            trial.outcome, trial.note, data = COLLAPSED, reason, None
        else:
            trial.outcome = WITHIN if self.within(trial) else OVER
            if trial.outcome == WITHIN and trial.selection_drop_pt > self.budget_pt + 1e-9:
                trial.note = (f"{trial.selection_lost} lost, {trial.selection_gained} gained of {self.judged}: "
                              f"not shown to be over budget")
        trial.seconds = time.perf_counter() - t0
        log.info("  %-44s drop %+.2f pt, agreement %.1f%%, KL %.4f, p50 %.2f ms, %.2f MB, %.0f s", trial.label,
                 trial.selection_drop_pt, 100 * trial.selection_agreement, trial.selection_kl, trial.p50_ms,
                 trial.bytes / 1e6, trial.seconds)
        self.measured[candidate.recipe] = (trial, data)
        return trial, data

    def place(self, recipe: Recipe, tier: int) -> None:
        """Put a recipe measured ahead of its turn (e.g. timed to order the formats) in its speed tier."""
        if recipe in self.measured:
            self.measured[recipe][0].tier = tier

    def within(self, trial: Trial) -> bool:
        """Within budget on the selection images: the drop measured on them is at most the budget, or the
        images cannot tell it from the budget (see ``over_budget``)."""
        if trial.selection_drop_pt is None:
            return False
        if trial.selection_drop_pt <= self.budget_pt + 1e-9:
            return True
        return trial.selection_lost is not None and not over_budget(trial.selection_lost, trial.selection_gained,
                                                                    self.judged, self.budget_pt)

    def run(self, data: bytes, images: np.ndarray) -> np.ndarray:
        """Probabilities of a candidate model on ``images`` (no timing): what group ranking uses."""
        return self._run(data, images, latency=False)[0]

    def _run(self, data: bytes, images: np.ndarray, latency: bool) -> tuple[np.ndarray, float | None]:
        from edgeclf.runtime.backends import open_backend
        from edgeclf.runtime.model import ModelRef

        suffix = FILE_SUFFIX[self.artifact.format]
        with tempfile.NamedTemporaryFile(prefix=".search-", suffix=suffix, dir=self.work_dir) as fh:
            fh.write(data)
            fh.flush()
            art = Artifact(file=Path(fh.name).name, format=self.artifact.format, precision=self.artifact.precision)
            backend = open_backend(ModelRef(Path(fh.name), self.bundle, art, "search"), threads=self.threads)
            try:
                if latency:  # one image first: is the whole judgement affordable here?
                    tensor = backend.prepare(np.ascontiguousarray(images[:1]))
                    backend.infer(tensor)
                    t = time.perf_counter()
                    backend.infer(tensor)
                    estimate = (time.perf_counter() - t) * (len(images) + LATENCY_RUNS + LATENCY_WARMUP)
                    if estimate > MAX_CANDIDATE_SECONDS:
                        raise TooSlow(f"about {estimate:.0f} s to judge on this machine "
                                      f"(> {MAX_CANDIDATE_SECONDS} s): {1000 * estimate / (len(images) + 35):.0f} "
                                      f"ms per image")
                probs = np.concatenate([backend.predict(images[k:k + 32]) for k in range(0, len(images), 32)])
                if not latency:
                    return probs, None
                tensor = backend.prepare(np.ascontiguousarray(images[:1]))
                for _ in range(LATENCY_WARMUP):
                    backend.infer(tensor)
                times = []  # at least LATENCY_RUNS, and LATENCY_SECONDS in all: a 0.3 ms model is timed longer
                while len(times) < LATENCY_RUNS or (sum(times) < 1000 * LATENCY_SECONDS and len(times) < 5000):
                    t = time.perf_counter_ns()
                    backend.infer(tensor)
                    times.append((time.perf_counter_ns() - t) / 1e6)
            finally:
                backend.close()
        return probs, float(np.median(times))

    def best_measured(self, tiers: Iterable[int] | None = None) -> tuple[Trial, Recipe] | None:
        """The most accurate candidate measured so far (optionally among ``tiers``)."""
        found = [(t, r) for r, (t, d) in self.measured.items()  # collapsed ones too: fallback may repair them
                 if r in self.probs_of and (tiers is None or t.tier in tiers)]
        if not found:
            return None
        return min(found, key=lambda tr: rank_key(tr[0]))

    def ranking_images(self, recipe: Recipe) -> np.ndarray:
        """Indices of the selection images where ``recipe``'s model differs most from float."""
        err = np.abs(self.probs_of[recipe] - self.reference_probs).sum(axis=1)
        return np.argsort(-err)[:RANKING_IMAGES]

    def ranking_error(self, recipe: Recipe) -> float:
        """Mean |dp| from float of ``recipe``'s model on its ranking images (what a helpful group beats)."""
        worst = self.ranking_images(recipe)
        return float(np.abs(self.probs_of[recipe][worst] - self.reference_probs[worst]).sum(axis=1).mean())

    def rank_groups(self, groups: list[tuple[str, ...]], base: Recipe,
                    build: Callable[[tuple[str, ...]], bytes]) -> list[tuple[float, tuple[str, ...]]]:
        """NNCF's ranking: revert each group alone (``build(nodes)``) and score it on the images where
        ``base`` differs most from float; returns (score, group), best first. The score is the mean
        absolute difference of the probability vectors from float (lower: that group hurt more)."""
        worst = self.ranking_images(base)
        images, ref = self.images[worst], self.reference_probs[worst]
        baseline = self.ranking_error(base)
        scored = []
        t0 = time.perf_counter()
        for n, group in enumerate(groups):
            if n >= MIN_RANKED_GROUPS and time.perf_counter() - t0 > RANKING_SECONDS:
                log.info("  ranking stopped after %d of %d groups (%d s; groups come worst SQNR first)", n,
                         len(groups), RANKING_SECONDS)
                break
            try:
                p = self.run(build(group), images)
            except EdgeclfError as exc:
                log.debug("ranking: reverting %s failed: %s", group, first_line(exc))
                continue
            scored.append((float(np.abs(p - ref).sum(axis=1).mean()), group))
        scored.sort(key=lambda sg: sg[0])
        log.info("  ranked %d groups by reverting each alone on the %d images furthest from float in %.0f s "
                 "(mean |dp| %.4f quantized; best reverted %.4f)", len(scored), len(worst),
                 time.perf_counter() - t0, baseline, scored[0][0] if scored else baseline)
        return scored


def kl_divergence(reference: np.ndarray, probs: np.ndarray) -> float:
    """Mean KL(reference || probs) over the images, in nats: how far a candidate's scores moved from float's.
    Graded where top-1 agreement is not: it tells a faithful candidate from a worse one on images both get
    right (0: the same scores)."""
    if not len(reference):
        return 0.0
    p = np.clip(np.asarray(reference, np.float64), KL_EPS, 1.0)
    q = np.clip(np.asarray(probs, np.float64), KL_EPS, 1.0)
    return float((p * (np.log(p) - np.log(q))).sum(axis=1).mean())


def rank_key(trial: Trial) -> tuple:
    """The judge's order of candidates, most faithful first: the top-1 drop on the selection images, then the
    KL divergence from float (graded: it separates candidates the drop cannot), then the expected speed."""
    kl = trial.selection_kl if trial.selection_kl is not None else float("inf")
    return trial.selection_drop_pt, kl, -trial.selection_agreement, trial.tier


def _recipe_dict(recipe: Recipe) -> dict:
    d = asdict(recipe)
    d["float_layers"] = list(recipe.float_layers)
    return d
