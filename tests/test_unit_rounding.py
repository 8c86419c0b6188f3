"""GPTQ weight rounding (edgeclf.convert.rounding.gptq): fast checks on synthetic layers."""
from __future__ import annotations

import numpy as np

from edgeclf.convert.rounding import gptq


def _layer(seed: int, rows: int = 16, d: int = 27, m: int = 4000):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d))  # correlated inputs, as im2col patches of a feature map are
    x = rng.normal(size=(m, d)) @ mix
    w = rng.normal(size=(rows, d)) * rng.uniform(0.1, 2, size=(rows, 1))
    scale = np.abs(w).max(axis=1) / 127
    return x, w, scale


def test_gptq_rounding_makes_a_layers_output_closer_to_float_than_nearest_rounding():
    """The point of it: on the inputs the layer sees, the output error of GPTQ's levels is well below that of
    rounding each weight to its nearest level (a wrong sign or order of the update would make it worse)."""
    for seed in range(3):
        x, w, scale = _layer(seed)
        levels = gptq(w[None], scale[None], (x.T @ x)[None], -127, 127)[0]
        nearest = np.clip(np.round(w / scale[:, None]), -127, 127)
        err_gptq = np.linalg.norm(x @ (w - levels * scale[:, None]).T)
        err_nearest = np.linalg.norm(x @ (w - nearest * scale[:, None]).T)
        assert err_gptq < 0.9 * err_nearest, (seed, err_gptq, err_nearest)
        assert levels.min() >= -127 and levels.max() <= 127 and levels.dtype == np.int32
        # every weight stays within a few levels of its nearest one: the scales are not changed
        assert np.abs(levels - nearest).max() <= 4


def test_gptq_batches_independent_problems_and_tolerates_dead_inputs():
    """Depthwise layers are one problem per channel; an input channel that is always zero (a ReLU that never
    fires) leaves a singular Hessian, which must not break the factorisation."""
    x1, w1, s1 = _layer(1, rows=1, d=9)
    x2, w2, s2 = _layer(2, rows=1, d=9)
    x2[:, 4] = 0  # a dead input
    h = np.stack([x1.T @ x1, x2.T @ x2])
    both = gptq(np.stack([w1, w2]), np.stack([s1, s2]), h, -127, 127)
    assert np.array_equal(both[0], gptq(w1[None], s1[None], h[:1], -127, 127)[0])
    assert np.isfinite(both).all() and np.array_equal(both[1, 0, 4], np.clip(np.round(w2[0, 4] / s2[0]), -127, 127))
