"""The format table: one small entry per export format. No TensorFlow.

The table drives export (which converter runs), verification (which runtime backend loads the file),
the ``--formats`` option and the messages. Adding a format is adding an entry here and its module.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from edgeclf.errors import EdgeclfError


@dataclass(frozen=True)
class Exported:
    """What a format's ``export`` returns: the artifact it wrote, and its int8 search (None when none ran)."""

    artifact: object  # edgeclf.contract.Artifact
    search: object = None  # edgeclf.convert.search.SearchResult


@dataclass(frozen=True)
class ExportFormat:
    name: str  # "tflite-int8": what --formats and messages say
    format: str  # contract format: tflite | onnx
    precision: str  # contract precision: fp32 | fp16 | dynamic | int8
    file: str  # artifact file name in the export folder
    module: str  # edgeclf.convert.<module> holds export(fmt, ctx) -> Exported (writes the file into ctx.out_dir)
    int8: bool = False  # needs --int8 (full-integer, calibrated)
    description: str = ""

    def export(self, ctx) -> Exported:
        """Write this format's file for ``ctx`` (an :class:`edgeclf.convert.exporter.ExportContext`) and
        return its :class:`edgeclf.contract.Artifact` (IO dtypes and quantization filled in) with its search."""
        mod = importlib.import_module(f"edgeclf.convert.{self.module}")
        return mod.export(self, ctx)


FORMATS: dict[str, ExportFormat] = {f.name: f for f in [
    ExportFormat("tflite-fp32", "tflite", "fp32", "model_fp32.tflite", "tflite", description="float32"),
    ExportFormat("tflite-fp16", "tflite", "fp16", "model_fp16.tflite", "tflite",
                 description="float16 weights, float32 compute: half the size, same accuracy"),
    ExportFormat("tflite-dynamic", "tflite", "dynamic", "model_dynamic.tflite", "tflite",
                 description="int8 weights, float activations (no calibration)"),
    ExportFormat("tflite-int8", "tflite", "int8", "model_int8.tflite", "tflite", int8=True,
                 description="full-integer int8, integer input/output (--io)"),
    ExportFormat("onnx-fp32", "onnx", "fp32", "model_fp32.onnx", "onnx_export", description="float32, NHWC"),
    ExportFormat("onnx-int8", "onnx", "int8", "model_int8.onnx", "onnx_export", int8=True,
                 description="static QDQ int8 (onnxruntime quantizer), per-channel weights"),
]}

SHORTHANDS = {"tflite": [n for n in FORMATS if n.startswith("tflite-")],
              "onnx": [n for n in FORMATS if n.startswith("onnx-")],
              "all": list(FORMATS)}


def select_formats(spec: str | None, int8: bool) -> list[ExportFormat]:
    """``--formats`` (comma list of names or shorthands; None: all) filtered by ``--int8``.

    Without ``--int8`` only float formats are exported; naming an int8 format without ``--int8`` is an
    error rather than a silent skip.
    """
    if not spec:
        names = list(FORMATS)
        chosen = [FORMATS[n] for n in names if int8 or not FORMATS[n].int8]
        return chosen
    names: list[str] = []
    for raw in spec.split(","):
        token = raw.strip().lower()
        if not token:
            continue
        if token in SHORTHANDS:
            expanded = [n for n in SHORTHANDS[token] if int8 or not FORMATS[n].int8]
        elif token in FORMATS:
            if FORMATS[token].int8 and not int8:
                raise EdgeclfError(f"--formats {token} needs --int8 (it is calibrated on training images)")
            expanded = [token]
        else:
            raise EdgeclfError(f"unknown format {token!r} in --formats; choose from: "
                               f"{', '.join(list(FORMATS) + list(SHORTHANDS))}")
        names += [n for n in expanded if n not in names]
    if not names:
        raise EdgeclfError(f"--formats {spec!r} selects nothing")
    # table order, whatever order the user typed
    return [f for n, f in FORMATS.items() if n in names]
