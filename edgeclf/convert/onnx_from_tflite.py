"""An int8 TFLite model as an int8 ONNX model: how ``--qat`` reaches ONNX Runtime.

Quantization-aware training (:mod:`edgeclf.convert.qat`) ends in an int8 TFLite file whose scales were
learned. ONNX Runtime's quantizer cannot use them (it calibrates a float graph), so the QAT model is
carried over as it is: tf2onnx's TFLite front end writes every int8 tensor as QuantizeLinear /
DequantizeLinear pairs with the TFLite scales and zero points. Three rewrites then make it an ONNX model
like the others, numerically the same:

* float input ``image`` (pixels 0..255) and float probabilities out, as every edgeclf ONNX model: a
  QuantizeLinear at the input with the TFLite input's own scale and zero point (exact: pixels are
  integers), and the output taken before the Q/DQ pairs that re-quantize the softmax;
* a Clip (ReLU6) feeding only QuantizeLinear nodes whose range already lies inside the clip is dropped:
  saturation does the clipping, and without it ONNX Runtime fuses DequantizeLinear -> Conv ->
  QuantizeLinear into one int8 kernel (on MobileNetV2 0.35 at 96 px the unfused graph ran 0.74 ms
  against 0.35 ms);
* activations move from int8 to uint8 (zero point + 128, same scale: the same real values): ONNX Runtime's
  x86 kernels run uint8 activations with int8 weights (U8S8) much faster than int8 with int8 (S8S8 took
  2.4x U8S8 on MobileNetV2 224 here). Weights stay int8.

The export verifies the result like any other ONNX artifact; the rewrites are kept only when the rewritten
graph predicts the same as tf2onnx's on the calibration images.
"""
from __future__ import annotations

import contextlib
import io as _io
import tempfile
from pathlib import Path

import numpy as np

from edgeclf.contract import TensorSpec
from edgeclf.errors import EdgeclfError, first_line
from edgeclf.log import get_logger

log = get_logger(__name__)

INPUT_NAME = "image"
Q, DQ = "QuantizeLinear", "DequantizeLinear"
_LAYOUT_OPS = {"Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten"}


def convert(tflite_bytes: bytes, input_spec: TensorSpec, opset: int,
            check_images: np.ndarray | None = None) -> tuple[object, str]:
    """``onnx.ModelProto`` of an int8 TFLite model, float image in and float probabilities out, and its
    activation type (``uint8``, or ``int8`` when the rewrite changed a prediction on ``check_images``)."""
    import tf2onnx

    with tempfile.TemporaryDirectory(prefix="edgeclf-tflite2onnx-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(tflite_bytes)
        try:
            with contextlib.redirect_stdout(_io.StringIO()):
                proto, _ = tf2onnx.convert.from_tflite(str(path), opset=opset)
        except Exception as exc:
            first = first_line(exc)
            raise EdgeclfError(f"the int8 TFLite model cannot be converted to ONNX (tf2onnx, opset {opset}): "
                               f"{first}") from exc
    float_io(proto, input_spec)
    raw = proto.SerializeToString()
    drop_redundant_clips(proto)
    activations_to_uint8(proto)
    if check_images is not None and len(check_images):
        import onnx

        before, after = (predict(p, check_images) for p in (onnx.load_from_string(raw), proto))
        if not np.array_equal(before.argmax(1), after.argmax(1)) or np.abs(before - after).max() > 0.05:
            log.warning("the U8S8 rewrite of the converted int8 model changed its predictions "
                        "(max |dp| %.3f): kept tf2onnx's graph", float(np.abs(before - after).max()))
            return onnx.load_from_string(raw), "int8"
    return proto, "uint8"


def predict(proto, images: np.ndarray) -> np.ndarray:
    """Probabilities of ``proto`` on uint8 images through ONNX Runtime (default session options)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: images[k:k + 16].astype(np.float32)})[0]
                           for k in range(0, len(images), 16)])


def _initializers(graph) -> dict:
    return {t.name: t for t in graph.initializer}


def _producers(graph) -> dict:
    return {o: n for n in graph.node for o in n.output}


def _prune(graph) -> None:
    """Remove nodes none of whose outputs is used (repeatedly) and initializers nothing reads."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(t)


def float_io(proto, input_spec: TensorSpec) -> None:
    """Input ``image`` float32 (N, H, W, 3) pixels; output the float probabilities (N, C)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    # output: back through the Q/DQ nodes that re-quantize the probabilities
    out = graph.output[0]
    producers = _producers(graph)
    name = out.name
    while name in producers and producers[name].op_type in (Q, DQ):
        name = producers[name].input[0]
    dims = [d.dim_value or d.dim_param or None for d in out.type.tensor_type.shape.dim]
    graph.output.remove(out)
    graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    # input: float pixels, quantized exactly as the TFLite input was
    inp = graph.input[0]
    dims = [d.dim_value or d.dim_param or None for d in inp.type.tensor_type.shape.dim]
    old = inp.name
    graph.input.remove(inp)
    graph.input.insert(0, helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, dims))
    if inp.type.tensor_type.elem_type == TensorProto.FLOAT:
        for n in graph.node:
            n.input[:] = [INPUT_NAME if i == old else i for i in n.input]
    else:
        dtype = {TensorProto.UINT8: np.uint8, TensorProto.INT8: np.int8}.get(inp.type.tensor_type.elem_type)
        if dtype is None or input_spec.scale is None:
            raise EdgeclfError(f"the int8 TFLite model's input is {input_spec.dtype} without a scale: "
                               f"cannot give its ONNX form a float input")
        graph.initializer.extend([
            numpy_helper.from_array(np.array(input_spec.scale, np.float32), "image_scale"),
            numpy_helper.from_array(np.array(input_spec.zero_point or 0, dtype), "image_zero_point")])
        graph.node.insert(0, helper.make_node(Q, [INPUT_NAME, "image_scale", "image_zero_point"], [old],
                                              name="image_quantize"))
    _prune(graph)
    del graph.value_info[:]
    onnx.checker.check_model(proto)


def _const(name: str, graph, producers: dict, inits: dict) -> bool:
    """Is ``name`` a constant (an initializer, or a layout op of constants)?"""
    if name in inits:
        return True
    node = producers.get(name)
    return node is not None and node.op_type in _LAYOUT_OPS and all(
        _const(i, graph, producers, inits) for i in node.input if i)


def _scalar(inits: dict, name: str):
    from onnx import numpy_helper

    if name not in inits:
        return None
    a = numpy_helper.to_array(inits[name])
    return a.item() if a.size == 1 else None


def drop_redundant_clips(proto) -> int:
    """Remove Clip nodes that feed only QuantizeLinear nodes whose range lies within the clip."""
    graph = proto.graph
    inits = _initializers(graph)
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    dropped = 0
    for clip in [n for n in graph.node if n.op_type == "Clip"]:
        users = consumers.get(clip.output[0], [])
        if not users or clip.output[0] in outputs or any(u.op_type != Q for u in users):
            continue
        lo = _scalar(inits, clip.input[1]) if len(clip.input) > 1 and clip.input[1] else -np.inf
        hi = _scalar(inits, clip.input[2]) if len(clip.input) > 2 and clip.input[2] else np.inf
        if lo is None or hi is None:
            continue
        ok = True
        for q in users:
            scale = _scalar(inits, q.input[1])
            zp_init = inits.get(q.input[2]) if len(q.input) > 2 else None
            if scale is None or zp_init is None:
                ok = False
                break
            from onnx import numpy_helper

            zp = numpy_helper.to_array(zp_init)
            if zp.size != 1:
                ok = False
                break
            info = np.iinfo(zp.dtype)
            qlo, qhi = (info.min - int(zp)) * scale, (info.max - int(zp)) * scale
            # saturation to [qlo, qhi] already clips: the clip range must hold it (half a step's slack)
            ok = ok and lo <= qlo + scale / 2 and hi >= qhi - scale / 2
        if not ok:
            continue
        for u in users:
            u.input[:] = [clip.input[0] if i == clip.output[0] else i for i in u.input]
        graph.node.remove(clip)
        dropped += 1
    _prune(graph)
    return dropped


def activations_to_uint8(proto) -> int:
    """int8 activations -> uint8 (zero point + 128, same scale); weights (constant inputs) stay int8."""
    from onnx import numpy_helper

    graph = proto.graph
    inits = _initializers(graph)
    producers = _producers(graph)
    shifted: dict[str, str] = {}
    changed = 0
    for n in graph.node:
        if n.op_type not in (Q, DQ) or len(n.input) < 3 or n.input[2] not in inits:
            continue
        if n.op_type == DQ and _const(n.input[0], graph, producers, inits):
            continue  # a weight (or a constant): stays int8
        zp = numpy_helper.to_array(inits[n.input[2]])
        if zp.dtype != np.int8:
            continue
        name = n.input[2]
        if name not in shifted:
            shifted[name] = f"{name}_u8"
            graph.initializer.append(numpy_helper.from_array((zp.astype(np.int16) + 128).astype(np.uint8),
                                                             shifted[name]))
        n.input[2] = shifted[name]
        changed += 1
    del graph.value_info[:]
    _prune(graph)
    return changed
