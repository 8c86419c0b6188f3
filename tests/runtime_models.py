"""Build real, small exported models for the runtime tests and benchmark (imports TensorFlow).

Run as a script in its own process, so that the test process itself never imports TensorFlow:

    python tests/runtime_models.py OUT [--alpha 0.35] [--size 128] [--no-onnx]

It writes, from the shared ImageNet weights and the shared hymenoptera photos:

    OUT/export/        edgeclf.json, labels.txt, model_fp32.tflite, model_int8.tflite, model.onnx
    OUT/lone/          model_meta.tflite (edgeclf JSON in a TFLite metadata buffer),
                       model_zip.tflite (labels.txt in a zip appended, no edgeclf JSON),
                       model.onnx (edgeclf JSON in metadata_props)
    OUT/reference.json Keras probabilities for every val image (through imageio.load_resized)

A MobileNetV2 (alpha) under Rescaling(1/127.5, offset=-1), frozen, with GAP + Dense(2, softmax) fitted
in a few seconds on the frozen embeddings of the train photos. The builder fails if val top-1 < 0.8 (at
96 px this probe sits at 0.80, at 128 px 0.87: the tests use 128).
`fixture_key()` is what the tests cache on: change this file and the models are rebuilt.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

# ../shared beside the checkout, as in conftest.py (EDGECLF_SHARED overrides it)
SHARED = Path(os.environ.get("EDGECLF_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DATA = SHARED / "data" / "hymenoptera_data"
WEIGHTS = Path(os.environ.get("EDGECLF_WEIGHTS_DIR", SHARED / "weights"))
CLASSES = ["ants", "bees"]


def fixture_key(*parts: object) -> str:
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(str(DATA.resolve()).encode())  # the models record where their images were: a clone elsewhere builds its own
    for p in parts:
        h.update(repr(p).encode())
    return h.hexdigest()[:12]


def image_files(split: str) -> list[tuple[Path, int]]:
    from edgeclf.imageio import is_candidate

    out = []
    for label, name in enumerate(CLASSES):
        for p in sorted((DATA / split / name).iterdir()):
            if is_candidate(p):
                out.append((p, label))
    return out


def _load(files, size):
    import numpy as np

    from edgeclf.imageio import ImageDecodeError, load_resized

    images, labels, kept = [], [], []
    for path, label in files:
        try:
            images.append(load_resized(path, size, size))
        except ImageDecodeError:
            continue  # the placeholder GIF in train/ants
        labels.append(label)
        kept.append(path)
    return np.stack(images).astype("float32"), np.array(labels), kept


def _tflite_details(path: Path):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    return it.get_input_details()[0], it.get_output_details()[0]


def _spec(detail) -> dict:
    import numpy as np

    scale, zp = detail["quantization"]
    d = {"dtype": np.dtype(detail["dtype"]).name}
    if d["dtype"] != "float32":
        d.update(scale=float(scale), zero_point=int(zp))
    return d


def embed_tflite_metadata(src: Path, dst: Path, name: str, payload: bytes) -> None:
    """Copy a .tflite, adding a metadata entry `name` whose buffer holds `payload`."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(src.read_bytes()), 0)
    buf = schema.BufferT()
    buf.data = list(payload)
    model.buffers.append(buf)
    meta = schema.MetadataT()
    meta.name = name
    meta.buffer = len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [meta]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dst.write_bytes(bytes(builder.Output()))


def build(out: Path, alpha: float, size: int, onnx: bool, epochs: int) -> None:
    import numpy as np
    import keras
    import tensorflow as tf

    from edgeclf.contract import Artifact, Bundle, InputSpec, TensorSpec, embedded_metadata

    keras.utils.set_random_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    export = out / "export"
    export.mkdir(exist_ok=True)
    x_train, y_train, _ = _load(image_files("train"), size)
    x_val, y_val, val_paths = _load(image_files("val"), size)

    weights = WEIGHTS / f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_224_no_top.h5"
    inp = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="preprocess")(inp)
    backbone = keras.applications.MobileNetV2(alpha=alpha, include_top=False, weights=str(weights),
                                              input_shape=(size, size, 3))
    backbone.trainable = False
    features = keras.layers.GlobalAveragePooling2D(name="head_pool")(backbone(x))
    extractor = keras.Model(inp, features)
    emb_train = extractor.predict(x_train, batch_size=64, verbose=0)
    emb_val = extractor.predict(x_val, batch_size=64, verbose=0)

    head = keras.layers.Dense(len(CLASSES), activation="softmax", name="head_logits")
    probe = keras.Sequential([keras.Input(emb_train.shape[1:]), head])
    probe.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    probe.fit(emb_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    val_top1 = float(probe.evaluate(emb_val, y_val, verbose=0)[1])
    print(f"probe val top-1 {val_top1:.3f}", file=sys.stderr)
    if val_top1 < 0.8:
        raise SystemExit(f"test model too weak: val top-1 {val_top1:.3f}")
    model = keras.Model(inp, head(features))
    ref = model.predict(x_val, batch_size=64, verbose=0)

    def convert(int8: bool) -> bytes:
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if int8:
            calib = x_train[np.linspace(0, len(x_train) - 1, 50).astype(int)]
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: ([im[None]] for im in calib)
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
        return conv.convert()

    artifacts = []
    for precision, fname in (("fp32", "model_fp32.tflite"), ("int8", "model_int8.tflite")):
        (export / fname).write_bytes(convert(precision == "int8"))
        i, o = _tflite_details(export / fname)
        artifacts.append(Artifact(file=fname, format="tflite", precision=precision,
                                  input=TensorSpec(**_spec(i)), output=TensorSpec(**_spec(o))))
    if onnx:
        import tf2onnx

        spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="image"),)
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=13)
        (export / "model.onnx").write_bytes(proto.SerializeToString())
        artifacts.append(Artifact(file="model.onnx", format="onnx", precision="fp32"))
    for a in artifacts:
        data = (export / a.file).read_bytes()
        a.bytes, a.sha256 = len(data), hashlib.sha256(data).hexdigest()
    bundle = Bundle(classes=CLASSES, input=InputSpec(height=size, width=size), artifacts=artifacts,
                    source={"backbone": "mobilenet_v2", "alpha": alpha, "keras_val_top1": val_top1})
    bundle.save(export)

    lone = out / "lone"
    lone.mkdir(exist_ok=True)
    int8 = bundle.artifact("tflite-int8")
    embed_tflite_metadata(export / int8.file, lone / "model_meta.tflite", "edgeclf",
                          embedded_metadata(bundle, int8).encode())
    shutil.copy(export / int8.file, lone / "model_zip.tflite")
    with zipfile.ZipFile(lone / "model_zip.tflite", "a") as zf:  # appended, as TFLite metadata does
        zf.writestr("labels.txt", "".join(f"{c}\n" for c in CLASSES))
    if onnx:
        import onnx as onnx_lib

        proto = onnx_lib.load(str(export / "model.onnx"))
        entry = proto.metadata_props.add()
        entry.key, entry.value = "edgeclf", embedded_metadata(bundle, bundle.artifact("onnx-fp32"))
        onnx_lib.save(proto, str(lone / "model.onnx"))

    reference = {"classes": CLASSES, "size": size, "val_top1": val_top1,
                 "images": {str(p): [float(v) for v in r] for p, r in zip(val_paths, ref)},
                 "labels": {str(p): CLASSES[int(y)] for p, y in zip(val_paths, y_val)}}
    (out / "reference.json").write_text(json.dumps(reference))
    (out / "DONE").write_text("ok\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--alpha", type=float, default=0.35)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--no-onnx", action="store_true")
    a = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    build(a.out, a.alpha, a.size, not a.no_onnx, a.epochs)


if __name__ == "__main__":
    main()
