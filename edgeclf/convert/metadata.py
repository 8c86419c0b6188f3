"""Metadata inside model files, so a lone model still knows its labels and input. No TensorFlow.

TFLite: the standard ``TFLITE_METADATA`` flatbuffer (schema ``metadata_schema.fbs`` 1.x, file identifier
``M001``, as published by tflite-support / MediaPipe) with RGB image input, normalisation mean 0 / std 1
(the input is raw 0..255 pixels: normalisation is inside the graph), and the output tied to
``labels.txt`` as TENSOR_AXIS_LABELS; ``labels.txt`` and ``edgeclf.json`` travel as a zip appended to the
model, as MediaPipe Tasks and the TFLite support library expect. Our own JSON is also stored as a model
metadata entry named ``edgeclf`` (contract.METADATA_KEY). The writer is written here against the
published schema because neither tflite-support (protobuf < 4) nor mediapipe's writers can be installed
beside TensorFlow (tflite-support 0.4.4 needs protobuf < 4, TensorFlow >= 6; mediapipe 1.2.2's
metadata_writers fail on import with "No module named 'mediapipe.tasks.cc'").

ONNX: the same JSON in ``metadata_props["edgeclf"]``, plus the class names and input description as
plain keys.
"""
from __future__ import annotations

import io
import json
import zipfile

from edgeclf.contract import LABELS_FILE, METADATA_KEY, Artifact, Bundle, embedded_metadata

TFLITE_METADATA = "TFLITE_METADATA"
METADATA_FILE_IDENTIFIER = b"M001"
MODEL_FILE_IDENTIFIER = b"TFL3"
EMBEDDED_JSON_FILE = "edgeclf.json"
MIN_PARSER_VERSION = "1.0.0"  # only fields of metadata schema 1.0 are written

# metadata_schema.fbs enums/unions
_ASSOC_DESCRIPTIONS, _ASSOC_TENSOR_AXIS_LABELS = 1, 2
_COLOR_RGB = 1
_CONTENT_FEATURE, _CONTENT_IMAGE = 1, 2
_PROCESS_NORMALIZATION = 1


def _slot(i: int) -> int:
    return 4 + 2 * i


def build_metadata_buffer(bundle: Bundle, artifact: Artifact, name: str = "edgeclf image classifier") -> bytes:
    """The ``TFLITE_METADATA`` flatbuffer (ModelMetadata) for an image classifier."""
    import flatbuffers

    b = flatbuffers.Builder(1024)

    def string(s: str) -> int:
        return b.CreateString(s)

    def table(fields: list[tuple[int, str, object]]) -> int:
        # fields: (slot index, kind, value); kind in {"off", "u8", "i8", "u32"}
        b.StartObject(max(i for i, _, _ in fields) + 1 if fields else 0)
        for i, kind, value in fields:
            if kind == "off":
                b.PrependUOffsetTRelativeSlot(i, value, 0)
            elif kind == "u8":
                b.PrependUint8Slot(i, value, 0)
            elif kind == "i8":
                b.PrependInt8Slot(i, value, 0)
            elif kind == "u32":
                b.PrependUint32Slot(i, value, 0)
        return b.EndObject()

    def offsets(items: list[int]) -> int:
        b.StartVector(4, len(items), 4)
        for o in reversed(items):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()

    def floats(values: list[float]) -> int:
        b.StartVector(4, len(values), 4)
        for v in reversed(values):
            b.PrependFloat32(float(v))
        return b.EndVector()

    def associated_file(fname: str, description: str, ftype: int) -> int:
        n, d = string(fname), string(description)
        return table([(0, "off", n), (1, "off", d), (2, "i8", ftype)])

    # input tensor: RGB image, raw 0..255 pixels (mean 0, std 1), stats 0..255
    in_name = string("image")
    in_desc = string(f"RGB image {bundle.input.width}x{bundle.input.height}, 0..255 "
                     f"({artifact.input.dtype}); normalisation is inside the model")
    img_size = table([(0, "u32", bundle.input.width), (1, "u32", bundle.input.height)])
    img_props = table([(0, "i8", _COLOR_RGB), (1, "off", img_size)])
    in_content = table([(0, "u8", _CONTENT_IMAGE), (1, "off", img_props)])
    norm = table([(0, "off", floats([0.0])), (1, "off", floats([1.0]))])
    norm_unit = table([(0, "u8", _PROCESS_NORMALIZATION), (1, "off", norm)])
    in_units = offsets([norm_unit])
    in_stats = table([(0, "off", floats([255.0])), (1, "off", floats([0.0]))])
    in_meta = table([(0, "off", in_name), (1, "off", in_desc), (3, "off", in_content),
                     (4, "off", in_units), (5, "off", in_stats)])

    # output tensor: class probabilities, labelled by labels.txt
    out_name = string("probability")
    out_desc = string(f"probabilities of the {len(bundle.classes)} classes, in labels.txt order")
    feat = table([])
    out_content = table([(0, "u8", _CONTENT_FEATURE), (1, "off", feat)])
    out_stats = table([(0, "off", floats([1.0])), (1, "off", floats([0.0]))])
    labels_file = offsets([associated_file(LABELS_FILE, "class names, one per line, in output order",
                                           _ASSOC_TENSOR_AXIS_LABELS)])
    out_meta = table([(0, "off", out_name), (1, "off", out_desc), (3, "off", out_content),
                      (5, "off", out_stats), (6, "off", labels_file)])

    sg_name = string("image_classifier")
    sg = table([(0, "off", sg_name), (2, "off", offsets([in_meta])), (3, "off", offsets([out_meta]))])
    m_name = string(name)
    m_desc = string(f"Classifies an RGB image into {len(bundle.classes)} classes "
                    f"({artifact.format} {artifact.precision}); written by edgeclf")
    m_version = string(f"edgeclf-schema-{bundle.schema}")
    m_author = string("edgeclf")
    m_files = offsets([associated_file(EMBEDDED_JSON_FILE, "edgeclf export contract (JSON)", _ASSOC_DESCRIPTIONS)])
    m_minver = string(MIN_PARSER_VERSION)
    root = table([(0, "off", m_name), (1, "off", m_desc), (2, "off", m_version),
                  (3, "off", offsets([sg])), (4, "off", m_author), (6, "off", m_files), (7, "off", m_minver)])
    b.Finish(root, file_identifier=METADATA_FILE_IDENTIFIER)
    return bytes(b.Output())


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def add_tflite_metadata(model_bytes: bytes, bundle: Bundle, artifact: Artifact) -> bytes:
    """``model_bytes`` with TFLITE_METADATA, an ``edgeclf`` metadata entry and the labels zip appended."""
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    edgeclf_json = embedded_metadata(bundle, artifact).encode("utf-8")
    entries = {TFLITE_METADATA: build_metadata_buffer(bundle, artifact), METADATA_KEY: edgeclf_json}
    model.metadata = [m for m in (model.metadata or [])
                      if (m.name.decode() if isinstance(m.name, bytes) else m.name) not in entries]
    for name, payload in entries.items():
        buf = schema.BufferT()
        buf.data = np.frombuffer(payload, dtype=np.uint8)
        model.buffers.append(buf)
        meta = schema.MetadataT()
        meta.name = name
        meta.buffer = len(model.buffers) - 1
        model.metadata.append(meta)
    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=MODEL_FILE_IDENTIFIER)
    packed = bytes(builder.Output())
    labels = "".join(f"{c}\n" for c in bundle.classes).encode("utf-8")
    return packed + _zip({LABELS_FILE: labels, EMBEDDED_JSON_FILE: edgeclf_json})


# ---------------------------------------------------------------- reading back (tests, tools)

def _tflite_metadata_entries(model_bytes: bytes) -> dict[str, bytes]:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(model_bytes, 0)
    out = {}
    for i in range(model.MetadataLength()):
        m = model.Metadata(i)
        buf = model.Buffers(m.Buffer())
        out[m.Name().decode()] = buf.DataAsNumpy().tobytes() if buf.DataLength() else b""
    return out


def _read_metadata_buffer(data: bytes) -> dict:
    """Parse a ModelMetadata flatbuffer (the fields this module writes) into a dict."""
    import flatbuffers
    from flatbuffers import number_types as N
    from flatbuffers.table import Table

    def root(buf):
        return Table(buf, flatbuffers.encode.Get(N.UOffsetTFlags.packer_type, buf, 0))

    def field(t: Table, i: int) -> int:
        return t.Offset(_slot(i))

    def string(t, i):
        o = field(t, i)
        return t.String(o + t.Pos).decode() if o else None

    def sub(t, i):
        o = field(t, i)
        return Table(t.Bytes, t.Indirect(o + t.Pos)) if o else None

    def vec_tables(t, i):
        o = field(t, i)
        if not o:
            return []
        start, n = t.Vector(o), t.VectorLen(o)
        return [Table(t.Bytes, t.Indirect(start + 4 * k)) for k in range(n)]

    def vec_floats(t, i):
        o = field(t, i)
        if not o:
            return []
        start, n = t.Vector(o), t.VectorLen(o)
        return [t.Get(N.Float32Flags, start + 4 * k) for k in range(n)]

    def scalar(t, i, flags):
        o = field(t, i)
        return t.Get(flags, o + t.Pos) if o else 0

    def afile(t):
        return {"name": string(t, 0), "description": string(t, 1), "type": scalar(t, 2, N.Int8Flags)}

    def tensor(t):
        d = {"name": string(t, 0), "description": string(t, 1)}
        content = sub(t, 3)
        if content is not None:
            kind = scalar(content, 0, N.Uint8Flags)
            d["content_type"] = {_CONTENT_IMAGE: "image", _CONTENT_FEATURE: "feature"}.get(kind, kind)
            props = sub(content, 1)
            if kind == _CONTENT_IMAGE and props is not None:
                d["color_space"] = scalar(props, 0, N.Int8Flags)
                size = sub(props, 1)
                if size is not None:
                    d["default_size"] = (scalar(size, 0, N.Uint32Flags), scalar(size, 1, N.Uint32Flags))
        for unit in vec_tables(t, 4):
            if scalar(unit, 0, N.Uint8Flags) == _PROCESS_NORMALIZATION:
                opts = sub(unit, 1)
                d["normalization"] = {"mean": vec_floats(opts, 0), "std": vec_floats(opts, 1)}
        stats = sub(t, 5)
        if stats is not None:
            d["stats"] = {"max": vec_floats(stats, 0), "min": vec_floats(stats, 1)}
        d["associated_files"] = [afile(f) for f in vec_tables(t, 6)]
        return d

    buf = bytearray(data)
    if flatbuffers.util.GetBufferIdentifier(buf, 0) != METADATA_FILE_IDENTIFIER:
        raise ValueError("not a TFLite metadata buffer (file identifier is not M001)")
    m = root(buf)
    subgraphs = []
    for sg in vec_tables(m, 3):
        subgraphs.append({"name": string(sg, 0),
                          "inputs": [tensor(t) for t in vec_tables(sg, 2)],
                          "outputs": [tensor(t) for t in vec_tables(sg, 3)]})
    return {"name": string(m, 0), "description": string(m, 1), "version": string(m, 2),
            "author": string(m, 4), "associated_files": [afile(f) for f in vec_tables(m, 6)],
            "min_parser_version": string(m, 7), "subgraphs": subgraphs}


def read_tflite_metadata(model_bytes: bytes) -> dict:
    """What a .tflite written by edgeclf carries: ``{"metadata", "edgeclf", "files"}``.

    ``metadata`` is the parsed TFLITE_METADATA, ``edgeclf`` our JSON (from the model's ``edgeclf``
    metadata entry), ``files`` the appended zip's members.
    """
    entries = _tflite_metadata_entries(model_bytes)
    out: dict = {"metadata": None, "edgeclf": None, "files": {}}
    if TFLITE_METADATA in entries:
        out["metadata"] = _read_metadata_buffer(entries[TFLITE_METADATA])
    if METADATA_KEY in entries:
        out["edgeclf"] = json.loads(entries[METADATA_KEY].decode("utf-8"))
    try:
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as zf:
            out["files"] = {n: zf.read(n) for n in zf.namelist()}
    except zipfile.BadZipFile:
        pass
    return out


def onnx_metadata_props(bundle: Bundle, artifact: Artifact) -> dict[str, str]:
    """``metadata_props`` for an ONNX model: our JSON plus plain keys other tools read."""
    return {
        METADATA_KEY: embedded_metadata(bundle, artifact),
        "classes": json.dumps(bundle.classes, ensure_ascii=False),
        "labels": "\n".join(bundle.classes),
        "input": json.dumps(bundle.to_dict()["input"]),
        "producer": "edgeclf",
    }
