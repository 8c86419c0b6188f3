"""TFLite formats: fp32, fp16, dynamic-range and full-integer int8, built-in ops only.

Uses ``tf.lite.TFLiteConverter.from_keras_model`` (works with Keras 3 models). Flex (SELECT_TF_OPS) is
never enabled: the pip runtimes cannot run it, so a model that needs it is an error naming the ops.

int8 is searched for the fastest model within the accuracy budget (:mod:`edgeclf.convert.search`). The
converter calibrates once (``_experimental_calibrate_only``: the float model with the ranges measured on
the calibration images) and ``mlir_quantize`` -- what ``tf.lite.experimental.QuantizationDebugger`` does
inside -- quantizes that calibrated model as many times as the search needs: all int8, or with chosen
nodes left in float (``denylisted_nodes``: the full, ``;``-joined names of the nodes' output tensors in
the calibrated model; an unknown name is silently ignored by the converter, so names are always taken
from the calibrated model itself). The ladder, fastest expected first:

1. all int8, per-channel weights, MinMax ranges on ``--calib-images`` (the converter has no other method),
   with every int32 bias corrected against float (:mod:`edgeclf.convert.biascorr`; ``--no-bias-correction``
   leaves it out); then the same on a calibration set twice as large (more of the training split, never
   the selection images);
2. the same two as the converter leaves them (no bias correction);
3. the most sensitive tensors kept in float, 1, 2, 4, 8 groups. A group is an activation tensor with the
   node that produces it and the nodes that consume it (a float producer with a quantized consumer would
   requantize the same range). Groups are ranked as NNCF does (:mod:`edgeclf.convert.search`): each is
   reverted alone and scored on the selection images furthest from float. The signal-to-quantization-
   noise ratio of each tensor's float activations against their own int8 round trip only orders them
   before that (and picks which 64 are ranked on big backbones);
4. 16-bit activations with 8-bit weights (``EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8``):
   float input and output (the mode takes no 8-bit IO); LiteRT runs it with reference kernels, measured
   about 70x slower than int8, so it is the last rung before giving up.

Per-tensor weights are not a rung: on MobileNetV2 they lost 20 points where per-channel lost none.
"""
from __future__ import annotations

import contextlib
import io as _io
import re
from dataclasses import replace
import numpy as np

from edgeclf.contract import Artifact, Recipe, TensorSpec
from edgeclf.convert.formats import Exported
from edgeclf.errors import EdgeclfError
from edgeclf.log import get_logger

log = get_logger(__name__)

QUANTIZER = "tflite-converter"
SENSITIVITY_IMAGES = 32  # calibration images the per-tensor SQNR (the groups' order before ranking) uses
CALIBRATION_GROWTH = 2  # the second rung calibrates on this many times more images


def _tf():
    import tensorflow as tf

    return tf


def _io_dtype(io: str):
    tf = _tf()
    return {"int8": tf.int8, "uint8": tf.uint8, "float": tf.float32}[io]


def _converter(keras_model):
    tf = _tf()
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter


def _run_converter(converter, precision: str) -> bytes:
    try:
        with contextlib.redirect_stdout(_io.StringIO()):  # Keras prints the traced signature
            data = converter.convert()
    except Exception as exc:  # the converter raises ConverterError/ValueError with long MLIR dumps
        text = str(exc)
        flex = sorted(set(re.findall(r"tf\.([A-Za-z0-9_]+)", text)))
        if "Flex" in text or "Select TensorFlow op" in text or "TF Select" in text:
            raise EdgeclfError(f"the model needs TensorFlow ops that TFLite has no built-in kernel for "
                               f"({', '.join(flex) or 'see the converter log'}); Flex ops do not run in the pip "
                               f"runtimes, so this model cannot be exported to TFLite ({precision})") from exc
        first = next((ln for ln in text.splitlines() if ln.strip()), type(exc).__name__)
        raise EdgeclfError(f"TFLite conversion ({precision}) failed: {first}") from exc
    custom = flex_ops(data)
    if custom:
        raise EdgeclfError(f"the TFLite model would need non-built-in ops ({', '.join(custom)}); refusing to "
                           f"write a model the pip runtimes cannot run")
    return bytes(data)


def convert(keras_model, precision: str, calibration=None, io: str = "uint8") -> bytes:
    """The flatbuffer bytes of ``keras_model`` converted at ``precision`` (fp32|fp16|dynamic|int8).

    int8 here is the converter's single recipe (``--search none``); the search quantizes through
    :func:`calibrate` and :func:`quantize` instead.
    """
    tf = _tf()
    converter = _converter(keras_model)
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision == "int8":
        if calibration is None or not len(calibration):
            raise EdgeclfError("int8 TFLite needs calibration images")
        converter = _calibrating_converter(keras_model, calibration, tf.lite.OpsSet.TFLITE_BUILTINS_INT8)
        converter.inference_input_type = converter.inference_output_type = _io_dtype(io)
    elif precision != "fp32":
        raise ValueError(f"unknown TFLite precision {precision!r}")
    return _run_converter(converter, precision)


def _calibrating_converter(keras_model, calibration, ops):
    """A converter that quantizes with ranges measured on ``calibration``, to the op set ``ops``."""
    tf = _tf()
    converter = _converter(keras_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = calibration.representative_dataset()
    converter.target_spec.supported_ops = [ops]
    return converter


def calibrate(keras_model, calibration) -> bytes:
    """The float model with activation ranges measured on ``calibration`` (not quantized yet)."""
    converter = _calibrating_converter(keras_model, calibration, _tf().lite.OpsSet.TFLITE_BUILTINS_INT8)
    converter._experimental_calibrate_only = True
    return _run_converter(converter, "int8 calibration")


def quantize(calibrated: bytes, io: str, float_nodes: tuple[str, ...] = ()) -> bytes:
    """Full-integer int8 from a calibrated model, ``float_nodes`` kept in float; input/output ``io``."""
    from tensorflow.lite.python import convert as tfl_convert

    dtype = _io_dtype(io)
    try:
        with contextlib.redirect_stdout(_io.StringIO()):
            data = tfl_convert.mlir_quantize(calibrated, disable_per_channel=False, fully_quantize=False,
                                             input_data_type=dtype, output_data_type=dtype,
                                             denylisted_nodes=list(float_nodes) or None)
    except Exception as exc:
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise EdgeclfError(f"TFLite int8 quantization failed: {first}") from exc
    return bytes(data)


def convert_16x8(keras_model, calibration) -> bytes:
    """16-bit activations, 8-bit weights, float input and output (the mode takes no 8-bit IO)."""
    ops = _tf().lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
    return _run_converter(_calibrating_converter(keras_model, calibration, ops), "int16x8")


def flex_ops(model_bytes: bytes) -> list[str]:
    """Names of custom (incl. Flex) operators in a TFLite flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(model_bytes, 0)
    names = []
    for i in range(model.OperatorCodesLength()):
        op = model.OperatorCodes(i)
        code = max(op.BuiltinCode(), op.DeprecatedBuiltinCode())
        if code == schema.BuiltinOperator.CUSTOM:
            names.append((op.CustomCode() or b"?").decode())
    return names


def io_specs(model_bytes: bytes) -> tuple[TensorSpec, TensorSpec]:
    """Input and output dtype and quantization parameters, read back with the LiteRT interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_bytes)

    def spec(d) -> TensorSpec:
        dtype = np.dtype(d["dtype"]).name
        scale, zp = d["quantization"]
        if dtype in ("int8", "uint8", "int16") and scale:
            return TensorSpec(dtype, float(scale), int(zp))
        return TensorSpec(dtype)

    return spec(interp.get_input_details()[0]), spec(interp.get_output_details()[0])


# ---------------------------------------------------------------- sensitivity: which tensors int8 hurts most

def _graph(model_bytes: bytes, preserve: bool = False):
    from ai_edge_litert.interpreter import Interpreter

    import warnings

    with warnings.catch_warnings():  # "preserve_all_tensors is for debugging": that is what it is for here
        warnings.simplefilter("ignore", UserWarning)
        interp = Interpreter(model_content=model_bytes, experimental_preserve_all_tensors=preserve, num_threads=1)
    interp.allocate_tensors()
    tensors = {d["index"]: d for d in interp.get_tensor_details()}
    ops = interp._get_ops_details()  # op name, input and output tensor indices (no public equivalent)
    return interp, tensors, ops


def sensitive_groups(calibrated: bytes, quantized: bytes, images: np.ndarray) -> list[tuple[float, tuple[str, ...]]]:
    """(SQNR dB, nodes) per activation tensor of ``quantized``, worst first.

    SQNR compares each tensor's float activations (the calibrated float model on ``images``) with their
    own int8 round trip at the scale and zero point the quantized model gave that tensor: how much
    quantizing that tensor alone loses. The nodes are the tensor's producer and consumers, named as
    ``denylisted_nodes`` wants them (output tensor names of the calibrated model).
    """
    _, q_tensors, _ = _graph(quantized)
    qparams = {}
    for d in q_tensors.values():
        scale, zp = d["quantization"]
        if np.dtype(d["dtype"]) == np.int8 and scale:
            qparams[d["name"]] = (float(scale), int(zp))
    interp, tensors, ops = _graph(calibrated, preserve=True)
    producer = {out: op for op in ops for out in op["outputs"]}
    consumers: dict[int, list] = {}
    for op in ops:
        for i in op["inputs"]:
            consumers.setdefault(i, []).append(op)
    watched = {i: qparams[d["name"]] for i, d in tensors.items()
               if d["name"] in qparams and i in producer and np.dtype(d["dtype"]) == np.float32}
    if not watched:
        return []
    signal = dict.fromkeys(watched, 0.0)
    noise = dict.fromkeys(watched, 0.0)
    inp = interp.get_input_details()[0]
    for img in images:
        interp.set_tensor(inp["index"], img[None].astype(np.float32))
        interp.invoke()
        for i, (scale, zp) in watched.items():
            a = interp.get_tensor(i).astype(np.float64)
            q = np.clip(np.round(a / scale) + zp, -128, 127)
            signal[i] += float(np.square(a).sum())
            noise[i] += float(np.square(a - (q - zp) * scale).sum())
    groups = []
    for i in watched:
        sqnr = 10 * np.log10(signal[i] / noise[i]) if noise[i] > 0 else float("inf")
        if signal[i] == 0:
            continue
        nodes = [producer[i]] + consumers.get(i, [])
        names = tuple(dict.fromkeys(tensors[op["outputs"][0]]["name"] for op in nodes if op["outputs"]))
        groups.append((float(sqnr), names))
    groups.sort(key=lambda g: g[0])
    return groups


def layer_label(node: str, layer_names: set[str]) -> str:
    """A readable name for a TFLite node: the Keras layer it computes (the conv/dense of a fused op).

    Node names look like ``model_1/block_1_project_BN_1/batchnorm/add_1;...;model_1/block_1_project_1/
    convolution``: Keras layers are the second path segment, with Keras 3's ``_N`` suffix removed.
    """
    found = []
    for part in node.split(";"):
        segs = part.split("/")
        if len(segs) >= 3:
            name = re.sub(r"_\d+$", "", segs[1])
            if name in layer_names and name not in found:
                found.append(name)
    if not found:
        return node.split(";")[0]
    plain = [n for n in found if not n.endswith(("_BN", "_relu", "_bn")) and "_bn" not in n.lower()]
    return (plain or found)[-1]


# ---------------------------------------------------------------- the search's quantizer

class TFLiteQuantizer:
    """The converter as the search's quantizer (:class:`edgeclf.convert.search.Quantizer`): calibrates once per
    calibration set and quantizes the calibrated model as often as the search asks."""

    wide_note = "16-bit activations: float input/output, reference kernels"

    def __init__(self, ctx):
        self.ctx = ctx
        self.keras_model, self.io = ctx.keras_model(), ctx.options.io
        self.calib = ctx.calibration()
        self._calibrated: dict[int, bytes] = {}
        self._layer_names = {layer.name for layer in self.keras_model.layers}

    @property
    def bigger(self):
        """``CALIBRATION_GROWTH`` times more calibration images (None: the training split has no more)."""
        return self.ctx.larger_calibration(CALIBRATION_GROWTH)  # cached by the context

    def _set(self, n: int):
        return self.bigger if self.bigger is not None and n == len(self.bigger) else self.calib

    def calibrated(self, n: int) -> bytes:
        if n not in self._calibrated:
            self._calibrated[n] = calibrate(self.keras_model, self._set(n))
        return self._calibrated[n]

    def families(self, judge):
        from edgeclf.convert.search import Family

        base = Recipe(QUANTIZER, calibration_images=len(self.calib))
        bigger = self.bigger
        recipes = [base] + ([replace(base, calibration_images=len(bigger))] if bigger is not None else [])
        return [Family(0, recipes, corrected=recipes)]

    def quantize(self, recipe: Recipe, float_nodes: tuple[str, ...] = ()) -> bytes:
        if recipe.activation_bits == 16:
            return convert_16x8(self.keras_model, self.calib)
        calibrated = self.calibrated(recipe.calibration_images)
        data = quantize(calibrated, self.io, float_nodes)
        if recipe.bias_correction:
            from edgeclf.convert import biascorr

            data = biascorr.tflite(data, calibrated, self.calib.images, self.ctx.options.threads)
        return data

    def groups(self, recipe: Recipe) -> list[tuple[str, ...]]:
        calibrated = self.calibrated(recipe.calibration_images)
        images = self._set(recipe.calibration_images).images[:SENSITIVITY_IMAGES]
        return [g for _, g in sensitive_groups(calibrated, quantize(calibrated, self.io), images)]

    def layer_label(self, node: str) -> str:
        return layer_label(node, self._layer_names)

    def wide_recipe(self) -> Recipe:
        return Recipe(QUANTIZER, calibration_images=len(self.calib), activation_bits=16)


def qat_candidate(ctx) -> tuple[bytes, Recipe]:
    """``--qat``: the quantization-aware-trained int8 model (trained once: onnx-int8 is converted from it)."""
    from edgeclf.convert import qat

    return qat.qat_tflite(ctx), Recipe("tfmot-qat", calibration_images=len(ctx.calibration()))


def export(fmt, ctx) -> Exported:
    from edgeclf.convert import metadata
    from edgeclf.convert.int8 import make_int8

    model = None
    if fmt.precision == "fp32":
        data = ctx.float_tflite()
    elif fmt.precision != "int8":
        data = convert(ctx.keras_model(), fmt.precision)
    else:
        def single():
            calib = ctx.calibration()
            return (convert(ctx.keras_model(), "int8", calib, io=ctx.options.io),
                    Recipe(QUANTIZER, calibration_images=len(calib)), {})

        model = make_int8(fmt, ctx, single, lambda: TFLiteQuantizer(ctx), lambda: qat_candidate(ctx),
                          "the QAT model")
        data = model.data
    inp, out = io_specs(data)
    artifact = Artifact(file=fmt.file, format=fmt.format, precision=fmt.precision, input=inp, output=out,
                        recipe=model.recipe if model else None, search=model.search_record if model else [])
    if model is not None:
        artifact.extra.update(model.extra)
    data = metadata.add_tflite_metadata(data, ctx.bundle, artifact)
    ctx.write_model(fmt.file, data)
    return Exported(artifact, model.search if model else None)
