"""One int8 path for every format: what ``--search`` and ``--qat`` mean is decided here once, and a format
module only says how it makes its single recipe, its quantizer and its QAT model.

- ``--search none``: the format's single recipe (with ``--qat``: the quantization-aware-trained model);
- otherwise the search (:mod:`edgeclf.convert.search`) walks the generic ladder over the format's quantizer,
  the QAT model first when ``--qat`` asked for it (the ladder follows only if it is over budget).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

from edgeclf.contract import Recipe
from edgeclf.log import get_logger

log = get_logger(__name__)


@dataclass
class Int8Model:
    """The int8 file a format writes, how it was made, every candidate tried, and what to record about it."""

    data: bytes
    recipe: Recipe
    trials: list = field(default_factory=list)  # search.Trial, in the order measured
    extra: dict = field(default_factory=dict)  # for Artifact.extra
    search: object = None  # the search.SearchResult (None: --search none)

    @property
    def search_record(self) -> list[dict]:
        """``Artifact.search``: every candidate tried."""
        return [t.to_dict() for t in self.trials]


def make_int8(fmt, ctx, single: Callable[[], tuple[bytes, Recipe, dict]], quantizer: Callable[[], object],
              qat: Callable[[], tuple[bytes, Recipe]], qat_note: str) -> Int8Model:
    """``single()``: the format's one recipe (data, recipe, extra); ``quantizer()``: its
    :class:`edgeclf.convert.search.Quantizer` (made only when the search runs; closed after it when it has a
    ``close``); ``qat()``: the QAT model and its recipe (trained once per export, shared by the formats)."""
    from edgeclf.convert.search import Candidate, ladder

    opts = ctx.options
    if opts.search == "none":
        if opts.qat:
            data, recipe = qat()
            model = Int8Model(data, recipe)
        else:
            data, recipe, extra = single()
            model = Int8Model(data, recipe, extra=extra)
    else:
        log.info("searching the fastest %s within %.2f pt on %d selection images", fmt.name, opts.max_drop,
                 len(ctx.selection()))
        judge = ctx.judge(fmt)
        q = quantizer()
        try:
            steps = ladder(q, judge, opts.bias_correction)
            if opts.qat:  # what the user asked for comes first
                data, recipe = qat()
                steps = itertools.chain([Candidate(recipe, lambda d=data: d, tier=0, note=qat_note)], steps)
            result = ctx.search(judge, steps)
        finally:
            if hasattr(q, "close"):
                q.close()
        model = Int8Model(result.data, result.recipe, list(result.trials), dict(result.selection_record()), result)
    model.extra["calibration_images"] = model.recipe.calibration_images
    if model.recipe.quantizer == "tfmot-qat":
        from edgeclf.convert.qat import qat_model

        model.extra["qat"] = qat_model(ctx)[1]  # trained once, cached
    return model
