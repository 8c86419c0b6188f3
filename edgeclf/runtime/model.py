"""Which model file to run, and what it expects: an export folder, or a lone .tflite/.onnx.

A lone file carries its own description (:data:`edgeclf.contract.METADATA_KEY`):

* ONNX: the JSON string in ``metadata_props`` under key ``edgeclf``;
* TFLite: the same JSON in the model's metadata buffer named ``edgeclf``; failing that, the labels file
  in the zip appended to the .tflite (how TFLite metadata carries associated files), with the input
  size read from the model's input tensor.

ONNX metadata is read by ONNX Runtime (``InferenceSession.get_modelmeta().custom_metadata_map``) when
it is installed. A device may run ONNX models through OpenCV DNN alone, with neither onnxruntime nor the
onnx package: only there a few lines of protobuf walking read ``metadata_props``. TFLite metadata is read
by walking the flatbuffer with the standard library: neither ai-edge-litert's interpreter nor
tflite_runtime exposes model metadata, and the generated schema module is not part of tflite_runtime.
"""
from __future__ import annotations

import io
import json
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgeclf.contract import (CONTRACT_FILE, FILE_SUFFIX, METADATA_KEY, Artifact, Bundle, ContractError, InputSpec,
                              bundle_from_dict, load_bundle)
from edgeclf.errors import EdgeclfError, first_line

MODEL_SUFFIXES = {suffix: fmt for fmt, suffix in FILE_SUFFIX.items()}
# The artifact `edgeclf run` picks when none is asked for: small and fast first, then exact.
ARTIFACT_PREFERENCE = ("tflite-int8", "tflite-fp16", "tflite-fp32", "tflite-dynamic", "onnx-fp32", "onnx-int8",
                       "onnx-fp16", "onnx-dynamic")


class ModelNotFound(EdgeclfError):
    """No model where the user pointed."""


class ModelLoadError(EdgeclfError):
    """A model file that exists but cannot be read or run."""


@dataclass
class ModelRef:
    """One model file and the contract that describes it."""

    path: Path
    bundle: Bundle
    artifact: Artifact
    origin: str  # "export folder", "edgeclf metadata", "TFLite labels zip"

    @property
    def format(self) -> str:
        return self.artifact.format

    @property
    def classes(self) -> list[str]:
        return self.bundle.classes

    @property
    def name(self) -> str:
        return self.artifact.name

    @classmethod
    def from_bundle(cls, bundle: Bundle, artifact: Artifact | str) -> "ModelRef":
        art = bundle.artifact(artifact) if isinstance(artifact, str) else artifact
        return cls(path=bundle.path_of(art), bundle=bundle, artifact=art, origin="export folder")


def resolve_model(model: str | Path | ModelRef, artifact: str | None = None,
                  formats: tuple[str, ...] | None = None) -> ModelRef:
    """Find the model file to run.

    ``model`` is an export folder (``edgeclf.json`` inside) or a single .tflite/.onnx file. In a folder,
    ``artifact`` (a name such as ``tflite-int8`` or a file name) chooses one; otherwise the first of
    :data:`ARTIFACT_PREFERENCE` whose format is in ``formats`` (the formats an installed backend runs).
    """
    if isinstance(model, ModelRef):
        return model
    path = Path(model)
    if not path.exists():
        raise ModelNotFound(f"{path}: no such model file or export folder")
    if path.is_dir():
        if not (path / CONTRACT_FILE).is_file():
            lone = sorted(p.name for p in path.iterdir() if p.suffix.lower() in MODEL_SUFFIXES)
            hint = f" (it holds {', '.join(lone)}: pass one of them)" if lone else ""
            raise ModelNotFound(f"{path}: not an export folder, no {CONTRACT_FILE}{hint}")
        bundle = load_bundle(path)
        if not bundle.artifacts:
            raise ContractError(f"{path / CONTRACT_FILE} lists no artifacts")
        art = bundle.artifact(artifact) if artifact else _pick(bundle, formats)
        file = bundle.path_of(art)
        if not file.is_file():
            raise ModelNotFound(f"{file}: listed in {CONTRACT_FILE} as {art.name} but missing")
        if art.bytes and file.stat().st_size != art.bytes:
            raise ModelLoadError(f"{file}: {file.stat().st_size} bytes, {CONTRACT_FILE} says {art.bytes}: "
                                 "the file was truncated or replaced; copy the export folder again")
        return ModelRef(path=file, bundle=bundle, artifact=art, origin="export folder")
    fmt = MODEL_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ModelNotFound(f"{path}: not a model; expected an export folder, a .tflite or an .onnx file")
    if artifact:
        raise EdgeclfError("--artifact chooses a model inside an export folder; this is a single file")
    return _lone_file(path, fmt)


def _pick(bundle: Bundle, formats: tuple[str, ...] | None) -> Artifact:
    usable = [a for a in bundle.artifacts if formats is None or a.format in formats]
    if not usable:
        have = ", ".join(a.name for a in bundle.artifacts)
        raise ModelLoadError(f"no artifact this backend can run (have: {have}); install the runtime for them "
                             "or choose another --backend")
    rank = {name: i for i, name in enumerate(ARTIFACT_PREFERENCE)}
    return min(usable, key=lambda a: rank.get(a.name, len(rank)))


def _lone_file(path: Path, fmt: str) -> ModelRef:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    art = Artifact(file=path.name, format=fmt, precision="unknown", bytes=len(data))
    if fmt == "onnx":
        props = onnx_metadata_props(data, path)
        if props is None:
            props = onnx_metadata_props_without_onnxruntime(data, path)
        text = props.get(METADATA_KEY)
        if text is None:
            raise ContractError(f"{path}: no '{METADATA_KEY}' entry in its ONNX metadata_props, so its labels and "
                                "input size are unknown; run the export folder instead")
        return ModelRef(path, _bundle_from_json(text, path, art), art, "edgeclf metadata")
    meta = tflite_metadata(data, path)
    if METADATA_KEY in meta:
        return ModelRef(path, _bundle_from_json(meta[METADATA_KEY].decode("utf-8", "replace"), path, art), art,
                        "edgeclf metadata")
    labels = tflite_zip_labels(data)
    if labels is None:
        raise ContractError(f"{path}: carries neither '{METADATA_KEY}' metadata nor a labels file, so its labels "
                            "are unknown; run the export folder instead")
    height, width = tflite_input_hw(data, path)
    bundle = Bundle(classes=labels, input=InputSpec(height=height, width=width), artifacts=[art], root=path.parent)
    return ModelRef(path, bundle, art, "TFLite labels zip")


def _bundle_from_json(text: str, path: Path, art: Artifact) -> Bundle:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ContractError(f"{path}: its embedded '{METADATA_KEY}' metadata is not JSON ({exc})") from exc
    if isinstance(d, dict) and d.get("precision"):
        art.precision = str(d["precision"])
    if not isinstance(d, dict):
        raise ContractError(f"{path}: its embedded '{METADATA_KEY}' metadata is not a JSON object")
    d = {**d, "artifacts": []}
    bundle = bundle_from_dict(d, root=path.parent)
    bundle.artifacts = [art]
    return bundle


# --- ONNX: protobuf wire format, only as deep as ModelProto.metadata_props ---------------------------

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field_number, wire_type, value) of one protobuf message; value is bytes for wire type 2."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf) or number == 0:
            raise ValueError("truncated message")
        yield number, wire, value


def onnx_metadata_props(data: bytes, path: Path | str = "<onnx>") -> dict[str, str] | None:
    """``metadata_props`` of an ONNX model as ONNX Runtime reads them; None when onnxruntime is missing."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only the metadata is wanted
    try:
        session = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
        raise ModelLoadError(f"{path}: not a valid ONNX model ({first_line(exc)})") from exc
    return dict(session.get_modelmeta().custom_metadata_map)


def onnx_metadata_props_without_onnxruntime(data: bytes, path: Path | str = "<onnx>") -> dict[str, str]:
    """``metadata_props`` (field 14 of ModelProto) with the standard library, for OpenCV-only devices."""
    props: dict[str, str] = {}
    has_graph = False
    try:
        for number, wire, value in _fields(data):
            if number == 7 and wire == 2:
                has_graph = True
            if number == 14 and wire == 2:
                entry = {n: v for n, w, v in _fields(value) if w == 2}
                props[entry.get(1, b"").decode("utf-8", "replace")] = entry.get(2, b"").decode("utf-8", "replace")
    except (ValueError, IndexError) as exc:
        raise ModelLoadError(f"{path}: not a valid ONNX model (corrupt or truncated)") from exc
    if not has_graph:
        raise ModelLoadError(f"{path}: not a valid ONNX model (no graph)")
    return props


# --- TFLite: flatbuffer walking, only as deep as Model.metadata / buffers / the input tensor ----------

class _Table:
    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        vt = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vt, self.vt_len = vt, struct.unpack_from("<H", buf, vt)[0]

    def _field(self, slot: int) -> int:
        off = 4 + 2 * slot
        if off >= self.vt_len:
            return 0
        return struct.unpack_from("<H", self.buf, self.vt + off)[0]

    def scalar(self, slot: int, fmt: str, default=0):
        o = self._field(slot)
        return struct.unpack_from("<" + fmt, self.buf, self.pos + o)[0] if o else default

    def _indirect(self, slot: int) -> int | None:
        o = self._field(slot)
        if not o:
            return None
        at = self.pos + o
        return at + struct.unpack_from("<I", self.buf, at)[0]

    def table(self, slot: int) -> "_Table | None":
        at = self._indirect(slot)
        return _Table(self.buf, at) if at is not None else None

    def vector(self, slot: int) -> tuple[int, int]:
        """(start, length) of a vector field; length 0 when absent."""
        at = self._indirect(slot)
        if at is None:
            return 0, 0
        return at + 4, struct.unpack_from("<I", self.buf, at)[0]

    def tables(self, slot: int) -> list["_Table"]:
        start, n = self.vector(slot)
        out = []
        for i in range(n):
            at = start + 4 * i
            out.append(_Table(self.buf, at + struct.unpack_from("<I", self.buf, at)[0]))
        return out

    def string(self, slot: int) -> str | None:
        start, n = self.vector(slot)
        return self.buf[start:start + n].decode("utf-8", "replace") if start else None


def _tflite_root(data: bytes, path) -> _Table:
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelLoadError(f"{path}: not a TFLite model (corrupt, truncated, or another format)")
    try:
        return _Table(data, struct.unpack_from("<I", data, 0)[0])
    except struct.error as exc:
        raise ModelLoadError(f"{path}: not a valid TFLite model (corrupt or truncated)") from exc


def tflite_metadata(data: bytes, path: Path | str = "<tflite>") -> dict[str, bytes]:
    """Named metadata buffers of a .tflite (``Model.metadata``), e.g. ``{"edgeclf": b"{...}"}``."""
    root = _tflite_root(data, path)
    try:
        buffers = root.tables(4)
        out: dict[str, bytes] = {}
        for meta in root.tables(6):
            name, index = meta.string(0), meta.scalar(1, "I")
            if name is None or index >= len(buffers):
                continue
            buffer = buffers[index]
            start, n = buffer.vector(0)
            if n:
                out[name] = bytes(data[start:start + n])
            else:  # large models keep buffers after the flatbuffer: offset/size fields
                offset, size = buffer.scalar(1, "Q"), buffer.scalar(2, "Q")
                if offset > 1 and size:
                    out[name] = bytes(data[offset:offset + size])
        return out
    except (struct.error, IndexError) as exc:
        raise ModelLoadError(f"{path}: not a valid TFLite model (corrupt or truncated)") from exc


def tflite_input_hw(data: bytes, path: Path | str = "<tflite>") -> tuple[int, int]:
    """Height and width of the first subgraph's first input (NHWC)."""
    root = _tflite_root(data, path)
    try:
        graph = root.tables(2)[0]
        start, n = graph.vector(1)  # inputs: [int]
        first = struct.unpack_from("<i", data, start)[0] if n else 0
        tensor = graph.tables(0)[first]
        s, k = tensor.vector(0)  # shape: [int]
        shape = struct.unpack_from(f"<{k}i", data, s)
    except (struct.error, IndexError) as exc:
        raise ModelLoadError(f"{path}: not a valid TFLite model (corrupt or truncated)") from exc
    if len(shape) != 4:
        raise ContractError(f"{path}: input shape {list(shape)} is not an NHWC image")
    return int(shape[1]), int(shape[2])


def tflite_zip_labels(data: bytes) -> list[str] | None:
    """Class names from a labels file in the zip that TFLite metadata appends to the model."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = [n for n in zf.namelist() if n.lower().endswith(".txt")]
            if not names:
                return None
            best = sorted(names, key=lambda n: ("label" not in n.lower(), n))[0]
            text = zf.read(best).decode("utf-8", "replace")
    except (zipfile.BadZipFile, OSError, KeyError):
        return None
    labels = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return labels or None
