"""ONNX formats: fp32 through tf2onnx (NHWC input as trained), int8 through onnxruntime's quantizer.

Every int8 candidate starts from the fp32 graph after ``quant_pre_process`` (shape inference and graph
fusion: without it tf2onnx's unfused batch-norm Mul/Add quantize to chance accuracy), calibrates once per
method (MinMax, Percentile, Entropy; ranges cached with ``calibration_cache_path``, so the search's many
re-quantizations skip calibration), and is verified through ONNX Runtime with its default session
options, as any client would load it. In every candidate the classifier's last linear layer and its softmax
stay float (:func:`edgeclf.convert.onnx_quant.head_names`): a few thousand multiply-adds, and quantized they
round the scores to steps of 1/256, on which two close classes tie.

The search's ladder (:mod:`edgeclf.convert.search`), fastest expected first:

1. the three ways ONNX Runtime runs int8 on a CPU -- QDQ with uint8 activations and int8 weights (U8S8),
   QOperator U8S8, QDQ with int8 activations (S8S8) -- are built with MinMax ranges and per-channel
   weights and *timed on this machine*; their order is the measured one (on one AVX-512 VNNI machine
   QDQ U8S8 ran MobileNetV2 224 in 1.9 ms where fp32 took 4.0 ms and QDQ S8S8 4.2 ms: never assume);
2. for each format in that order: MinMax with every int32 bias corrected against float
   (:mod:`edgeclf.convert.biascorr`; same size and speed, fewer answers changed; ``--no-bias-correction``
   leaves it out), the same as ONNX Runtime left it, then 7-bit weights (``reduce_range``: ONNX Runtime's
   x86 U8S8 kernels without VNNI can saturate on 8-bit weights), Percentile and Entropy ranges, per-tensor
   weights;
3. the most sensitive tensors kept in float (``nodes_to_exclude``: the tensor's producer and consumers,
   so the tensor itself stays float and ONNX Runtime's WeightBiasQuantization pass finds no float
   Conv/Gemm between a DequantizeLinear and a QuantizeLinear to re-quantize at load time);
4. 16-bit activations (uint16) with 8-bit weights, QDQ (opset 21): ONNX Runtime's CPU provider has no
   16-bit kernels and runs it slower than fp32, so it is the last rung.

With ``--qat`` the first candidate is the quantization-aware-trained TFLite model carried over to ONNX
(:mod:`edgeclf.convert.onnx_from_tflite`); the ladder follows only if it is over budget.

``--search none`` keeps the single recipe of earlier versions: QDQ S8S8, MinMax, per-channel, the stem
convolution in float, 7- or 8-bit weights by agreement with fp32 on the calibration images. Dynamic ONNX
quantization is never offered: it broke conv nets here.
"""
from __future__ import annotations

import contextlib
import io as _io

from edgeclf.contract import Artifact, Recipe, TensorSpec
from edgeclf.convert.formats import Exported
from edgeclf.convert.onnx_quant import (CALIBRATE_METHODS, INPUT_NAME, ONNX_FORMATS, QUANTIZER,  # noqa: F401 (API)
                                        SENSITIVITY_IMAGES, Quantizer, first_conv_names, node_label,
                                        quantize_int8, quantize_int8_auto)
from edgeclf.errors import EdgeclfError, first_line
from edgeclf.log import get_logger

log = get_logger(__name__)



def convert_fp32(keras_model, height: int, width: int, opset: int = 13):
    """``onnx.ModelProto`` of ``keras_model``: input ``image`` float32 (N, H, W, 3), dynamic batch."""
    import tensorflow as tf
    import tf2onnx

    spec = [tf.TensorSpec((None, height, width, 3), tf.float32, name=INPUT_NAME)]
    try:
        with contextlib.redirect_stdout(_io.StringIO()):
            proto, _ = tf2onnx.convert.from_keras(keras_model, input_signature=spec, opset=opset)
    except Exception as exc:
        first = first_line(exc)
        raise EdgeclfError(f"ONNX conversion (tf2onnx, opset {opset}) failed: {first}") from exc
    return proto


def _set_metadata(proto, props: dict[str, str]) -> None:
    import onnx

    keep = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in props.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))


def _serialize_checked(proto) -> bytes:
    import onnx

    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise EdgeclfError(f"the ONNX model does not pass onnx.checker: {first_line(exc)}") from exc
    return proto.SerializeToString()


def _opset(proto) -> int:
    return int(max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")))


def qat_candidate(ctx) -> tuple[bytes, Recipe]:
    """``--qat``: the QAT int8 TFLite model as an ONNX model (QDQ, int8 weights; uint8 activations unless
    that rewrite changed a prediction) and its recipe."""
    from edgeclf.convert import onnx_from_tflite, qat
    from edgeclf.convert.tflite import io_specs

    def make() -> tuple[bytes, str]:
        tfl = qat.qat_tflite(ctx)
        proto, act = onnx_from_tflite.convert(tfl, io_specs(tfl)[0], max(ctx.options.opset, 13),
                                              ctx.calibration().images[:32])
        return proto.SerializeToString(), act

    data, act = ctx.cached("qat-onnx", make)
    return data, Recipe("tfmot-qat", quant_format="QDQ", calibration_images=len(ctx.calibration()), activation_type=act)


def export(fmt, ctx) -> Exported:
    import onnx

    from edgeclf.convert.int8 import make_int8
    from edgeclf.convert.metadata import onnx_metadata_props

    h, w = ctx.bundle.input.height, ctx.bundle.input.width
    fp32 = ctx.cached("onnx-fp32-proto", lambda: convert_fp32(ctx.keras_model(), h, w, ctx.options.opset))
    artifact = Artifact(file=fmt.file, format=fmt.format, precision=fmt.precision,
                        input=TensorSpec("float32"), output=TensorSpec("float32"))
    if fmt.precision == "fp32":
        proto = fp32
        artifact.extra["opset"] = ctx.options.opset
    elif fmt.precision == "int8":
        def quantizer():
            return Quantizer(fp32, ctx.calibration(), ctx.out_dir, ctx.options,
                             {layer.name for layer in ctx.keras_model().layers})

        model = make_int8(fmt, ctx, lambda: _single(ctx, fp32), quantizer, lambda: qat_candidate(ctx),
                          "the QAT TFLite model, converted")
        proto = onnx.load_from_string(model.data)
        artifact.recipe, artifact.search = model.recipe, model.search_record
        artifact.extra.update({"opset": _opset(proto), **model.extra})
    else:
        raise ValueError(f"unknown ONNX precision {fmt.precision!r}")
    _set_metadata(proto, onnx_metadata_props(ctx.bundle, artifact))
    ctx.write_model(fmt.file, _serialize_checked(proto))
    return Exported(artifact, model.search if fmt.precision == "int8" else None)


def _single(ctx, fp32) -> tuple[bytes, Recipe, dict]:
    """``--search none``: QDQ S8S8, the stem convolution in float, 7- or 8-bit weights by agreement with fp32 on
    the calibration images unless --onnx-reduce-range/--onnx-full-range says which."""
    import onnx

    calib = ctx.calibration()
    rr = ctx.options.onnx_reduce_range
    per_channel = ctx.options.onnx_per_channel is not False
    method = ctx.options.onnx_calibrate or "minmax"
    extra = {}
    if rr is None:
        proto, rr, scores = quantize_int8_auto(fp32, calib, per_channel, method, ctx.out_dir)
        extra["reduce_range_agreement_on_calibration"] = scores
    else:
        proto = quantize_int8(onnx.ModelProto.FromString(fp32.SerializeToString()), calib,
                              per_channel=per_channel, method=method, reduce_range=rr, work_dir=ctx.out_dir)
    stem = tuple(first_conv_names(proto))
    recipe = Recipe(QUANTIZER, quant_format="QDQ", calibration=method, calibration_images=len(calib),
                    weight_bits=7 if rr else 8, per_channel=per_channel, float_layers=stem)
    return proto.SerializeToString(), recipe, extra
