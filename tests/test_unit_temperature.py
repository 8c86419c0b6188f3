"""Fast unit tier: temperature scaling (edgeclf.temperature) on scores whose right temperature is known.

Labels are drawn from a calibrated model's own softmax, so its scores mean what they say; multiplying its
logits by 3 makes an over-confident copy whose right temperature is 3."""
from __future__ import annotations

import numpy as np
import pytest

from edgeclf import temperature


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def calibrated():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (4000, 5))
    z[np.arange(4000), rng.integers(0, 5, 4000)] += 2.0
    p = _softmax(z)
    labels = np.array([rng.choice(5, p=row) for row in p])
    return z, labels


def test_an_over_confident_model_gets_its_temperature_back_and_a_lower_calibration_error(calibrated):
    z, labels = calibrated
    honest = _softmax(z)
    over = _softmax(3 * z)
    assert temperature.ece(honest, labels) < 0.03  # drawn from its own scores: calibrated
    assert temperature.ece(over, labels) > 0.15
    t = temperature.fit(over, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    scaled = temperature.scale(over, t)
    np.testing.assert_allclose(scaled, honest, atol=0.05)
    assert (scaled.argmax(1) == over.argmax(1)).all()  # no answer changes
    assert temperature.cross_fitted_ece(over, labels) < 0.03
    cal = temperature.calibrate(over, labels, "validation")
    assert cal["ece_after"] < cal["ece_before"] / 4 and cal["nll_after"] < cal["nll_before"]
    assert temperature.fit(honest, labels) == pytest.approx(1.0, abs=0.1)


def test_an_under_confident_model_is_sharpened(calibrated):
    z, labels = calibrated
    under = _softmax(z / 2)
    assert temperature.fit(under, labels) == pytest.approx(0.5, rel=0.1)


def test_scaling_works_from_probabilities_alone_even_when_some_round_to_zero():
    z = np.array([[0.0, 50.0, -60.0], [3.0, 1.0, 0.0]])
    p = _softmax(z).astype(np.float32)  # exp(-110) is 0 in float32
    out = temperature.scale(p, 2.0)
    assert np.isfinite(out).all() and np.allclose(out.sum(1), 1)
    np.testing.assert_allclose(out[1], _softmax(z[1:] / 2)[0], rtol=1e-5)
    assert out[0].argmax() == 1


def test_the_calibration_error_of_known_bins():
    probs = np.array([[0.9, 0.1]] * 10)
    labels = np.array([0] * 6 + [1] * 4)  # 90 % sure, 60 % right
    assert temperature.ece(probs, labels) == pytest.approx(0.3)
    assert temperature.ece(np.zeros((0, 2)), np.zeros(0, int)) == 0.0
