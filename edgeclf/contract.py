"""The export folder contract: ``edgeclf.json`` (schema 1) and ``labels.txt``.

Everything ``run`` and ``bench`` know about a model comes from here. No TensorFlow.

Every exported model takes an RGB uint8 image of ``input.height`` x ``input.width``, NHWC, as float32
0..255 for float models or as the quantized integer tensor for full-integer ones; normalisation is
inside the graph.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from edgeclf import fsutil
from edgeclf.errors import EdgeclfError

SCHEMA = 1
CONTRACT_FILE = "edgeclf.json"
LABELS_FILE = "labels.txt"
VAL_SPLIT_FILE = "val_split.json"  # the validation images export verified on, relative to the data folder
PREDICTIONS_FILE = "val_predictions.json"  # each verified model's answers on them, in the same order
FORMATS = ("tflite", "onnx")
FILE_SUFFIX = {"tflite": ".tflite", "onnx": ".onnx"}  # a model file of each format ends so
PRECISIONS = ("fp32", "fp16", "dynamic", "int8")


class ContractError(EdgeclfError):
    """An export folder or model file that does not hold to the contract."""


@dataclass(frozen=True)
class InputSpec:
    height: int
    width: int
    channels: int = 3
    color: str = "RGB"
    layout: str = "NHWC"
    range: tuple[float, float] = (0.0, 255.0)
    resize: str = "bilinear"


@dataclass(frozen=True)
class TensorSpec:
    dtype: str  # "float32", "int8", "uint8"
    scale: float | None = None
    zero_point: int | None = None


@dataclass(frozen=True)
class Recipe:
    """How an int8 model was quantized: what ``edgeclf export`` chose, recorded in ``edgeclf.json``."""

    quantizer: str = ""  # "tflite-converter" | "onnxruntime" | "tfmot-qat"
    quant_format: str | None = None  # ONNX: "QDQ" | "QOperator"
    calibration: str = "minmax"  # minmax | entropy | percentile
    calibration_images: int = 0
    weight_bits: int = 8  # 7: ONNX Runtime's reduce_range
    per_channel: bool = True
    activation_bits: int = 8  # 16: int16 activations with int8 weights
    float_layers: tuple[str, ...] = ()  # layers (TFLite tensors / ONNX nodes) kept in float
    activation_type: str = "int8"  # int8 | uint8 | int16 | uint16 (ONNX Runtime's U8S8 is uint8 activations)
    bias_correction: bool = False  # int32 biases shifted so each layer's outputs average float's
    weight_rounding: str = "nearest"  # nearest | gptq (ONNX: int8 weights rounded so their errors cancel)

    def format_label(self) -> str:
        """``QDQ U8S8``: the ONNX operator format with activation and weight signedness."""
        act = {"uint8": "U8", "int8": "S8", "uint16": "U16", "int16": "S16"}.get(self.activation_type, "?")
        return f"{self.quant_format} {act}S8" if self.quant_format else act

    def label(self) -> str:
        """One line for tables: ``QDQ U8S8 minmax/300 w8 per-channel a8, 2 float``."""
        if self.quantizer == "tfmot-qat":
            return f"{self.format_label()} QAT, a{self.activation_bits}" if self.quant_format else \
                f"QAT, a{self.activation_bits}"
        parts = [self.format_label()] if self.quant_format else []
        parts += [f"{self.calibration}/{self.calibration_images}", f"w{self.weight_bits}",
                  "per-channel" if self.per_channel else "per-tensor", f"a{self.activation_bits}"]
        text = " ".join(parts) + (f" {self.weight_rounding}-rounded" if self.weight_rounding != "nearest" else "")
        text += " bias-corrected" if self.bias_correction else ""
        return text + (f", {len(self.float_layers)} float" if self.float_layers else "")

    @classmethod
    def from_dict(cls, d: dict | None) -> "Recipe | None":
        if not d:
            return None
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "float_layers" in known:
            known["float_layers"] = tuple(known["float_layers"])
        return cls(**known)


class ArtifactExtra(TypedDict, total=False):
    """What export records per file beyond its contract fields (``Artifact.extra``); bench, the run's page and
    the sweep read these by name."""

    agreement: float  # share of validation images it answers as the float reference does
    drop_pt: float  # top-1 points lost against the float reference on validation (negative: gained)
    val_images: int  # validation images verified on
    val_lost: int  # images the float reference gets right and this file wrong
    val_gained: int  # the other way round
    mcnemar_p: float | None  # exact McNemar p of the difference
    val_changed: list  # each validation answer that differs from float's, with float's top two scores and margin
    # rank (verify.changed_answers): whether the file changed answers float was sure of or near ties
    verified_with: str  # runtime and threads, e.g. "ai_edge_litert 2.3.0, 2 threads"
    verified_on: str  # the ISA it was verified on (platform.machine()): int8 kernels differ by ISA
    export_seconds: float
    calibration_images: int
    selection_images: int  # int8: the images the search judged on
    selection_unstable: int  # of which left out: the float model's answer flips with +-2 levels of pixel noise
    selection_from: str  # "holdout" (never trained on) or "train"
    opset: int  # ONNX
    qat: dict  # --qat: how the quantization-aware fine-tuning went


class SearchTrial(TypedDict, total=False):
    """One candidate of an int8 search (``Artifact.search``), as measured on the selection images."""

    label: str
    recipe: dict  # a Recipe as a dict
    tier: int  # the ladder's rung
    outcome: str  # chosen | within budget, slower | over budget | collapsed | failed | skipped ...
    selection_top1: float
    selection_drop_pt: float
    selection_agreement: float
    selection_lost: int
    selection_gained: int
    p50_ms: float  # through the edgeclf runtime, on the exporting machine
    bytes: int
    seconds: float
    note: str


class SourceInfo(TypedDict, total=False):
    """Where an export came from (``Bundle.source``)."""

    backbone: str
    model: str  # the .keras file
    keras_val_top1: float | None
    versions: dict[str, str]  # library versions of the export
    max_drop_pt: float  # the --max-drop it was exported with
    search: str  # --search
    temperature: float  # the model's logits are divided by this in every file (1: raw scores)
    run: str  # the run folder (a run export)
    data: str  # the data folder it was validated on
    reference: dict  # the float reference: artifact, val_top1, val_images, the Keras check
    export_seconds: float
    qat: bool


@dataclass
class Artifact:
    file: str
    format: str  # one of FORMATS
    precision: str  # one of PRECISIONS
    bytes: int = 0
    sha256: str = ""
    input: TensorSpec = field(default_factory=lambda: TensorSpec("float32"))
    output: TensorSpec = field(default_factory=lambda: TensorSpec("float32"))
    val_top1: float | None = None
    extra: ArtifactExtra = field(default_factory=dict)  # type: ignore[assignment]  # e.g. agreement, drop_pt
    recipe: Recipe | None = None  # int8: how it was quantized
    search: list[SearchTrial] = field(default_factory=list)  # int8: every candidate the search tried

    @property
    def name(self) -> str:
        return f"{self.format}-{self.precision}"


@dataclass
class Bundle:
    classes: list[str]
    input: InputSpec
    artifacts: list[Artifact] = field(default_factory=list)
    source: SourceInfo = field(default_factory=dict)  # type: ignore[assignment]
    schema: int = SCHEMA
    root: Path | None = None  # the folder it was read from (not serialised)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "schema": self.schema,
            "classes": list(self.classes),
            "input": asdict(self.input),
            "source": self.source,
            "artifacts": [asdict(a) for a in self.artifacts],
        }
        d["input"]["range"] = list(self.input.range)
        return d

    def artifact(self, name_or_file: str) -> Artifact:
        for a in self.artifacts:
            if name_or_file in (a.file, a.name):
                return a
        known = ", ".join(a.name for a in self.artifacts) or "none"
        raise ContractError(f"no artifact {name_or_file!r} in the export (have: {known})")

    def path_of(self, artifact: Artifact) -> Path:
        return (self.root or Path(".")) / artifact.file

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        fsutil.write_text(folder / LABELS_FILE, "".join(f"{c}\n" for c in self.classes))
        return fsutil.write_json(folder / CONTRACT_FILE, self.to_dict())


def _tensor(d: dict | None) -> TensorSpec:
    d = d or {"dtype": "float32"}
    return TensorSpec(dtype=str(d.get("dtype", "float32")), scale=d.get("scale"), zero_point=d.get("zero_point"))


def bundle_from_dict(d: dict[str, Any], root: Path | None = None) -> Bundle:
    try:
        if int(d.get("schema", 0)) > SCHEMA:
            raise ContractError(f"edgeclf.json schema {d['schema']} is newer than this edgeclf understands ({SCHEMA}): upgrade edgeclf")
        inp = dict(d["input"])
        inp["range"] = tuple(inp.get("range", (0, 255)))
        spec = InputSpec(**{k: v for k, v in inp.items() if k in InputSpec.__dataclass_fields__})
        arts = []
        for a in d.get("artifacts", []):
            arts.append(Artifact(
                file=a["file"], format=a["format"], precision=a["precision"], bytes=int(a.get("bytes", 0)),
                sha256=a.get("sha256", ""), input=_tensor(a.get("input")), output=_tensor(a.get("output")),
                val_top1=a.get("val_top1"), extra=dict(a.get("extra", {})),
                recipe=Recipe.from_dict(a.get("recipe")), search=list(a.get("search") or []),
            ))
        classes = [str(c) for c in d["classes"]]
    except (KeyError, TypeError) as exc:
        raise ContractError(f"edgeclf.json is missing or has a malformed field: {exc}") from exc
    if not classes:
        raise ContractError("edgeclf.json lists no classes")
    return Bundle(classes=classes, input=spec, artifacts=arts, source=dict(d.get("source", {})),
                  schema=int(d.get("schema", SCHEMA)), root=root)


def load_bundle(folder: str | Path) -> Bundle:
    """Read an export folder's ``edgeclf.json`` (and check ``labels.txt`` agrees with it)."""
    folder = Path(folder)
    path = folder / CONTRACT_FILE
    if not folder.is_dir():
        raise ContractError(f"{folder}: no such export folder")
    if not path.is_file():
        raise ContractError(f"{folder}: no {CONTRACT_FILE} here; is this an `edgeclf export` folder?")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ContractError(f"{path}: unreadable ({exc})") from exc
    bundle = bundle_from_dict(d, root=folder)
    labels = folder / LABELS_FILE
    if labels.is_file():
        names = [ln for ln in labels.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if names != bundle.classes:
            raise ContractError(f"{labels} does not match the classes in {CONTRACT_FILE}")
    return bundle


# The same description, embedded in a model file (ONNX metadata_props / TFLite metadata).
METADATA_KEY = "edgeclf"


def embedded_metadata(bundle: Bundle, artifact: Artifact | None = None) -> str:
    """JSON carried inside a model file so a lone .tflite/.onnx still knows its labels and input."""
    d = {"schema": bundle.schema, "classes": bundle.classes, "input": bundle.to_dict()["input"]}
    if artifact is not None:
        d["precision"] = artifact.precision
    return json.dumps(d, ensure_ascii=False)
