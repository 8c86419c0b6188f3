"""`edgeclf export`: parse options, call edgeclf.convert.exporter.export_model, exit with its code."""
from __future__ import annotations

import sys

import click

FORMAT_HELP = ("Comma list of formats: tflite-fp32, tflite-fp16, tflite-dynamic, tflite-int8, onnx-fp32, "
               "onnx-int8, or the shorthands tflite, onnx, all. Default: all (the int8 ones only with --int8).")


@click.command("export")
@click.argument("source", metavar="RUN_DIR_OR_MODEL", type=click.Path(path_type=str))
@click.option("--out", type=click.Path(path_type=str), default=None,
              help="Export folder. Default: RUN_DIR/export (or export/ beside a bare .keras).")
@click.option("--formats", default=None, help=FORMAT_HELP)
@click.option("--int8", is_flag=True, help="Also export full-integer int8 models (calibrated on training images).")
@click.option("--io", type=click.Choice(["int8", "uint8", "float"]), default="int8", show_default=True,
              help="Input/output type of the int8 TFLite model (uint8 is what MediaPipe Tasks accepts).")
@click.option("--calib-images", type=int, default=300, show_default=True,
              help="Calibration images, drawn stratified from the training split (warning under 100).")
@click.option("--max-drop", type=float, default=1.0, show_default=True,
              help="Accuracy drop (points vs the float model) above which an artifact is flagged (exit 3).")
@click.option("--qat", is_flag=True, help="Quantization-aware fine-tuning (tfmot, under tf_keras) before the "
                                          "int8 TFLite conversion; for backbones that lose too much in PTQ.")
@click.option("--qat-epochs", type=click.IntRange(0), default=2, show_default=True, help="QAT fine-tuning epochs.")
@click.option("--onnx-per-channel/--onnx-per-tensor", default=True, show_default=True,
              help="Quantize ONNX int8 weights per channel (default) or per tensor.")
@click.option("--onnx-reduce-range/--onnx-full-range", default=None,
              help="7-bit or 8-bit ONNX int8 weights (7-bit avoids saturation in ONNX Runtime's x86 kernels "
                   "without VNNI). Default: build both, keep the one closer to fp32 on the calibration images.")
@click.option("--onnx-calibrate", type=click.Choice(["minmax", "percentile", "entropy"]), default="minmax",
              show_default=True, help="ONNX Runtime calibration method for onnx-int8.")
@click.option("--opset", type=click.IntRange(13, 17), default=13, show_default=True, help="ONNX opset.")
@click.option("--data", type=click.Path(path_type=str), default=None,
              help="Photo folder (as for train). Required for a bare .keras; overrides a run's split.")
@click.option("--labels", type=click.Path(path_type=str), default=None,
              help="Bare .keras: class names, one per line, in output order (default: DATA's class folders).")
@click.option("--imgsz", type=int, default=None, help="Bare .keras: input size (default: the model's).")
@click.option("--resize", type=click.Choice(["bilinear", "area", "nearest"]), default=None,
              help="Resize method (default: the run's, else bilinear).")
@click.option("--threads", type=int, default=None, help="CPU threads for verification (default: all).")
def command(source, out, formats, int8, io, calib_images, max_drop, qat, qat_epochs, onnx_per_channel, onnx_reduce_range,
            onnx_calibrate, opset, data, labels, imgsz, resize, threads) -> None:
    """Turn a trained model into a verified export folder: TFLite (fp32, fp16, dynamic-range, and int8
    with --int8) and ONNX (fp32, and static QDQ int8 with --int8), plus labels.txt and edgeclf.json.

    RUN_DIR_OR_MODEL is a run folder of `edgeclf train` (its weights/best.keras, classes, input size and
    exact train/val split are used) or a bare .keras file (then --data is required).

    Every model is loaded back through the edgeclf runtime and evaluated on the validation split
    (top-1, agreement with the float model, drop in points) before success is reported.

    \b
    Exit codes:
      0  every model exported and verified
      2  bad input (one-line error)
      3  exported, but a model lost more than --max-drop points (warning names the fix)
      4  a model failed: conversion error or collapse (one class for everything, or chance);
         it is left out of edgeclf.json
    """
    from edgeclf import log

    log.quiet_native_stderr()  # before TensorFlow is imported: its C++ start-up chatter
    from edgeclf.convert.exporter import ExportOptions, export_model

    result = export_model(ExportOptions(
        target=source, out=out, formats=formats, int8=int8, io=io, calib_images=calib_images, max_drop=max_drop,
        qat=qat, qat_epochs=qat_epochs, data=data, labels=labels, imgsz=imgsz, resize=resize,
        onnx_per_channel=onnx_per_channel, onnx_reduce_range=onnx_reduce_range, onnx_calibrate=onnx_calibrate,
        opset=opset, threads=threads))
    sys.exit(result.exit_code)
