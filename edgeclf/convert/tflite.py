"""TFLite formats: fp32, fp16, dynamic-range and full-integer int8, built-in ops only.

Uses ``tf.lite.TFLiteConverter.from_keras_model`` (works with Keras 3 models). Flex (SELECT_TF_OPS)
is never enabled: the pip runtimes cannot run it, so a model that needs it is an error naming the ops.
"""
from __future__ import annotations

import contextlib
import io as _io
import re

from edgeclf.contract import Artifact, TensorSpec
from edgeclf.errors import EdgeclfError

IO_TYPES = ("int8", "uint8", "float")


def convert(keras_model, precision: str, calibration=None, io: str = "int8") -> bytes:
    """The flatbuffer bytes of ``keras_model`` converted at ``precision`` (fp32|fp16|dynamic|int8)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision == "int8":
        if calibration is None or not len(calibration):
            raise EdgeclfError("int8 TFLite needs calibration images")
        if io not in IO_TYPES:
            raise EdgeclfError(f"--io {io!r}: choose one of {', '.join(IO_TYPES)}")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration.representative_dataset()
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = {"int8": tf.int8, "uint8": tf.uint8, "float": tf.float32}[io]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    elif precision != "fp32":
        raise ValueError(f"unknown TFLite precision {precision!r}")
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
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=model_bytes)

    def spec(d) -> TensorSpec:
        dtype = np.dtype(d["dtype"]).name
        scale, zp = d["quantization"]
        if dtype in ("int8", "uint8") and scale:
            return TensorSpec(dtype, float(scale), int(zp))
        return TensorSpec(dtype)

    return spec(interp.get_input_details()[0]), spec(interp.get_output_details()[0])


def export(fmt, job) -> Artifact:
    from edgeclf.convert import metadata

    calib = job.calibration() if fmt.precision == "int8" else None
    if fmt.precision == "int8" and job.options.qat:
        from edgeclf.convert import qat

        data = qat.qat_tflite(job, job.console)
    else:
        data = convert(job.keras_model(), fmt.precision, calib, io=job.options.io)
    inp, out = io_specs(data)
    artifact = Artifact(file=fmt.file, format=fmt.format, precision=fmt.precision, input=inp, output=out)
    if fmt.precision == "int8":
        artifact.extra["calibration_images"] = len(calib)
        if job.qat_info is not None:
            artifact.extra["qat"] = job.qat_info
    data = metadata.add_tflite_metadata(data, job.bundle, artifact)
    job.write_model(fmt.file, data)
    return artifact
