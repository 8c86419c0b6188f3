"""Empirical bias correction: shift each quantized layer's bias so its outputs average what float's do.

Rounding weights and activations to 8 bits leaves each convolution's outputs slightly biased per channel
(the errors do not average out: a channel whose weights all round up stays high on every image), and
the bias adds up layer after layer. Correcting it is the step after calibration in OpenVINO NNCF's
post-training quantization (``FastBiasCorrection`` / ``BiasCorrection``, on by default) and in AIMET
(``bias_correction``); neither TFLite's converter nor ONNX Runtime's quantizer does it. Here it is done
on the quantized model itself, layer by layer in execution order, so each layer is corrected for what
the layers before it still get wrong after their own correction (NNCF's sequential ``BiasCorrection``):

1. the float model's output of every layer with an integer bias is recorded on a few calibration images;
2. for each such layer in turn, the quantized model (with the layers before already corrected) runs the
   same images; per output channel, the mean of quantized minus float over the elements both saw
   *inside* the tensor's quantized range (where a clipping activation -- ReLU6 -- or saturation did not
   flatten the difference) is that channel's bias error;
3. the layer's int32 bias moves by that error over the bias scale (input scale x weight scale).

Only the int32 bias values change: the file's size, operators and speed are the same. Measured on
MobileNetV2 (``benchmarks/results/quantization.md``): the validation images on which int8 and float
disagree fell from 18 to 7 of 736 on flowers and from 4-5 to 0-1 of 153 on hymenoptera.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from edgeclf.errors import EdgeclfError, first_line
from edgeclf.log import get_logger

log = get_logger(__name__)

IMAGES = 256  # at most this many calibration images are measured on (fewer: memory and time, below)
MEMORY_BYTES = 1 << 30  # the float outputs kept for them (float16) stay under this
SECONDS = 90  # the correction of one candidate should take about this long at most
BATCH = 16  # ONNX Runtime runs the correction images this many at a time
MIN_IMAGES = 8  # fewer than this would fit: the correction is skipped (big backbones on a slow CPU)
BIAS_LIMIT = 1 << 30  # what TFLite's converter clamps int32 biases to; corrected biases stay inside it
MIN_ELEMENTS = 8  # a channel seen inside its range fewer times than this is left as it is


@dataclass
class Layer:
    """One layer with an integer bias, as the correction sees it."""

    name: str
    bias: np.ndarray  # int32 per output channel; changed in place
    bias_scale: np.ndarray  # per output channel (or one value)
    lo: float  # the measured tensor's quantized range, dequantized
    hi: float
    axis: int  # channel axis of the measured tensor (NHWC: -1; NCHW: 1)


def channel_error(quant: np.ndarray, ref: np.ndarray, layer: Layer) -> np.ndarray:
    """Per channel: mean of ``quant - ref`` over the elements strictly inside ``layer``'s range in both
    (0 for a channel seen there fewer than MIN_ELEMENTS times)."""
    q = np.moveaxis(np.asarray(quant, np.float32), layer.axis, -1)
    f = np.moveaxis(np.asarray(ref, np.float32), layer.axis, -1)
    eps = 1e-6 * max(abs(layer.lo), abs(layer.hi), 1.0)
    inside = (q > layer.lo + eps) & (q < layer.hi - eps) & (f > layer.lo + eps) & (f < layer.hi - eps)
    axes = tuple(range(q.ndim - 1))
    count = inside.sum(axis=axes)
    total = np.where(inside, q - f, 0.0).sum(axis=axes, dtype=np.float64)
    return np.where(count >= MIN_ELEMENTS, total / np.maximum(count, 1), 0.0)


def correct(layers: list[Layer], reference: Callable[[int], np.ndarray], quantized: Callable[[int], np.ndarray],
            images: int = 0) -> dict:
    """Correct ``layers`` in order. ``reference(k)`` is layer k's float output on the correction images,
    ``quantized(k)`` the current quantized model's (dequantized) on the same ``images`` images. Returns what
    was done."""
    t0 = time.perf_counter()
    moved = 0
    before = []
    for k, layer in enumerate(layers):
        err = channel_error(quantized(k), reference(k), layer)
        scale = np.broadcast_to(np.asarray(layer.bias_scale, np.float64), err.shape)
        # a channel whose weights all round to 0 gets a bias scale near 0 and its bias clamped by the
        # quantizer: no bias step moves its output, so it is left as it is
        bias = layer.bias.astype(np.int64)
        step = np.where(np.abs(bias) < BIAS_LIMIT, np.round(np.clip(err / scale, -BIAS_LIMIT, BIAS_LIMIT)), 0)
        step = step.astype(np.int64)
        if not step.any():
            continue
        layer.bias[...] = np.where(step != 0, np.clip(bias - step, -BIAS_LIMIT + 1, BIAS_LIMIT - 1), bias)
        moved += 1
        before.append(float(np.abs(err).mean()))
    seconds = time.perf_counter() - t0
    log.info("  bias correction on %d images: %d of %d layers moved (mean |channel error| %.4f) in %.0f s", images,
             moved, len(layers), float(np.mean(before)) if before else 0.0, seconds)
    return {"layers": len(layers), "moved": moved, "images": images, "seconds": round(seconds, 1)}


def image_count(layers: int, bytes_per_image: int, available: int, seconds_per_image: float,
                seconds_per_layer: float = 0.0) -> int:
    """How many correction images: IMAGES, fewer when their float outputs would pass MEMORY_BYTES or the
    correction (every layer runs the quantized model on every image) would pass SECONDS; 0 when fewer
    than MIN_IMAGES would be left: TooSlow (the search skips the candidate)."""
    fit = MEMORY_BYTES // max(1, bytes_per_image)
    left = SECONDS / max(1, layers) - seconds_per_layer
    affordable = int(left / seconds_per_image) if seconds_per_image > 0 else IMAGES
    n = int(min(IMAGES, available, fit, affordable))
    if n < min(MIN_IMAGES, available):
        from edgeclf.convert.search import TooSlow  # the search records the candidate as skipped

        raise TooSlow(f"bias correction: {layers} layers x {1000 * seconds_per_image:.0f} ms per image leave "
                      f"room for {max(n, 0)} images in {SECONDS} s (at least {MIN_IMAGES})")
    return n


# ---------------------------------------------------------------- TFLite

def tflite(quantized: bytes, calibrated: bytes, images: np.ndarray, threads: int | None = None) -> bytes:
    """The TFLite correction (:func:`_tflite`); a model it cannot handle is a one-line error (the search
    records the candidate as failed and goes on to the uncorrected one)."""
    return _guard(_tflite, quantized, calibrated, images, threads)


def _guard(fn, *args):
    try:
        return fn(*args)
    except EdgeclfError:
        raise
    except Exception as exc:  # an operator layout this code does not know: say so, do not stop the export

        raise EdgeclfError(f"bias correction failed ({type(exc).__name__}: {first_line(exc)})") from exc


def _tflite(quantized: bytes, calibrated: bytes, images: np.ndarray, threads: int | None = None) -> bytes:
    """``quantized`` (a full-integer TFLite model) with its int32 biases corrected against ``calibrated``
    (the float model with ranges the converter calibrated: same tensor names) on ``images`` (uint8 NHWC)."""
    import warnings

    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    buf = bytearray(quantized)
    model = schema.Model.GetRootAs(buf, 0)
    graph = model.Subgraphs(0)
    codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(model.OperatorCodesLength())]
    kinds = {schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D,
             schema.BuiltinOperator.FULLY_CONNECTED}
    layers, outputs = [], []
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        if codes[op.OpcodeIndex()] not in kinds or op.InputsLength() < 3 or op.Inputs(2) < 0:
            continue
        bias_t, out_t = graph.Tensors(op.Inputs(2)), graph.Tensors(op.Outputs(0))
        if bias_t.Type() != schema.TensorType.INT32 or out_t.Quantization() is None:
            continue
        q = out_t.Quantization()
        if q.ScaleLength() != 1:
            continue
        info = np.iinfo({schema.TensorType.INT8: np.int8, schema.TensorType.UINT8: np.uint8,
                         schema.TensorType.INT16: np.int16}.get(out_t.Type(), np.int8))
        scale, zp = float(q.Scale(0)), int(q.ZeroPoint(0))
        data = model.Buffers(bias_t.Buffer()).DataAsNumpy()
        if not isinstance(data, np.ndarray) or data.size == 0:
            continue
        layers.append(Layer(out_t.Name().decode(), data.view(np.int32), bias_t.Quantization().ScaleAsNumpy(),
                            (info.min - zp) * scale, (info.max - zp) * scale, -1))
        outputs.append((op.Outputs(0), scale, zp))
    if not layers:
        raise EdgeclfError("bias correction: no int32 bias in this model")

    def interpreter(data, preserve):
        with warnings.catch_warnings():  # "preserve_all_tensors is for debugging": it is what it is for here
            warnings.simplefilter("ignore", UserWarning)
            it = Interpreter(model_content=bytes(data), experimental_preserve_all_tensors=preserve,
                             num_threads=threads)
        it.allocate_tensors()
        return it

    def quantized_run(batch, k):
        """Layer k's output (dequantized) of the quantized model as corrected so far, on ``batch``."""
        idx, scale, zp = outputs[k]
        it = interpreter(buf, True)
        d = it.get_input_details()[0]
        out = []
        for img in batch:
            x = img[None]
            if d["dtype"] == np.float32:
                x = x.astype(np.float32)
            elif d["dtype"] != np.uint8:
                s, z = d["quantization"]
                x = np.clip(np.round(x / s + z), -128, 127).astype(d["dtype"])
            it.set_tensor(d["index"], x)
            it.invoke()
            out.append((it.get_tensor(idx).astype(np.float32) - zp) * scale)
        return np.concatenate(out)

    ref = interpreter(calibrated, True)
    index = {d["name"]: d["index"] for d in ref.get_tensor_details()}
    missing = [layer.name for layer in layers if layer.name not in index]
    if missing:  # the float model names its tensors differently
        raise EdgeclfError(f"bias correction: {len(missing)} quantized tensors have no float counterpart")
    shapes = {d["index"]: d["shape"] for d in ref.get_tensor_details()}
    per_image = sum(int(np.prod(shapes[index[layer.name]])) * 2 for layer in layers)
    t = time.perf_counter()
    probe = interpreter(buf, True)
    setup = time.perf_counter() - t
    d = probe.get_input_details()[0]
    probe.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    probe.invoke()  # the first invoke prepares kernels: time the second
    t = time.perf_counter()
    probe.invoke()
    n = image_count(len(layers), per_image, len(images), time.perf_counter() - t, setup)
    del probe
    images = images[:n]
    inp = ref.get_input_details()[0]
    stored = [[] for _ in layers]
    for img in images:
        ref.set_tensor(inp["index"], img[None].astype(inp["dtype"]))
        ref.invoke()
        for k, layer in enumerate(layers):
            stored[k].append(ref.get_tensor(index[layer.name]).astype(np.float16))
    del ref

    correct(layers, lambda k: np.concatenate(stored[k]).astype(np.float32), lambda k: quantized_run(images, k),
            len(images))
    return bytes(buf)


# ---------------------------------------------------------------- ONNX

def output_session(proto, outputs: list[str], threads: int | None = None):
    """An ONNX Runtime CPU session of ``proto`` that also returns the tensors ``outputs`` (the model is copied)."""
    import onnx as onnx_lib
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    probe = onnx_lib.ModelProto()
    probe.CopyFrom(proto)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx_lib.ValueInfoProto(name=t) for t in outputs if t not in known)
    return ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def onnx(quantized: bytes, float_model, images: np.ndarray, input_name: str, threads: int | None = None) -> bytes:
    """The ONNX correction (:func:`_onnx`); errors as for :func:`tflite`."""
    return _guard(_onnx, quantized, float_model, images, input_name, threads)


def _onnx(quantized: bytes, float_model, images: np.ndarray, input_name: str, threads: int | None = None) -> bytes:
    """``quantized`` (an ONNX Runtime int8 model, QDQ or QOperator) with the int32 biases of its
    convolutions and Gemms corrected against ``float_model`` (the graph it was quantized from: same tensor
    names) on ``images`` (uint8 NHWC; the models take them as float pixels)."""
    import onnx as onnx_lib
    from onnx import numpy_helper

    model = onnx_lib.load_from_string(quantized)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def const(name):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    def only(name, op_type):
        found = consumers.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None

    def qrange(scale, zp):
        if scale is None or zp is None or np.size(scale) != 1:
            return None
        info = np.iinfo(zp.dtype)
        s, z = float(np.ravel(scale)[0]), int(np.ravel(zp)[0])
        return s, z, (info.min - z) * s, (info.max - z) * s

    layers, measured = [], []  # measured: (tensor name, scale, zero point) -- scale None: already float
    float_names = set()
    for n in float_model.graph.node:
        float_names.update(n.output)
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) >= 3 and node.input[2] in producer:
            dq = producer[node.input[2]]  # QDQ: bias = DequantizeLinear(int32 initializer)
            q = only(node.output[0], "QuantizeLinear")
            back = only(q.output[0], "DequantizeLinear") if q is not None else None
            if dq.op_type != "DequantizeLinear" or back is None or dq.input[0] not in inits:
                continue
            bias_name, bias_scale = dq.input[0], const(dq.input[1])
            r = qrange(const(q.input[1]), const(q.input[2]) if len(q.input) > 2 else None)
            target, deq, ref_name = back.output[0], None, node.output[0]
        elif node.op_type in ("QLinearConv", "QGemm"):
            b = 8 if node.op_type == "QLinearConv" else 6
            ys, yz = (6, 7) if node.op_type == "QLinearConv" else (7, 8)
            if len(node.input) <= max(b, yz) or node.input[b] not in inits:
                continue
            xs, ws = const(node.input[1]), const(node.input[4])
            if xs is None or ws is None:
                continue
            bias_name, bias_scale = node.input[b], np.asarray(xs, np.float64) * np.asarray(ws, np.float64)
            r = qrange(const(node.input[ys]), const(node.input[yz]))
            target, deq = node.output[0], r
            ref_name = target[:-len("_quantized")] if target.endswith("_quantized") else target
        else:
            continue
        bias = const(bias_name)
        if r is None or bias is None or bias.dtype != np.int32 or ref_name not in float_names:
            continue
        axis = 1  # NCHW convolutions and (N, C) Gemm outputs alike
        layers.append(Layer(bias_name, bias.copy(), np.ravel(bias_scale), r[2], r[3], axis))
        measured.append((target, deq, ref_name))
    if not layers:
        raise EdgeclfError("bias correction: no int32 bias in this model")

    def session(proto, outputs):
        return output_session(proto, outputs, threads)

    refs = [m[2] for m in measured]
    sess = session(float_model, refs)
    names = [o.name for o in sess.get_outputs()]
    first = dict(zip(names, sess.run(None, {input_name: images[:1].astype(np.float32)})))
    per_image = sum(int(first[r].size) * 2 for r in refs)
    t = time.perf_counter()
    probe = session(model, [measured[0][0]])
    setup = time.perf_counter() - t
    t = time.perf_counter()
    probe.run(None, {input_name: images[:1].astype(np.float32)})
    n = image_count(len(layers), per_image, len(images), time.perf_counter() - t, setup)
    del probe
    images = images[:n]
    stored = {r: [] for r in refs}
    for k in range(0, len(images), BATCH):
        outs = dict(zip(names, sess.run(None, {input_name: images[k:k + BATCH].astype(np.float32)})))
        for r in refs:
            stored[r].append(outs[r].astype(np.float16))
    del sess

    def quantized_output(k):
        if k:  # the one bias that may have moved since the last call: the layer before
            inits[layers[k - 1].name].CopyFrom(numpy_helper.from_array(layers[k - 1].bias, layers[k - 1].name))
        target, deq, _ = measured[k]
        s = session(model, [target])
        names = [o.name for o in s.get_outputs()]
        out = []
        for i in range(0, len(images), BATCH):
            y = dict(zip(names, s.run(None, {input_name: images[i:i + BATCH].astype(np.float32)})))[target]
            out.append(y.astype(np.float32) if deq is None else (y.astype(np.float32) - deq[1]) * deq[0])
        return np.concatenate(out)

    correct(layers, lambda k: np.concatenate(stored[measured[k][2]]).astype(np.float32), quantized_output,
            len(images))
    last = layers[-1]
    inits[last.name].CopyFrom(numpy_helper.from_array(last.bias, last.name))
    return model.SerializeToString()
