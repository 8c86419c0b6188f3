"""The int8 accuracy budget: find, for one artifact, the fastest quantization within ``--max-drop``.

A format module (TFLite, ONNX) gives a *quantizer* (:class:`Quantizer`: its recipe families in expected
speed order, how to quantize a recipe with chosen nodes kept in float, its node groups, its 16-bit recipe)
and one generic *ladder* (:func:`ladder`) walks it for every format, from the fastest expected candidate to
the slowest -- recipes first (calibration method and size, per-channel, 7- or 8-bit weights, the ONNX
operator format), then the same model with its most sensitive layers kept in float in growing groups,
then 16-bit activations. Each candidate is built, loaded through the edgeclf runtime (the backend
``run`` and ``bench`` use) and judged by :class:`edgeclf.convert.judge.Judge` on the *selection* images:
random views (:func:`edgeclf.convert.calibration.random_views`) of up to ``--selection-images`` training images
that are not calibration images, two of each (more for a small training split:
:func:`edgeclf.convert.exporter.selection_views`), or, for a run trained with ``--holdout``, the images it
held out. Training images as they are would not do: a model fine-tuned until it gets every one right agrees
with any int8 copy of itself on them. Views of them it has not seen, and an int8 copy changes about as many of
their answers as of new photos (``benchmarks/results/judge_study.md``). The validation split is never looked at
here, so the figure export reports on it afterwards is not the one the search tuned on.

Every recipe is tried with its int8 biases corrected against float first (:mod:`edgeclf.convert.biascorr`: same
size and speed, a third to a sixth as many answers changed on MobileNetV2) -- for ONNX then also with its weights
GPTQ-rounded (:mod:`edgeclf.convert.rounding`) -- then as the quantizer left it. A candidate is *within budget*
when the selection images do not show it to be over: its drop on them is at most ``--max-drop``, or above it by
less than they can resolve (``over_budget``: a one-sided 95 % paired test; on 600 views one view is 0.17 pt, so a
candidate three views down is not shown to lose more than half a point, while a broken recipe tens of views down
is). Without that, the search would rank candidates on one or two images' luck and walk past a faithful candidate
to a worse one (measured: on flowers, a bias-corrected model two held-out images down was passed over for 7-bit
weights that then changed three times as many validation answers). The first candidate within budget wins.
Candidates are also scored by a graded measure, the mean KL divergence of their scores from float's, which tells a
faithful candidate from a worse one where both give the same answers: among candidates of the same expected speed
both within budget the closer to float wins (then the smaller), and when none is within budget the most accurate,
then the closest to float, is kept and export warns. Every candidate tried is recorded (``Trial``) in
``edgeclf.json``.

Selection images on which the float model itself is unstable -- its top-1 class changes when the
pixels move by +-2 levels -- are left out of the judgement: whatever any quantized model predicts for
them is a coin flip (their flips go either way, so leaving them out removes noise, not bias), and on a
small data set one such image is more than the whole budget (hymenoptera: 1 of its 24 held-out images = 4.2 pt).

Which layers to keep in float is decided as OpenVINO NNCF's accuracy-aware quantization does it: each
group (an activation tensor with the node that produces it and the nodes that consume it, so the whole
tensor stays float) is reverted alone, and scored on the selection images where the quantized model
differs most from float; groups are then kept in float in that order, 1, 2, 4, 8 at a time.

The approach follows OpenVINO NNCF's accuracy-aware quantization (rank quantized layers by how much
they alone hurt, revert the worst to float, re-validate, stop at the budget) and Intel Neural
Compressor's tuning order (recipes, then op-wise fallback ranked by impact, then cumulative fallback).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator, Protocol

from edgeclf.contract import Recipe
# the judge's names, for callers of the search (its candidates, trials, outcomes and the budget rule)
from edgeclf.convert.judge import (CHOSEN, COLLAPSED, FAILED, LATENCY_RUNS, OVER, SKIPPED, UNSTABLE_DRAWS,  # noqa: F401
                                   UNSTABLE_NOISE, WITHIN, Candidate, Judge, TooSlow, Trial, kl_divergence, rank_key)
from edgeclf.log import get_logger
from edgeclf.stats import mcnemar_exact, over_budget  # noqa: F401 (API)

log = get_logger(__name__)

MAX_RANKED_GROUPS = 64  # more groups than this (big backbones): the 64 with the worst SQNR are ranked
RERANKED_GROUPS = 24  # later rounds re-rank the best of the previous round's order
FALLBACK_GROUPS = 8  # at most this many groups are kept in float
FALLBACK_ROUNDS = 3  # rank, revert the helpful ones (1, 2, 4 ... at a time), re-rank the rest
FALLBACK_TIER = 100  # float-fallback candidates: FALLBACK_TIER + groups kept in float
WIDE_TIER = 1000  # 16-bit activations: the last rung


@dataclass
class Family:
    """Recipes of one expected speed: tried bias-corrected first (``corrected``, when bias correction is on),
    then as the quantizer leaves them (``recipes``, in order)."""

    tier: int  # expected speed rank of the family (lower: faster); recipes as the quantizer leaves them: tier + 1
    recipes: list[Recipe]
    corrected: list[Recipe] = field(default_factory=list)  # which of them are worth correcting (each costs a pass)


class Quantizer(Protocol):
    """How one format quantizes: what the generic ladder (:func:`ladder`) needs of it. TFLite's is
    :class:`edgeclf.convert.tflite.TFLiteQuantizer`, ONNX's :class:`edgeclf.convert.onnx_quant.Quantizer`."""

    wide_note: str  # what the 16-bit rung costs on this format

    def families(self, judge: Judge) -> list[Family]:
        """The recipe families, fastest expected first (a quantizer may time candidates with ``judge`` to
        know their order; the judge keeps what it measured)."""

    def quantize(self, recipe: Recipe, float_nodes: tuple[str, ...] = ()) -> bytes:
        """The model file for ``recipe`` with ``float_nodes`` kept in float (bias-corrected when the recipe
        says so; 16-bit activations when ``recipe.activation_bits`` is 16)."""

    def groups(self, recipe: Recipe) -> list[tuple[str, ...]]:
        """Node groups that can be kept in float (an activation tensor's producer and consumers), in a prior
        order, worst first (the SQNR of each tensor against its own int8 round trip)."""

    def layer_label(self, node: str) -> str:
        """The Keras layer a node computes (what a recipe's ``float_layers`` records)."""

    def wide_recipe(self) -> Recipe:
        """The 16-bit-activation recipe."""


def ladder(quantizer: Quantizer, judge: Judge, bias_correction: bool = True) -> Iterator[Candidate]:
    """The candidates of any format, fastest expected first (see the module docstring):

    1. each family's recipes, bias-corrected first, then as the quantizer leaves them;
    2. float fallback from the most accurate uncorrected recipe of the fastest family (:func:`fallback`);
    3. 16-bit activations.
    """
    plain = 1 if bias_correction else 0  # the tier offset of recipes as the quantizer leaves them
    families = quantizer.families(judge)
    for fam in families:  # recipes measured ahead of their turn take their family's tier now
        for recipe in fam.recipes:
            judge.place(recipe, fam.tier + plain)
    for fam in families:
        if bias_correction:
            for recipe in fam.corrected:
                fixed = replace(recipe, bias_correction=True)
                yield Candidate(fixed, lambda r=fixed: quantizer.quantize(r), tier=fam.tier)
        for recipe in fam.recipes:
            yield Candidate(recipe, lambda r=recipe: quantizer.quantize(r), tier=fam.tier + plain)
    best = judge.best_measured(tiers=[families[0].tier + plain]) if families else None
    if best is not None:
        base = best[1]

        def recipe_for(chosen):
            return replace(base, float_layers=tuple(dict.fromkeys(
                quantizer.layer_label(node) for g in chosen for node in g)))

        for c in fallback(judge, base, quantizer.groups(base), lambda nodes: quantizer.quantize(base, nodes),
                          recipe_for):
            c.tier += FALLBACK_TIER
            yield c
    wide = quantizer.wide_recipe()
    yield Candidate(wide, lambda: quantizer.quantize(wide), tier=WIDE_TIER, note=quantizer.wide_note)


@dataclass
class SearchResult:
    data: bytes | None  # the chosen model file (None: every candidate failed)
    recipe: Recipe | None
    trials: list[Trial]
    within_budget: bool
    chosen: Trial | None = None
    seconds: float = 0.0
    judged: int = 0  # selection images the drop was measured on
    unstable: int = 0  # selection images left out (the float model's own top-1 flips under pixel noise)
    selection_from: str = "views"  # "holdout": images the run held out of training; "views": random views of training images

    def selection_record(self) -> dict:
        """What ``edgeclf.json`` says of the images this search judged on."""
        return {"selection_images": self.judged, "selection_unstable": self.unstable,
                "selection_from": self.selection_from}


def fallback(judge: Judge, base: Recipe, groups: list[tuple[str, ...]], build: Callable[[tuple[str, ...]], bytes],
             recipe_for: Callable[[list[tuple[str, ...]]], Recipe]) -> Iterator[Candidate]:
    """Float-fallback candidates for ``base``, NNCF's way: rank ``groups`` (already in a prior order,
    e.g. worst SQNR first) by reverting each alone, keep the helpful ones in float 1, 2, 4 ... at a
    time, then re-rank the rest against the best so far (a group that only matters once another is
    reverted -- the outlier behind a collapsed layer -- shows up then), for at most
    ``FALLBACK_ROUNDS`` rounds and ``FALLBACK_GROUPS`` groups. ``build(nodes)`` quantizes with those
    nodes in float; ``recipe_for(groups)`` is the recipe that records them."""
    kept: list[tuple[str, ...]] = []
    current = base
    remaining = list(groups[:MAX_RANKED_GROUPS])

    def nodes_of(gs):
        return tuple(dict.fromkeys(node for g in gs for node in g))

    for _ in range(FALLBACK_ROUNDS):
        if len(kept) >= FALLBACK_GROUPS or not remaining or current not in judge.probs_of:
            return
        baseline = judge.ranking_error(current)
        ranked = judge.rank_groups(remaining, current, lambda g: build(nodes_of(kept + [g])))
        helpful = [g for score, g in ranked if score < baseline]
        if not helpful:
            return
        last = None
        for k in doubling(min(FALLBACK_GROUPS - len(kept), len(helpful))):
            chosen = kept + helpful[:k]
            recipe = recipe_for(chosen)
            yield Candidate(recipe, lambda nodes=nodes_of(chosen): build(nodes), tier=len(chosen),
                            note=f"{len(chosen)} group(s) in float")
            last = (k, recipe)
        kept += helpful[:last[0]]
        current = last[1]
        order = [g for _, g in ranked]
        remaining = [g for g in order if g not in kept][:RERANKED_GROUPS]


def run_search(judge: Judge, ladder: Iterable[Candidate]) -> SearchResult:
    """Walk ``ladder`` until a candidate is within budget; see the module docstring.

    The trace lists every candidate the judge measured, in the order measured (a ladder may measure
    some ahead of judging them, e.g. to order formats by speed)."""
    t0 = time.perf_counter()
    for candidate in ladder:
        trial, data = judge.measure(candidate)
        if data is None or not judge.within(trial):
            continue
        # a candidate of the same expected speed measured before and also within budget: the more faithful
        # (lower KL divergence from float), then the smaller
        same_tier = [(t, d) for t, d in judge.measured.values()
                     if d is not None and t.tier == trial.tier and judge.within(t)]
        chosen, data = min(same_tier, key=lambda td: (_graded(td[0]), td[0].bytes))  # min keeps the first on a tie
        return _finish(judge, chosen, data, True, t0)
    usable = [(t, d) for t, d in judge.measured.values() if d is not None]
    if not usable:
        return SearchResult(None, None, [t for t, _ in judge.measured.values()], False, None, time.perf_counter() - t0,
                            judge.judged, len(judge.labels) - judge.judged, judge.selection_from)
    best = usable[0]
    for t, d in usable[1:]:
        if _better(t, best[0]):
            best = (t, d)
    return _finish(judge, best[0], best[1], False, t0)


def _better(a: Trial, b: Trial) -> bool:
    """More accurate on selection (then: closer to float's scores, agrees more with float, expected faster)."""
    return rank_key(a) < rank_key(b)


def _graded(t: Trial) -> float:
    """The KL divergence rounded to 3 significant digits: two candidates that far apart are told apart, two
    equal to the noise of the kernels are not (the smaller file then wins)."""
    return float(f"{t.selection_kl:.3g}") if t.selection_kl is not None else float("inf")


def _finish(judge: Judge, chosen: Trial, data: bytes, within: bool, t0: float) -> SearchResult:
    trials = [t for t, _ in judge.measured.values()]
    for t in trials:
        if t is chosen:
            t.outcome = CHOSEN if within else "kept (best, over budget)"
        elif t.outcome == WITHIN:  # not taken: expected slower, or as fast but larger, or not bias-corrected
            same = dict(t.recipe, bias_correction=chosen.recipe.get("bias_correction")) == chosen.recipe
            t.outcome = "within budget, " + ("not bias-corrected" if same else "slower" if t.tier != chosen.tier
                                             else "less faithful" if _graded(t) > _graded(chosen) else "larger")
    recipe = Recipe.from_dict(chosen.recipe)
    return SearchResult(data, recipe, trials, within, chosen, time.perf_counter() - t0, judge.judged,
                        len(judge.labels) - judge.judged, judge.selection_from)


def doubling(n: int, start: int = 1) -> Iterator[int]:
    """1, 2, 4, ... up to and including ``n`` (the float-fallback group sizes)."""
    k = start
    while k < n:
        yield k
        k *= 2
    if n >= start:
        yield n
