"""GPTQ weight rounding for ONNX Runtime int8 models: round each convolution's int8 weights so that their
errors cancel on the inputs the layer really sees, instead of rounding each weight to its nearest level.

After bias correction (:mod:`edgeclf.convert.biascorr`) what is left of an int8 MobileNetV2's error is the
rounding of its 8-bit weights: 16-bit activations change the same answers as 8-bit ones
(``benchmarks/results/int8_floor.md``), and keeping layers in float does not lower it. GPTQ (Frantar et al.,
2022, the optimal-brain-quantization family that AdaRound also belongs to) rounds a layer's weights one input
column at a time and moves the columns not yet rounded to absorb the error, weighted by the inverse Hessian
``H = X^T X`` of the layer's inputs ``X`` (im2col patches of its input feature maps, here the float model's on
a few calibration images). Per-channel scales and zero points stay as the quantizer set them: only int8 weight
values change, so size, operators and speed are the same. A depthwise convolution has one small Hessian per
channel (its 3x3 patch); a full convolution one for all its output channels.

Neither ONNX Runtime's static quantizer nor TFLite's converter does this (ONNX Runtime's GPTQ covers 4-bit
MatMul weights only). Measured (``benchmarks/results/int8_floor.md``): the KL divergence of the bias-corrected
int8 model's scores from float's fell by about 40 % on MobileNetV2 224 (flowers, hymenoptera) and by 15 % on
MobileNetV2 0.35 at 96 px, yet validation answers changed about as often (near ties go either way). So the
search tries it second, after the plain bias-corrected recipe: a rung for a model that is over budget, not a
new default.
"""
from __future__ import annotations

import time

import numpy as np

from edgeclf.errors import EdgeclfError, first_line
from edgeclf.log import get_logger

log = get_logger(__name__)

IMAGES = 16  # calibration images whose layer inputs make the Hessians
MEMORY_BYTES = 1 << 30  # the float layer inputs kept for them stay under this
MIN_IMAGES = 2  # fewer would fit: not done (a huge backbone on a small machine)
ROWS = 30000  # input patches per layer the Hessian is estimated on (a random subset)
DAMP = 0.01  # Hessian damping: this share of its mean diagonal is added to it (GPTQ's default)


def onnx(quantized: bytes, float_model, images: np.ndarray, input_name: str, threads: int | None = None,
         seed: int = 0) -> bytes:
    """``quantized`` (an ONNX Runtime int8 model, QDQ or QOperator, per-channel weights) with the int8 weights
    of its convolutions rounded by GPTQ against ``float_model`` (the graph it was quantized from) on
    ``images`` (uint8 NHWC calibration images). Raises EdgeclfError when it cannot be done."""
    try:
        return _onnx(quantized, float_model, images, input_name, threads, seed)
    except EdgeclfError:
        raise
    except Exception as exc:  # an unexpected graph: the search goes on without this candidate
        raise EdgeclfError(f"GPTQ rounding failed: {first_line(exc)}") from exc


def gptq(weights: np.ndarray, scale: np.ndarray, hessian: np.ndarray, qmin: int, qmax: int) -> np.ndarray:
    """GPTQ over a batch of independent problems: ``weights`` (B, rows, D) float, ``scale`` (B, rows) per row,
    ``hessian`` (B, D, D). Returns the integer levels (B, rows, D), each in [qmin, qmax]."""
    w = np.array(weights, np.float64)
    d = w.shape[-1]
    h = np.array(hessian, np.float64)
    diag = np.diagonal(h, axis1=1, axis2=2)
    dead = diag <= 0  # an input that is always zero: its weights do not matter, round them plainly
    h[:, np.arange(d), np.arange(d)] += DAMP * diag.mean(axis=1, keepdims=True) + 1e-12 + dead
    upper = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)  # Cholesky of H^-1, upper triangle
    s = np.asarray(scale, np.float64)
    levels = np.zeros(w.shape, np.int32)
    for j in range(d):
        q = np.clip(np.round(w[:, :, j] / s), qmin, qmax)
        levels[:, :, j] = q
        err = (w[:, :, j] - q * s) / upper[:, j, j][:, None]
        w[:, :, j + 1:] -= err[:, :, None] * upper[:, j, j + 1:][:, None, :]
    return levels


def _patches(x: np.ndarray, attrs: dict, kernel: tuple[int, int]) -> np.ndarray:
    """im2col of NCHW ``x`` for a convolution: (N, C, out_h, out_w, kh, kw)."""
    kh, kw = kernel
    sh, sw = attrs.get("strides", [1, 1])
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise EdgeclfError("GPTQ rounding: dilated convolutions are not supported")
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) not in ("NOTSET", "VALID"):
        raise EdgeclfError(f"GPTQ rounding: auto_pad {auto_pad!r} is not supported (explicit pads are)")
    pads = attrs.get("pads", [0, 0, 0, 0])
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    return np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]


def _onnx(quantized: bytes, float_model, images: np.ndarray, input_name: str, threads: int | None,
          seed: int) -> bytes:
    import onnx as onnx_lib
    from onnx import helper, numpy_helper

    from edgeclf.convert.biascorr import output_session

    model = onnx_lib.load_from_string(quantized)
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    float_nodes = {n.name: n for n in float_model.graph.node if n.op_type == "Conv"}
    float_inits = {t.name: t for t in float_model.graph.initializer}

    layers = []  # (int8 weight initializer, its scale, the float Conv node)
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in producer:
            dq = producer[node.input[1]]  # QDQ: weight = DequantizeLinear(int8 initializer, scale, zero point)
            if dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
                continue
            weight, scale, name = dq.input[0], dq.input[1], node.name
        elif node.op_type == "QLinearConv" and len(node.input) > 4 and node.input[3] in inits:
            weight, scale = node.input[3], node.input[4]
            name = node.name[:-len("_quant")] if node.name.endswith("_quant") else node.name
        else:
            continue
        fnode = float_nodes.get(name)
        if fnode is None or fnode.input[1] not in float_inits or scale not in inits:
            continue
        layers.append((weight, scale, fnode))
    if not layers:
        raise EdgeclfError("GPTQ rounding: no int8 convolution in this model")

    wanted = list(dict.fromkeys(f.input[0] for _, _, f in layers))
    sess = output_session(float_model, wanted, threads)
    names = [o.name for o in sess.get_outputs()]
    first = dict(zip(names, sess.run(None, {input_name: images[:1].astype(np.float32)})))
    per_image = sum(first[t].nbytes for t in wanted)
    n = int(min(IMAGES, len(images), MEMORY_BYTES // max(1, per_image)))
    if n < MIN_IMAGES:
        raise EdgeclfError(f"GPTQ rounding: the layer inputs of {MIN_IMAGES} images would take more than "
                           f"{MEMORY_BYTES >> 20} MiB")
    t0 = time.perf_counter()
    acts = {t: [] for t in wanted}
    for k in range(0, n, 4):
        out = dict(zip(names, sess.run(None, {input_name: images[k:min(n, k + 4)].astype(np.float32)})))
        for t in wanted:
            acts[t].append(out[t])
    del sess
    acts = {t: np.concatenate(v) for t, v in acts.items()}

    rng = np.random.default_rng(seed)
    done = 0
    for weight, scale_name, fnode in layers:
        w = numpy_helper.to_array(float_inits[fnode.input[1]]).astype(np.float64)  # (Cout, Cin/group, kh, kw)
        old = numpy_helper.to_array(inits[weight])
        scale = numpy_helper.to_array(inits[scale_name]).astype(np.float64).reshape(-1)
        if old.shape != w.shape or old.dtype != np.int8 or scale.size != w.shape[0]:
            continue  # not per-channel int8 as expected: left as it is
        attrs = {a.name: helper.get_attribute_value(a) for a in fnode.attribute}
        group = attrs.get("group", 1)
        patches = _patches(acts[fnode.input[0]], attrs, w.shape[2:])
        batch, channels, oh, ow = patches.shape[:4]
        m = batch * oh * ow
        rows = rng.choice(m, size=min(m, ROWS), replace=False)
        cout, d = w.shape[0], int(np.prod(w.shape[1:]))
        if group == 1:
            p = patches.transpose(0, 2, 3, 1, 4, 5).reshape(m, -1)[rows].astype(np.float64)
            hessian, wb, sb = (p.T @ p)[None], w.reshape(1, cout, d), scale.reshape(1, cout)
        elif group == channels == cout and w.shape[1] == 1:  # depthwise: one problem per channel
            p = patches.transpose(1, 0, 2, 3, 4, 5).reshape(channels, m, -1)[:, rows].astype(np.float64)
            hessian, wb, sb = np.einsum("cmi,cmj->cij", p, p), w.reshape(cout, 1, d), scale.reshape(cout, 1)
        else:
            continue
        qmin = -127 if old.min() >= -127 else -128  # ONNX Runtime's symmetric weights use [-127, 127]
        levels = gptq(wb, sb, hessian, qmin, 127).reshape(w.shape).astype(np.int8)
        inits[weight].CopyFrom(numpy_helper.from_array(levels, weight))
        done += 1
    if not done:
        raise EdgeclfError("GPTQ rounding: no convolution could be rounded")
    log.debug("GPTQ rounding: %d of %d convolutions on %d images in %.1f s", done, len(layers), n,
              time.perf_counter() - t0)
    return model.SerializeToString()
