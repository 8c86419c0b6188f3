"""ONNX formats: fp32 through tf2onnx (NHWC input as trained), int8 through onnxruntime's quantizer.

int8 recipe (measured on MobileNetV2 flowers; onnxruntime#11415): ``quant_pre_process`` (shape inference + graph
optimisation; without it per-channel MinMax lost 9 points), then static QDQ with MinMax calibration on
the shared calibration images, weights per channel by default. ``reduce_range`` (7-bit weights) decides
between usable and broken on x86 without VNNI, where ONNX Runtime's U8S8 kernels sum pairs of u8*s8
products in int16 and can saturate, but which way depends on the model (MobileNetV2 0.35/96 on
hymenoptera: full range 68.0 %, reduced 81.0 %, fp32 81.7 %; MobileNetV2 1.0/224 on flowers: full range
90.6 %, reduced 88.3 %, fp32 92.4 %). So by default both are built and the one that agrees better with
the fp32 ONNX model on the calibration images (training split: validation stays unseen) is kept. Dynamic ONNX quantization is never
offered: it broke conv nets here.
"""
from __future__ import annotations

import contextlib
import io as _io
import tempfile
from pathlib import Path

from edgeclf.contract import Artifact, TensorSpec
from edgeclf.errors import EdgeclfError

INPUT_NAME = "image"
CALIBRATE_METHODS = ("minmax", "percentile", "entropy")


def convert_fp32(keras_model, height: int, width: int, opset: int = 13):
    """``onnx.ModelProto`` of ``keras_model``: input ``image`` float32 (N, H, W, 3), dynamic batch."""
    import tensorflow as tf
    import tf2onnx

    spec = [tf.TensorSpec((None, height, width, 3), tf.float32, name=INPUT_NAME)]
    try:
        with contextlib.redirect_stdout(_io.StringIO()):
            proto, _ = tf2onnx.convert.from_keras(keras_model, input_signature=spec, opset=opset)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
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
        raise EdgeclfError(f"the ONNX model does not pass onnx.checker: {str(exc).splitlines()[0]}") from exc
    return proto.SerializeToString()


def first_conv_names(proto) -> list[str]:
    """The Conv nodes fed by the image without another Conv in between (the stem convolution)."""
    produced_by = {o: n for n in proto.graph.node for o in n.output}
    inputs = {i.name for i in proto.graph.input}
    found = []
    for node in proto.graph.node:
        if node.op_type != "Conv":
            continue
        stack, seen, reaches_image = list(node.input[:1]), set(), False
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in inputs:
                reaches_image = True
                continue
            src = produced_by.get(t)
            if src is None or src.op_type == "Conv":
                continue
            stack.extend(src.input)
        if reaches_image and not any(produced_by.get(t) is not None and produced_by[t].op_type == "Conv"
                                     for t in seen):
            found.append(node.name)
    return found


def quantize_int8(fp32_proto, calibration, per_channel: bool = True, method: str = "minmax",
                  reduce_range: bool = True, work_dir: Path | None = None, float_stem: bool = True):
    """Static QDQ int8 ``onnx.ModelProto`` from an fp32 one, calibrated on ``calibration``.

    ``float_stem`` keeps the first convolution (raw 0..255 pixels in, 3 channels) in float: on
    MobileNetV2 1.0/224 (flowers) that alone took 8-bit weights from -1.77 to -0.82 pt.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATE_METHODS:
        raise EdgeclfError(f"--onnx-calibrate {method!r}: choose one of {', '.join(CALIBRATE_METHODS)}")
    with tempfile.TemporaryDirectory(prefix=".onnx-quant-", dir=work_dir) as tmp:
        tmp = Path(tmp)
        fp32, pre, q = tmp / "fp32.onnx", tmp / "pre.onnx", tmp / "int8.onnx"
        onnx.save(fp32_proto, fp32)
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
        except Exception as exc:  # pre-processing is an optimisation; quantize the plain graph then
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise EdgeclfError(f"onnxruntime quant_pre_process failed ({first}); is sympy installed?") from exc
        cal = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}[method]
        exclude = first_conv_names(onnx.load(str(pre))) if float_stem else []
        try:
            quantize_static(str(pre), str(q), calibration.ort_reader(INPUT_NAME), quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=cal, nodes_to_exclude=exclude)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise EdgeclfError(f"ONNX int8 quantization failed: {first}") from exc
        return onnx.load(str(q))


def _agreement(proto, reference_pred, calibration) -> float:
    """Share of calibration images where ``proto`` (run by ONNX Runtime) agrees with ``reference_pred``."""
    import numpy as np

    return float((_predict(proto, calibration.images) == reference_pred).mean())


def _predict(proto, images):
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    out = [sess.run(None, {INPUT_NAME: images[k:k + 32].astype(np.float32)})[0] for k in range(0, len(images), 32)]
    return np.concatenate(out).argmax(axis=1)


def quantize_int8_auto(fp32_proto, calibration, per_channel: bool, method: str, work_dir: Path | None):
    """Quantize with 7-bit and with 8-bit weights; keep the one closer to fp32 on the calibration images."""
    import onnx

    ref = _predict(fp32_proto, calibration.images)
    scores = {}
    for rr in (False, True):  # on a tie the first wins: 8-bit weights (-1.8 vs -4.8 pt on flowers)
        proto = quantize_int8(onnx.ModelProto.FromString(fp32_proto.SerializeToString()), calibration,
                              per_channel=per_channel, method=method, reduce_range=rr, work_dir=work_dir)
        scores[rr] = (_agreement(proto, ref, calibration), proto)
    best = max(scores, key=lambda rr: scores[rr][0])
    return scores[best][1], best, {("reduced" if rr else "full"): round(v[0], 4) for rr, v in scores.items()}


def export(fmt, job) -> Artifact:
    from edgeclf.convert.metadata import onnx_metadata_props

    h, w = job.bundle.input.height, job.bundle.input.width
    fp32 = job.cached("onnx-fp32-proto", lambda: convert_fp32(job.keras_model(), h, w, job.options.opset))
    artifact = Artifact(file=fmt.file, format=fmt.format, precision=fmt.precision,
                        input=TensorSpec("float32"), output=TensorSpec("float32"))
    if fmt.precision == "fp32":
        proto = fp32
        artifact.extra["opset"] = job.options.opset
    elif fmt.precision == "int8":
        import onnx

        calib = job.calibration()
        rr = job.options.onnx_reduce_range
        if rr is None:
            proto, rr, scores = quantize_int8_auto(fp32, calib, job.options.onnx_per_channel,
                                                   job.options.onnx_calibrate, job.out_dir)
            artifact.extra["reduce_range_agreement_on_calibration"] = scores
        else:
            proto = quantize_int8(onnx.ModelProto.FromString(fp32.SerializeToString()), calib,
                                  per_channel=job.options.onnx_per_channel, method=job.options.onnx_calibrate,
                                  reduce_range=rr, work_dir=job.out_dir)
        artifact.extra.update({"opset": job.options.opset, "quant_format": "QDQ",
                               "per_channel": job.options.onnx_per_channel, "reduce_range": rr,
                               "calibrate": job.options.onnx_calibrate, "calibration_images": len(calib)})
    else:
        raise ValueError(f"unknown ONNX precision {fmt.precision!r}")
    _set_metadata(proto, onnx_metadata_props(job.bundle, artifact))
    job.write_model(fmt.file, _serialize_checked(proto))
    return artifact
