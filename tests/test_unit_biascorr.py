"""Fast unit tier: the arithmetic of empirical bias correction (edgeclf.convert.biascorr) on known arrays.
No TensorFlow: the models it runs on are tested in test_export.py."""
from __future__ import annotations

import numpy as np
import pytest

from edgeclf.convert import biascorr
from edgeclf.convert.biascorr import Layer
from edgeclf.convert.search import TooSlow


def _layer(channels=3, lo=0.0, hi=6.0, axis=-1, scale=0.01):
    return Layer("conv", np.zeros(channels, np.int32), np.full(channels, scale), lo, hi, axis)


def test_channel_error_is_the_mean_shift_inside_the_range_only():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0.5, 5.5, (4, 8, 8, 3)).astype(np.float32)
    quant = ref + np.array([0.10, -0.05, 0.0], np.float32)
    # elements a ReLU6 clipped (0 or 6) in either model say nothing about the bias: they are left out
    quant[0, 0, 0, 0] = 0.0
    ref[1, 0, 0, 0] = 6.0
    quant[1, 0, 0, 0] = 6.0 + 0.10
    err = biascorr.channel_error(quant, ref, _layer())
    assert np.allclose(err, [0.10, -0.05, 0.0], atol=1e-5)


def test_channel_error_reads_the_channel_axis_and_skips_channels_seen_too_rarely():
    ref = np.full((2, 3, 4, 4), 1.0, np.float32)  # NCHW
    quant = ref + np.array([0.2, -0.3, 0.0], np.float32)[None, :, None, None]
    quant[:, 2] = 0.0  # channel 2: always at the bottom of its range in the quantized model
    err = biascorr.channel_error(quant, ref, _layer(axis=1))
    assert np.allclose(err, [0.2, -0.3, 0.0], atol=1e-6)


def test_correct_moves_each_bias_by_the_error_over_its_scale_in_order():
    """Two layers in a chain: the second's output carries the first's error. Correcting the first, then
    measuring the second on the corrected model, leaves the second only its own error to fix."""
    ref = [np.full((2, 4, 4, 2), 2.0, np.float32), np.full((2, 4, 4, 2), 3.0, np.float32)]
    own = [np.array([0.05, -0.02]), np.array([0.01, 0.03])]
    layers = [_layer(2, scale=0.001), _layer(2, scale=0.002)]

    def quantized(k):  # the quantized model as biased so far: layer 0's error flows into layer 1
        shift0 = own[0] + layers[0].bias * 0.001
        shift = shift0 if k == 0 else shift0 + own[1] + layers[1].bias * 0.002
        return ref[k] + shift.astype(np.float32)

    record = biascorr.correct(layers, lambda k: ref[k], quantized, images=2)
    assert layers[0].bias.tolist() == [-50, 20]
    assert layers[1].bias.tolist() == [-5, -15]  # its own error only: layer 0's was corrected first
    assert record["moved"] == 2 and record["layers"] == 2
    assert np.allclose(quantized(1), ref[1], atol=1e-4)


def test_image_count_respects_memory_and_time_and_skips_when_too_few_fit():
    assert biascorr.image_count(50, 1000, 300, 0.001) == biascorr.IMAGES
    assert biascorr.image_count(50, 1000, 40, 0.001) == 40  # no more than there are
    assert biascorr.image_count(50, biascorr.MEMORY_BYTES // 20, 300, 0.001) == 20
    assert biascorr.image_count(50, 1000, 300, biascorr.SECONDS / 50 / 30) == 30  # the time budget
    with pytest.raises(TooSlow, match="bias correction"):  # a big backbone on a slow CPU: skipped, said
        biascorr.image_count(250, 1000, 300, 0.5)
