"""`edgeclf export`: parse options, call edgeclf.convert.exporter.export_model, print its tables, exit."""
from __future__ import annotations

import sys

import click

from edgeclf.config import IO_TYPES, ONNX_CALIBRATE_METHODS, SEARCH_MODES, ExportOptions, default

FORMAT_HELP = ("Comma list of formats: tflite-fp32, tflite-fp16, tflite-dynamic, tflite-int8, onnx-fp32, "
               "onnx-int8, or the shorthands tflite, onnx, all. Default: all (the int8 ones only with --int8).")


@click.command("export")
@click.argument("source", metavar="RUN_DIR_OR_MODEL", type=click.Path(path_type=str))
@click.option("--out", type=click.Path(path_type=str), default=None,
              help="Export folder. Default: RUN_DIR/export (or export/ beside a bare .keras).")
@click.option("--formats", default=None, help=FORMAT_HELP)
@click.option("--int8", is_flag=True, help="Also export full-integer int8 models (calibrated on training images).")
@click.option("--io", type=click.Choice(IO_TYPES), default=default(ExportOptions, "io"), show_default=True,
              help="Input/output of the int8 TFLite model. uint8: camera pixels go in as they are (scale 1, zero "
                   "point 0), what MediaPipe Tasks' ImageClassifier accepts.")
@click.option("--max-drop", type=float, default=default(ExportOptions, "max_drop"), show_default=True,
              help="Accuracy budget, in points of top-1 against the float model. int8 models are searched for "
                   "the fastest recipe within it; any model over it is a warning (exit 3 with --strict).")
@click.option("--search", type=click.Choice(SEARCH_MODES), default=default(ExportOptions, "search"), show_default=True,
              help="auto: for each int8 model, try recipes from the fastest expected to the slowest (calibration, "
                   "per-channel, 7/8-bit weights, ONNX QDQ/QOperator), then the most sensitive layers in float, "
                   "then 16-bit activations, until one is within --max-drop. none: one fixed recipe.")
@click.option("--bias-correction/--no-bias-correction", default=default(ExportOptions, "bias_correction"),
              show_default=True,
              help="The search shifts each int8 layer's bias so its outputs average float's on calibration images "
                   "(NNCF's and AIMET's post-training step): same file size and speed, fewer answers changed.")
@click.option("--strict", is_flag=True, help="Exit 3 when a model is over --max-drop (default: warn, exit 0).")
@click.option("--temperature", type=float, default=None,
              help="Divide the model's logits by this in every exported file, so that its scores are calibrated "
                   "(no answer changes). Default: the temperature training fitted on the validation images "
                   "(report.json's calibration); 1 keeps the raw scores.")
@click.option("--calib-images", type=int, default=default(ExportOptions, "calib_images"), show_default=True,
              help="Calibration images, drawn stratified from the training split (warning under 100).")
@click.option("--selection-images", type=int, default=default(ExportOptions, "selection_images"), show_default=True,
              help="Training images (not calibration, not validation) whose random views the int8 search "
                   "judges on (two each, up to six when fewer than 300: about 600 in all); at most half of the "
                   "training split.")
@click.option("--qat", is_flag=True, help="Quantization-aware fine-tuning (tfmot, under tf_keras) before the "
                                          "int8 TFLite conversion; for backbones that lose too much in PTQ.")
@click.option("--qat-epochs", type=click.IntRange(0), default=default(ExportOptions, "qat_epochs"), show_default=True,
              help="QAT fine-tuning epochs.")
@click.option("--onnx-per-channel/--onnx-per-tensor", default=None,
              help="ONNX int8 weights per channel or per tensor. Default: per channel (the search may try both).")
@click.option("--onnx-reduce-range/--onnx-full-range", default=None,
              help="7-bit or 8-bit ONNX int8 weights (7-bit avoids saturation in ONNX Runtime's x86 kernels "
                   "without VNNI). Default: the search tries both.")
@click.option("--onnx-calibrate", type=click.Choice(ONNX_CALIBRATE_METHODS), default=None,
              help="ONNX Runtime calibration method. Default: the search tries each (minmax with --search none).")
@click.option("--opset", type=click.IntRange(13, 21), default=default(ExportOptions, "opset"), show_default=True,
              help="ONNX opset.")
@click.option("--data", type=click.Path(path_type=str), default=None,
              help="Photo folder (as for train). Required for a bare .keras; overrides a run's split.")
@click.option("--labels", type=click.Path(path_type=str), default=None,
              help="Bare .keras: class names, one per line, in output order (default: DATA's class folders).")
@click.option("--imgsz", type=int, default=None, help="Bare .keras: input size (default: the model's).")
@click.option("--resize", type=click.Choice(["bilinear", "area", "nearest"]), default=None,
              help="Resize method (default: the run's, else bilinear).")
@click.option("--threads", type=int, default=None, help="CPU threads for verification (default: all).")
def command(source, **opts) -> None:
    """Turn a trained model into a verified export folder: TFLite (fp32, fp16, dynamic-range, and int8
    with --int8) and ONNX (fp32, and int8 with --int8), plus labels.txt and edgeclf.json.

    RUN_DIR_OR_MODEL is a run folder of `edgeclf train` (its weights/best.keras, classes, input size and
    exact train/val split are used) or a bare .keras file (then --data is required).

    Each int8 model is searched for the fastest recipe within --max-drop, judged on random views of
    training images that are not calibration images (or on the images a run trained with --holdout
    held out), never on validation; the choice and every candidate tried are recorded in edgeclf.json.
    The temperature training fitted is folded into every file (--temperature to override).
    Every model is then loaded back through the edgeclf runtime and evaluated on the validation split
    (top-1, agreement with the float model, drop in points) before success is reported.

    \b
    Exit codes:
      0  every model exported and verified (a model over --max-drop is a warning)
      2  bad input (one-line error)
      3  with --strict: a model is over --max-drop (it is still written)
      4  a model failed: conversion error or collapse (one class for everything, or chance);
         it is left out of edgeclf.json
    """
    from edgeclf import log

    log.quiet_native_stderr()  # before TensorFlow is imported: its C++ start-up chatter
    from edgeclf.convert.exporter import export_model, print_search, print_summary

    from edgeclf.page import try_build

    result = export_model(ExportOptions(target=source, **opts))
    page = try_build(result.bundle.source.get("run"), "exports", result.out_dir)
    console = log.table_console(100)
    print_search(result, console)
    print_summary(result, console)
    if page:
        console.print(f"report: {page}", markup=False, highlight=False)
    sys.exit(result.exit_code)
