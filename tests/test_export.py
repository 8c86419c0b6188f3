"""edgeclf export on real models and real photos (hymenoptera): formats, contract, metadata,
quantization parameters, the int8 accuracy-budget search, verification and its failure modes, atomic
writes, one-line errors.

The model is the session's run (conftest.small_run: MobileNetV2 0.35 at 96 px, trained by `edgeclf train`)
and `small_export` its `edgeclf export --int8` folder; everything here checks numbers measured on the
exported files.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeclf.cli import main
from edgeclf.config import ExportOptions
from edgeclf.contract import CONTRACT_FILE, LABELS_FILE, METADATA_KEY, load_bundle
from edgeclf.convert.exporter import EXIT_DROP, EXIT_FAILED, EXIT_OK, export_model

sys.path.insert(0, str(Path(__file__).parent))
from conftest import INT8_DRIFT, edgeclf_cli  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Statistics for quantized inputs:UserWarning")]
IMGSZ = 96
CALIB = 64  # small on purpose (warning expected): the suite must stay fast


@pytest.fixture(scope="session")
def run_dir(small_run, tmp_path_factory) -> Path:
    """A copy of the session's trained run (conftest.py), so export tests may write into it."""
    copy = tmp_path_factory.mktemp("runs") / "exp"
    shutil.copytree(small_run, copy)
    return copy


def resolve_val(run_dir: Path) -> list:
    from edgeclf.rundir import load_run

    return load_run(run_dir).dataset().val


class _Exported:
    """The session's export folder (conftest.small_export) and what the command printed."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.log = (out_dir.parent / f"{out_dir.name}.log").read_text()


@pytest.fixture(scope="session")
def exported(small_export) -> _Exported:
    return _Exported(small_export)


def test_tables_sent_to_a_file_are_not_cut(exported):
    """The session's `edgeclf export` ran with its output in a pipe (conftest.small_export), as in CI or under
    nohup: every file name and every int8 recipe stands whole in it, on one line."""
    bundle = load_bundle(exported.out_dir)
    lines = exported.log.splitlines()
    for art in bundle.artifacts:
        assert any(art.file in line for line in lines), art.file
        if art.recipe is not None:
            label = art.recipe.label()
            assert any(label in line and art.name in line for line in lines), (art.name, label)
    assert "…" not in exported.log  # rich's mark of a cut cell


def test_every_format_exported_verified_and_listed(exported, small_run):
    run_dir = small_run
    bundle = load_bundle(exported.out_dir)
    names = [a.name for a in bundle.artifacts]
    assert names == ["tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8", "onnx-fp32", "onnx-int8"]
    files = {a.name: a.file for a in bundle.artifacts}
    assert files["tflite-int8"] == "model_int8.tflite" and files["onnx-fp32"] == "model_fp32.onnx"
    for a in bundle.artifacts:
        path = exported.out_dir / a.file
        assert a.bytes == path.stat().st_size
        assert a.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert 0.0 <= a.val_top1 <= 1.0 and a.extra["val_images"] == 153
    assert f"calibrating on {CALIB} images" in exported.log  # < 100: warned
    # no temporary files left behind
    assert not [p.name for p in exported.out_dir.iterdir() if p.name.startswith(".")]

    ref = bundle.source["reference"]
    assert ref["keras_max_abs_diff"] < 1e-3  # the fp32 TFLite reference matches Keras
    assert ref["val_top1"] > 0.7  # a real model, not chance
    report = json.loads((run_dir / "report.json").read_text())
    assert bundle.source["keras_val_top1"] == pytest.approx(report["top1"])
    assert abs(ref["val_top1"] - report["top1"]) < 0.02  # trainer (Keras) and runtime agree on val
    by = {a.name: a for a in bundle.artifacts}
    for name in ("tflite-fp32", "onnx-fp32"):  # float formats: the same model
        assert by[name].extra["agreement"] >= 0.99 and abs(by[name].extra["drop_pt"]) <= 1.0
    # half-precision weights: probabilities within rounding of fp32; a top-1 may only flip where fp32 itself
    # is within that rounding of a tie
    from edgeclf.convert.calibration import load_images
    from edgeclf.runtime import ModelRef, open_backend

    images = load_images(resolve_val(run_dir), IMGSZ, IMGSZ, "bilinear")
    p32, p16 = (open_backend(ModelRef.from_bundle(bundle, n), threads=2).predict(images)
                for n in ("tflite-fp32", "tflite-fp16"))
    diff = np.abs(p16 - p32)
    dp = float(diff.max())
    # typically 0.003 (measured on two trained models); the worst image, where the softmax is steepest, 0.02-0.03
    assert float(diff.mean()) < 0.005 and dp < 0.05, (float(diff.mean()), dp)
    top2 = np.sort(p32, axis=1)[:, -2:]
    flipped = p16.argmax(axis=1) != p32.argmax(axis=1)
    assert (top2[flipped, 1] - top2[flipped, 0] <= 2 * dp).all()
    assert by["tflite-fp16"].extra["agreement"] == pytest.approx(1 - flipped.mean(), abs=1e-4)
    for name in ("tflite-int8", "onnx-int8"):  # quantized: close, measured
        assert by[name].extra["agreement"] >= 0.85, by[name].extra
        # top-1s are stored to 4 decimals and drop_pt to 2: recomputed, they differ by at most 0.01 + 0.005 pt
        assert by[name].extra["drop_pt"] == pytest.approx((ref["val_top1"] - by[name].val_top1) * 100, abs=0.015)
    # int8 is much smaller than fp32 (about 4x on big models; this tiny one carries fixed overheads)
    assert by["tflite-int8"].bytes < 0.5 * by["tflite-fp32"].bytes
    assert by["onnx-int8"].bytes < 0.5 * by["onnx-fp32"].bytes


def test_labels_in_order(exported, small_run):
    split = json.loads((small_run / "split.json").read_text())
    labels = (exported.out_dir / LABELS_FILE).read_text().splitlines()
    assert labels == split["classes"] == ["ants", "bees"]
    assert json.loads((exported.out_dir / CONTRACT_FILE).read_text())["classes"] == labels


def test_int8_quantization_parameters_applied(exported, hymenoptera):
    from ai_edge_litert.interpreter import Interpreter

    from edgeclf.imageio import load_resized

    bundle = load_bundle(exported.out_dir)
    art = bundle.artifact("tflite-int8")
    it = Interpreter(model_path=str(exported.out_dir / art.file))
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    # --io uint8 with Rescaling inside the graph: the raw pixel is the input (scale 1, zero point 0)
    assert i["dtype"] == np.uint8 and o["dtype"] == np.uint8
    assert (art.input.dtype, art.input.scale, art.input.zero_point) == ("uint8", i["quantization"][0], i["quantization"][1])
    assert (art.output.dtype, art.output.scale, art.output.zero_point) == ("uint8", o["quantization"][0], o["quantization"][1])
    assert art.input.scale == pytest.approx(1.0) and art.input.zero_point == 0
    # feeding raw pixels and dequantizing with the recorded output parameters gives probabilities
    img = load_resized(next((hymenoptera / "val" / "bees").iterdir()), IMGSZ, IMGSZ, "bilinear")
    it.set_tensor(i["index"], img[None])
    it.invoke()
    probs = (it.get_tensor(o["index"]).astype(np.float32) - art.output.zero_point) * art.output.scale
    assert probs.sum() == pytest.approx(1.0, abs=0.05)

    # ONNX int8, QDQ or QOperator (whichever the search found fastest here): per-channel weight scales
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(exported.out_dir / "model_int8.onnx"))
    recipe = bundle.artifact("onnx-int8").recipe
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    if recipe.quant_format == "QDQ":
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
        scales = [inits[n.input[1]] for n in model.graph.node if n.op_type == "DequantizeLinear"
                  and n.input[0] in inits and inits[n.input[0]].ndim == 4]
    else:
        scales = [inits[n.input[4]] for n in model.graph.node if n.op_type == "QLinearConv"]
    assert scales and max(s.size for s in scales) > 1

    # the classifier's last layer and softmax run in float: the logits are not rounded to 256 levels nor the
    # scores to steps of 1/256 (two close classes would tie, and argmax would pick the first)
    produced_by = {o: n for n in model.graph.node for o in n.output}
    softmax = produced_by[model.graph.output[0].name]
    assert softmax.op_type == "Softmax"
    linear = produced_by[softmax.input[0]]
    assert linear.op_type in ("Gemm", "MatMul", "Add"), linear.op_type
    from edgeclf.runtime.backends import open_backend

    images = np.stack([load_resized(f, IMGSZ, IMGSZ, "bilinear")
                       for f in sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[:8]])
    backend = open_backend(exported.out_dir, artifact="onnx-int8")
    scores = backend.predict(images)
    backend.close()
    steps = scores * 256
    assert np.abs(steps - np.round(steps)).max() > 1e-3, "int8 ONNX scores are quantized to steps of 1/256"


def test_tflite_metadata_readable_back(exported):
    from edgeclf.convert.metadata import read_tflite_metadata

    for file in ("model_fp32.tflite", "model_int8.tflite"):
        data = (exported.out_dir / file).read_bytes()
        meta = read_tflite_metadata(data)
        assert meta["files"][LABELS_FILE].decode().splitlines() == ["ants", "bees"]
        assert json.loads(meta["files"]["edgeclf.json"])["classes"] == ["ants", "bees"]
        assert meta["edgeclf"]["input"]["height"] == IMGSZ
        sg = meta["metadata"]["subgraphs"][0]
        (inp,), (out,) = sg["inputs"], sg["outputs"]
        assert inp["content_type"] == "image" and inp["color_space"] == 1  # RGB
        assert inp["normalization"] == {"mean": [0.0], "std": [1.0]}  # raw 0..255: normalisation is in the graph
        assert out["associated_files"][0]["name"] == LABELS_FILE and out["associated_files"][0]["type"] == 2
        assert zipfile.is_zipfile(exported.out_dir / file)
    # the runtime, given a lone file, finds labels and input size inside it
    from edgeclf.runtime.backends import open_backend

    backend = open_backend(exported.out_dir / "model_int8.tflite")
    assert backend.model.classes == ["ants", "bees"] and backend.model.artifact.precision == "int8"


def test_onnx_metadata_props(exported):
    import onnx

    for file in ("model_fp32.onnx", "model_int8.onnx"):
        model = onnx.load(str(exported.out_dir / file))
        props = {p.key: p.value for p in model.metadata_props}
        d = json.loads(props[METADATA_KEY])
        assert d["classes"] == ["ants", "bees"] and d["input"]["layout"] == "NHWC"
        assert model.opset_import[0].version >= 13
        shape = [x.dim_value for x in model.graph.input[0].type.tensor_type.shape.dim]
        assert shape[1:] == [IMGSZ, IMGSZ, 3]  # NHWC as trained


def test_collapse_detected_on_broken_calibration(run_dir, tmp_path):
    """Calibrating on images scaled to 0..1 (a classic bug) makes real photos saturate the input."""
    from edgeclf.convert.calibration import CalibrationSet, calibration_set, stratified_sample
    from edgeclf.rundir import load_run

    run = load_run(run_dir)
    good = calibration_set(stratified_sample(run.dataset().train, 32), IMGSZ, IMGSZ, "bilinear")
    broken = CalibrationSet((good.images // 255).astype(np.uint8))  # 0..1 instead of 0..255
    out = tmp_path / "export"
    result = export_model(ExportOptions(target=run_dir, out=out, int8=True, formats="tflite-fp32,tflite-int8",
                                        calibration=broken, search="none"))
    assert result.exit_code == EXIT_FAILED
    assert any("tflite-int8 collapsed" in f for f in result.failures), result.failures
    assert not (out / "model_int8.tflite").exists()
    assert [a.name for a in load_bundle(out).artifacts] == ["tflite-fp32"]


def test_onnx_search_none_is_the_single_recipe(run_dir, tmp_path):
    """``--search none`` for ONNX: the single recipe of earlier versions (QDQ, int8 activations, MinMax,
    per-channel, the stem convolution in float, 7- or 8-bit weights by agreement with fp32 on the calibration
    images), verified like any file, and the val split and predictions written beside it."""
    out = tmp_path / "export"
    result = export_model(ExportOptions(target=run_dir, out=out, int8=True, formats="onnx-fp32,onnx-int8",
                                        calib_images=CALIB, search="none", max_drop=100))
    assert result.exit_code == EXIT_OK, (result.failures, result.warnings)
    art = load_bundle(out).artifact("onnx-int8")
    r = art.recipe
    assert (r.quantizer, r.quant_format, r.calibration, r.per_channel, r.activation_type) == (
        "onnxruntime", "QDQ", "minmax", True, "int8")
    assert r.weight_bits in (7, 8) and r.float_layers and r.calibration_images == art.extra["calibration_images"]
    scores = art.extra["reduce_range_agreement_on_calibration"]
    assert set(scores) == {"full", "reduced"} and r.weight_bits == (7 if scores["reduced"] > scores["full"] else 8)
    assert art.search == [] and art.extra["agreement"] >= 0.85 and art.extra["val_images"] == 153
    split = json.loads((out / "val_split.json").read_text())
    predictions = json.loads((out / "val_predictions.json").read_text())
    assert len(split["files"]) == len(split["labels"]) == 153 and not split["files"][0].startswith("/")
    assert set(predictions["models"]) == {"float", "onnx-fp32", "onnx-int8"}
    agree = np.mean(np.array(predictions["models"]["onnx-int8"]["pred"]) == predictions["models"]["float"]["pred"])
    assert agree == pytest.approx(art.extra["agreement"], abs=1e-4)


# --- the int8 accuracy budget -------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def planted_run(small_run, tmp_path_factory) -> Path:
    """The session's run with an outlier planted in block_16_project_BN (float unchanged, int8 ruined)."""
    from export_helpers import plant_outlier

    return plant_outlier(small_run, tmp_path_factory.mktemp("planted") / "run")


@INT8_DRIFT
def test_search_keeps_the_planted_layer_in_float_and_meets_the_budget(planted_run, tmp_path):
    from export_helpers import PLANTED_CONSUMER, PLANTED_PRODUCER

    out = tmp_path / "e"
    # The budget is set where this tiny model's honest int8 lands (MobileNetV2 0.35 at 96 px loses a few
    # points on the views of training images the search judges on), far below what the planted outlier costs
    # (30+ pt).
    proc = edgeclf_cli("export", str(planted_run), "--int8", "--formats", "tflite-fp32,tflite-int8,onnx-int8",
                       "--max-drop", "5", "--out", str(out))
    bundle = load_bundle(out)
    for name in ("tflite-int8", "onnx-int8"):
        art = bundle.artifact(name)
        first = art.search[0]
        assert first["outcome"] in ("collapsed", "over budget") and first["selection_drop_pt"] > 5, art.search
        chosen = [t for t in art.search if t["outcome"] == "chosen"]
        assert len(chosen) == 1 and chosen[0]["selection_drop_pt"] <= 5, art.search
        assert art.recipe.float_layers == tuple(chosen[0]["recipe"]["float_layers"])
        assert art.extra["selection_from"] == "views"  # judged on random views of training images (no holdout)
        assert {PLANTED_PRODUCER, PLANTED_CONSUMER} <= set(art.recipe.float_layers), (name, art.recipe)
        # and on validation, which the search never saw: repaired (the planted int8 model is at chance)
        assert art.extra["drop_pt"] <= 10 and art.extra["agreement"] >= 0.85, (name, art.extra)
    assert "search" in proc.stdout and "chosen" in proc.stdout  # the search table is printed


def test_impossible_budget_keeps_the_best_and_strict_exits_3(planted_run, tmp_path, monkeypatch):
    """No candidate is ever within budget (the judge says so): the whole ladder is walked, the most accurate
    candidate is written and named in a warning that suggests --qat; exit 0, or 3 with --strict."""
    import dataclasses

    from edgeclf.convert import search

    monkeypatch.setattr(search.Judge, "within", lambda self, trial: False)
    out = tmp_path / "e"
    result = export_model(ExportOptions(target=planted_run, out=out, int8=True, formats="tflite-int8",
                                        calib_images=CALIB, max_drop=0.5))
    assert result.exit_code == EXIT_OK and dataclasses.replace(result, strict=True).exit_code == EXIT_DROP
    art = load_bundle(out).artifact("tflite-int8")  # still written and listed
    assert (out / art.file).is_file() and result.row("tflite-int8").status == "drop"
    kept = [t for t in art.search if t["outcome"].startswith("kept")]
    assert len(kept) == 1 and art.recipe.label() == kept[0]["label"]
    usable = [t for t in art.search if t["outcome"] not in ("collapsed", "failed")]
    best = min(usable, key=lambda t: (t["selection_drop_pt"], -t["selection_agreement"], t["tier"]))
    assert kept[0]["label"] == best["label"]
    assert art.search[0]["outcome"] == "collapsed" and best["recipe"]["float_layers"]  # the fallback repaired it
    assert any(t["recipe"]["activation_bits"] == 16 for t in art.search)  # the whole ladder was walked
    warning = next(w for w in result.warnings if "no candidate of the search" in w)
    assert kept[0]["label"] in warning and "--qat" in warning


def test_strict_and_search_options_reach_the_exporter(monkeypatch, tmp_path):
    from edgeclf.convert import exporter

    seen = []

    def fake_export(options):
        seen.append(options)
        raise exporter.EdgeclfError("stop here")

    monkeypatch.setattr(exporter, "export_model", fake_export)
    res = CliRunner().invoke(main, ["export", str(tmp_path), "--int8", "--strict", "--search", "none",
                                    "--max-drop", "1.5", "--selection-images", "200", "--no-bias-correction"])
    assert res.exit_code == 2 and "stop here" in res.output
    o = seen[0]
    assert (o.strict, o.search, o.max_drop, o.selection_images, o.io, o.bias_correction) == (
        True, "none", 1.5, 200, "uint8", False)
    res = CliRunner().invoke(main, ["export", str(tmp_path), "--int8"])
    o = seen[1]
    assert (o.strict, o.search, o.max_drop, o.io, o.bias_correction) == (False, "auto", 0.5, "uint8", True)


def test_selection_images_are_disjoint_from_calibration_and_validation(run_dir, tmp_path):
    """Without a holdout (the default) the search judges on random views of each training image that is not a
    calibration image (two each, more for a small training split such as this one); for a run trained with
    --holdout, on the images it held out."""
    from edgeclf.convert.calibration import load_images
    from edgeclf.convert.exporter import SELECTION_VIEWS, SELECTION_VIEWS_JUDGED, ExportContext, selection_views
    from edgeclf.convert.source import resolve_source
    from edgeclf.contract import Bundle, InputSpec

    def job_for(run):
        source = resolve_source(run)
        opts = ExportOptions(target=run, out=tmp_path, int8=True, calib_images=CALIB)
        return source, ExportContext(source, opts, Bundle(source.classes, InputSpec(IMGSZ, IMGSZ)), tmp_path, None,
                                     lambda m: None)

    source, job = job_for(run_dir)
    calib, selection = job._training_split()
    train, val = {s.path for s in source.train}, {s.path for s in source.val}
    assert not source.holdout and job.selection_from == "views"
    assert len(calib) == CALIB and len(selection) == len(source.train) // 2
    assert {s.path for s in calib} <= train and {s.path for s in selection} <= train
    assert not {s.path for s in calib} & {s.path for s in selection}
    assert not ({s.path for s in calib} | {s.path for s in selection}) & val
    judged = job.selection()
    views = selection_views(len(selection))
    assert views > SELECTION_VIEWS and len(judged) == views * len(selection) >= SELECTION_VIEWS_JUDGED
    assert judged.paths == [s.path for s in selection for _ in range(views)]
    assert judged.labels.tolist() == [s.label for s in selection for _ in range(views)]
    originals = np.repeat(load_images(selection, IMGSZ, IMGSZ, "bilinear"), views, axis=0)
    moved = np.abs(judged.images.astype(int) - originals).mean(axis=(1, 2, 3))
    assert (moved > 5).mean() > 0.9  # views, not the training images themselves
    np.testing.assert_array_equal(job_for(run_dir)[1].selection().images, judged.images)  # seeded

    held_run = tmp_path / "held-run"  # the same run trained with a holdout: 40 training images held out
    shutil.copytree(run_dir, held_run, ignore=shutil.ignore_patterns("export", "weights"))
    (held_run / "weights").mkdir()
    (held_run / "weights" / "best.keras").symlink_to(run_dir / "weights" / "best.keras")
    split = json.loads((held_run / "split.json").read_text())
    trains = [k for k, (_, _, where) in enumerate(split["samples"]) if where == "train"]
    for k in trains[::5][:40]:
        split["samples"][k][2] = "holdout"
    (held_run / "split.json").write_text(json.dumps(split))
    source, job = job_for(held_run)
    calib, selection = job._training_split()
    train, held = ({s.path for s in ss} for ss in (source.train, source.holdout))
    assert len(held) == 40 and job.selection_from == "holdout"
    assert len(calib) == CALIB and {s.path for s in calib} <= train
    assert {s.path for s in selection} == held  # every held-out image (fewer than --selection-images)
    assert not held & train and not held & val
    assert len(job.selection()) == len(selection) and job.selection().labels.tolist() == [s.label for s in selection]


def _tflite_biases(data: bytes) -> dict:
    """The int32 bias of every conv/FC of a TFLite model, by output tensor name (read with the schema)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(bytearray(data), 0)
    graph = model.Subgraphs(0)
    found = {}
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        if op.InputsLength() >= 3 and op.Inputs(2) >= 0:
            t = graph.Tensors(op.Inputs(2))
            if t.Type() == schema.TensorType.INT32:
                found[graph.Tensors(op.Outputs(0)).Name().decode()] = \
                    model.Buffers(t.Buffer()).DataAsNumpy().view(np.int32).astype(np.int64)
    return found


def _onnx_biases(data: bytes) -> dict:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t).astype(np.int64) for t in onnx.load_from_string(data).graph.initializer
            if t.data_type == onnx.TensorProto.INT32 and t.name.endswith("_quantized")}


def test_bias_correction_moves_only_biases_and_converges(run_dir, tmp_path):
    """On the session's real model, for TFLite and both ONNX Runtime formats: the correction changes only
    int32 biases (same file size, same operators), moves many of them, and a second pass moves them far
    less than the first (the first removed the error it measures: a wrong sign or scale would not)."""
    from edgeclf.contract import Bundle, InputSpec, Recipe
    from edgeclf.convert import biascorr, onnx_export, tflite
    from edgeclf.convert.exporter import ExportContext, load_keras
    from edgeclf.convert.source import resolve_source

    source = resolve_source(run_dir)
    model = load_keras(source.model_path)
    job = ExportContext(source, ExportOptions(target=run_dir, out=tmp_path, int8=True, calib_images=CALIB),
                    Bundle(source.classes, InputSpec(IMGSZ, IMGSZ)), tmp_path, model, lambda m: None)
    images = job.calibration().images
    calibrated = tflite.calibrate(model, job.calibration())
    plain = tflite.quantize(calibrated, "uint8")
    quantizer = onnx_export.Quantizer(onnx_export.convert_fp32(model, IMGSZ, IMGSZ), job.calibration(), tmp_path)
    try:
        cases = [("tflite", plain, lambda q: biascorr.tflite(q, calibrated, images), _tflite_biases)]
        for fmt in ("QDQ", "QOperator"):
            q = quantizer.quantize(Recipe("onnxruntime", fmt, "minmax", CALIB, 8, True, 8, (), "uint8"))
            cases.append((fmt, q, lambda q: biascorr.onnx(q, quantizer.model, images, onnx_export.INPUT_NAME),
                          _onnx_biases))
        for name, q0, fix, biases in cases:
            q1 = fix(q0)
            q2 = fix(q1)
            b0, b1, b2 = biases(q0), biases(q1), biases(q2)
            assert len(q1) == len(q0) and b0.keys() == b1.keys() and len(b0) >= 50, name
            # per channel, in bias steps; the median, as channels differ by orders of magnitude in scale
            first = float(np.median(np.concatenate([np.abs(b1[k] - b0[k]) for k in b0])))
            second = float(np.median(np.concatenate([np.abs(b2[k] - b1[k]) for k in b0])))
            moved = sum(int((b1[k] != b0[k]).any()) for k in b0)
            assert moved >= len(b0) // 2, (name, moved, len(b0))
            assert first > 0 and second < 0.5 * first, (name, first, second)
            if name == "tflite":  # nothing but bias bytes changed
                diff = np.flatnonzero(np.frombuffer(q0, np.uint8) != np.frombuffer(q1, np.uint8))
                assert 0 < len(diff) <= 4 * sum(v.size for v in b0.values())
    finally:
        quantizer.close()


@INT8_DRIFT
def test_gptq_rounding_changes_only_int8_weights_and_brings_the_model_closer_to_float(run_dir, tmp_path):
    """On the session's real model, QDQ and QOperator: GPTQ rounding changes only int8 convolution weights (same
    size, same operators, scales untouched, each weight a few levels from its nearest), and the rounded model's
    scores are closer to float's (KL divergence) than nearest rounding's, on validation images it never saw."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from edgeclf.contract import Bundle, InputSpec, Recipe
    from edgeclf.convert import onnx_export, rounding
    from edgeclf.convert.calibration import load_images
    from edgeclf.convert.exporter import ExportContext, load_keras
    from edgeclf.convert.search import kl_divergence
    from edgeclf.convert.source import resolve_source

    source = resolve_source(run_dir)
    model = load_keras(source.model_path)
    job = ExportContext(source, ExportOptions(target=run_dir, out=tmp_path, int8=True, calib_images=CALIB),
                        Bundle(source.classes, InputSpec(IMGSZ, IMGSZ)), tmp_path, model, lambda m: None)
    quantizer = onnx_export.Quantizer(onnx_export.convert_fp32(model, IMGSZ, IMGSZ), job.calibration(), tmp_path)
    val = load_images(source.val, IMGSZ, IMGSZ, source.resize).astype(np.float32)

    def scores(data):
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return sess.run(None, {onnx_export.INPUT_NAME: val})[0]

    def weights(data):
        return {t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(data).graph.initializer}

    try:
        reference = scores(quantizer.model.SerializeToString())
        for fmt in ("QDQ", "QOperator"):
            recipe = Recipe("onnxruntime", fmt, "minmax", CALIB, 8, True, 8, (), "uint8")
            nearest = quantizer.quantize(recipe)
            rounded = rounding.onnx(nearest, quantizer.model, job.calibration().images, onnx_export.INPUT_NAME)
            assert quantizer.quantize(replace(recipe, weight_rounding="gptq")) == rounded  # the recipe's way
            assert len(rounded) == len(nearest), fmt
            before, after = weights(nearest), weights(rounded)
            changed = [k for k in before if not np.array_equal(before[k], after[k])]
            assert len(changed) >= 20 and all(before[k].dtype == np.int8 for k in changed), (fmt, changed[:3])
            assert max(int(np.abs(after[k].astype(int) - before[k]).max()) for k in changed) <= 8
            assert [n.op_type for n in onnx.load_from_string(rounded).graph.node] == \
                [n.op_type for n in onnx.load_from_string(nearest).graph.node]
            kl_nearest, kl_rounded = kl_divergence(reference, scores(nearest)), kl_divergence(reference, scores(rounded))
            assert kl_rounded < 0.8 * kl_nearest, (fmt, kl_rounded, kl_nearest)
    finally:
        quantizer.close()


def test_recipe_is_recorded_and_read_back_by_run(exported, hymenoptera, tmp_path):
    bundle = load_bundle(exported.out_dir)
    for name in ("tflite-int8", "onnx-int8"):
        art = bundle.artifact(name)
        chosen = [t for t in art.search if t["outcome"] == "chosen"]
        assert art.recipe is not None and len(chosen) == 1 and art.recipe.label() == chosen[0]["label"]
        assert chosen[0]["p50_ms"] > 0 and chosen[0]["bytes"] > 0
    # ONNX: the three int8 formats were timed here before one was chosen (--max-drop 100: the fastest)
    onnx_trials = bundle.artifact("onnx-int8").search
    assert {t["recipe"]["quant_format"] + t["recipe"]["activation_type"] for t in onnx_trials[:3]} == {
        "QDQuint8", "QOperatoruint8", "QDQint8"}
    fastest = min(onnx_trials[:3], key=lambda t: t["p50_ms"])
    chosen = [t for t in onnx_trials if t["outcome"] == "chosen"][0]
    # the fastest format, bias-corrected (the probe as ONNX Runtime left it is ranked after it)
    assert chosen["recipe"] == dict(fastest["recipe"], bias_correction=True), (chosen, fastest)
    assert next(t for t in onnx_trials if t["label"] == fastest["label"])["outcome"] == \
        "within budget, not bias-corrected"
    for name in ("tflite-int8", "onnx-int8"):  # the default search corrects biases; the record says so
        assert bundle.artifact(name).recipe.bias_correction and "bias-corrected" in bundle.artifact(name).recipe.label()
    assert bundle.artifact("tflite-int8").recipe.quantizer == "tflite-converter"
    assert bundle.artifact("onnx-int8").recipe.quantizer == "onnxruntime"
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted((hymenoptera / "val" / "ants").iterdir())[:2]:
        shutil.copy(p, folder / p.name)
    proc = edgeclf_cli("run", str(exported.out_dir), "--source", str(folder), "--headless")
    assert f"quantized: {bundle.artifact('tflite-int8').recipe.label()}" in proc.stderr


@INT8_DRIFT
def test_qat_fine_tunes_and_keeps_the_accuracy(run_dir, hymenoptera, tmp_path):
    """--qat: fake-quant fine-tuning under tf_keras, ranges started from the calibration images; the ONNX
    int8 model is the same QAT model carried over (QDQ, uint8 activations), trained once for both."""
    out = tmp_path / "qat"
    res = CliRunner().invoke(main, ["export", str(run_dir), "--out", str(out), "--int8", "--qat", "--qat-epochs", "3",
                                    "--formats", "tflite-fp32,tflite-int8,onnx-int8", "--calib-images", str(CALIB),
                                    "--max-drop", "100"])
    assert res.exit_code == EXIT_OK, res.output
    assert res.output.count("QAT: done") == 1 and "tf_keras rebuild max |dp|" in res.output
    bundle = load_bundle(out)
    assert bundle.source.get("qat") is True
    fp32, int8 = bundle.artifact("tflite-fp32"), bundle.artifact("tflite-int8")
    assert fp32.val_top1 > 0.75  # the trained model is a real one
    # QAT trains on: on this small under-trained model it moves predictions (measured +2.6 to +7.2 pt over
    # unseeded runs; benchmarks/results/quantization.md has a real model), but never collapses
    assert int8.extra["drop_pt"] <= 8.0 and int8.extra["agreement"] >= 0.85, int8.extra
    # the file is a full-integer model, fake quantization folded into real int8 kernels
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(out / "model_int8.tflite"))
    assert it.get_input_details()[0]["dtype"] == np.uint8 or it.get_input_details()[0]["dtype"] == np.int8
    kinds = {d["dtype"] for d in it.get_tensor_details() if d["name"] and "conv" in d["name"].lower()}
    assert np.int8 in kinds
    # ONNX: the QAT model, not a post-training quantization, and it predicts as the TFLite one does
    onnx_int8 = bundle.artifact("onnx-int8")
    assert onnx_int8.recipe.quantizer == "tfmot-qat" and onnx_int8.recipe.format_label() == "QDQ U8S8"
    assert onnx_int8.search[0]["outcome"] == "chosen" and onnx_int8.extra["qat"] == int8.extra["qat"]
    # TFLite: the QAT model is the first candidate of the search too, chosen (the budget here is 100 pt)
    assert int8.recipe.quantizer == "tfmot-qat" and int8.search[0]["outcome"] == "chosen", int8.search
    from edgeclf.runtime.backends import open_backend
    from edgeclf.runtime.model import resolve_model

    tfl = open_backend(resolve_model(out, artifact="model_int8.tflite"), "litert").load()
    ort_ = open_backend(resolve_model(out, artifact="model_int8.onnx"), "onnxruntime").load()
    from edgeclf.convert.calibration import load_images
    from edgeclf.data.dataset import scan

    val = scan(hymenoptera).val
    images = load_images(val, tfl.height, tfl.width, bundle.input.resize)
    same = np.mean([tfl.predict(im[None]).argmax() == ort_.predict(im[None]).argmax() for im in images])
    assert same >= 0.97, same
    assert abs(onnx_int8.val_top1 - int8.val_top1) <= 0.02


def test_killed_write_leaves_nothing_that_looks_complete(run_dir, tmp_path, monkeypatch):
    from edgeclf import fsutil

    out = tmp_path / "export"
    out.mkdir()
    (out / CONTRACT_FILE).write_text('{"stale": true}')

    def killed(fd):
        raise KeyboardInterrupt  # the process dies while the model's bytes are being flushed

    monkeypatch.setattr(fsutil.os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        export_model(ExportOptions(target=run_dir, out=out, formats="tflite-fp32"))
    assert not (out / "model_fp32.tflite").exists()
    assert not (out / CONTRACT_FILE).exists()  # the old contract must not describe a half-done export
    assert list(out.iterdir()) == []


def test_bare_keras_model_with_data(run_dir, tmp_path, hymenoptera):
    model = tmp_path / "m.keras"
    shutil.copy(run_dir / "weights" / "best.keras", model)
    (tmp_path / "labels.txt").write_text("ants\nbees\n")
    res = CliRunner().invoke(main, ["export", str(model), "--data", str(hymenoptera), "--formats", "tflite-fp32",
                                    "--labels", str(tmp_path / "labels.txt")])
    assert res.exit_code == 0, res.output
    bundle = load_bundle(tmp_path / "export")
    assert bundle.classes == ["ants", "bees"] and bundle.input.height == IMGSZ
    assert bundle.artifact("tflite-fp32").val_top1 > 0.7


def test_format_selection():
    from edgeclf.convert.formats import select_formats
    from edgeclf.errors import EdgeclfError

    names = lambda spec, int8: [f.name for f in select_formats(spec, int8)]
    assert names(None, False) == ["tflite-fp32", "tflite-fp16", "tflite-dynamic", "onnx-fp32"]
    assert names(None, True)[-1] == "onnx-int8" and len(names(None, True)) == 6
    assert names("onnx,tflite-fp32", True) == ["tflite-fp32", "onnx-fp32", "onnx-int8"]  # table order
    assert names("tflite", False) == ["tflite-fp32", "tflite-fp16", "tflite-dynamic"]
    with pytest.raises(EdgeclfError, match="needs --int8"):
        select_formats("onnx-int8", False)


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "no such run folder or model file"),
    (["{corrupt}"], "not a readable .keras model"),
    (["{bare}"], "give --data DATA"),
    (["{run}", "--formats", "tflite-int8"], "needs --int8"),
    (["{run}", "--formats", "coreml"], "unknown format 'coreml'"),
    (["{notrun}"], "not an edgeclf run folder"),
])
def test_bad_inputs_give_one_line_errors(args, message, run_dir, tmp_path):
    corrupt_run = tmp_path / "corrupt"
    shutil.copytree(run_dir, corrupt_run, ignore=shutil.ignore_patterns("export"))
    (corrupt_run / "weights" / "best.keras").write_bytes(b"PK\x03\x04 truncated")
    bare = tmp_path / "m.keras"
    shutil.copy(run_dir / "weights" / "best.keras", bare)
    (tmp_path / "notrun").mkdir()
    paths = {"missing": tmp_path / "nope", "corrupt": corrupt_run, "bare": bare, "run": run_dir,
             "notrun": tmp_path / "notrun"}
    res = CliRunner().invoke(main, ["export"] + [a.format(**paths) for a in args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ") and message in lines[-1], res.output
    assert "Traceback" not in res.output


def test_corrupt_keras_with_valid_zip_header_is_one_line(run_dir, tmp_path):
    bad = tmp_path / "run"
    shutil.copytree(run_dir, bad, ignore=shutil.ignore_patterns("export"))
    with zipfile.ZipFile(bad / "weights" / "best.keras", "w") as zf:
        zf.writestr("config.json", "{not json")
    res = CliRunner().invoke(main, ["export", str(bad), "--formats", "tflite-fp32"])
    assert res.exit_code == 2 and "Keras cannot load this model" in res.output, res.output


@pytest.mark.parametrize("model, size, formats", [
    ("efficientnet_b0", 32, "tflite-fp32,tflite-int8,onnx-fp32"),
    ("inception_resnet_v2", 75, "tflite-fp32"),  # 54 M parameters: one format keeps the suite fast
])
def test_other_backbones_export_end_to_end(model, size, formats, tmp_path):
    from export_helpers import build_run

    run = build_run(tmp_path / "run", model=model, imgsz=size, weights="none", epochs=0)
    result = export_model(ExportOptions(target=run, int8="int8" in formats, formats=formats, calib_images=16,
                                        max_drop=100.0, verify_images=32))
    bundle = load_bundle(run / "export")
    assert [a.name for a in bundle.artifacts] == formats.split(",")
    assert result.exit_code in (EXIT_OK, EXIT_DROP)
    fp32 = bundle.artifact("tflite-fp32")
    assert fp32.extra["agreement"] == 1.0 and bundle.source["reference"]["keras_max_abs_diff"] < 1e-3
    if "onnx-fp32" in formats:
        assert bundle.artifact("onnx-fp32").extra["agreement"] >= 0.95


# --- TFLite metadata, read by an independent reader ----------------------------------------------------

@pytest.fixture(scope="session")
def google_metadata_schema():
    """Google's generated reader of metadata_schema.fbs (flatc output shipped in tflite-support 0.4.4),
    taken from the wheel without installing it (tflite-support pins protobuf < 4, TensorFlow needs >= 6)."""
    import importlib.util
    import subprocess
    import tempfile

    member = "tensorflow_lite_support/metadata/metadata_schema_py_generated.py"
    cache = Path(tempfile.gettempdir()) / "edgeclf-tflite-support-0.4.4"
    target = cache / "metadata_schema_py_generated.py"
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                               "--python-version", "3.11", "--platform", "manylinux2014_x86_64",
                               "tflite-support==0.4.4", "-d", str(cache)], capture_output=True, text=True, timeout=600)
        wheels = list(cache.glob("tflite_support-*.whl"))
        if proc.returncode != 0 or not wheels:
            pytest.fail(f"cannot fetch tflite-support 0.4.4 from the package index: {proc.stderr[-500:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            target.write_bytes(zf.read(member))
        wheels[0].unlink()
    spec = importlib.util.spec_from_file_location("metadata_schema_py_generated", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tflite_metadata_agrees_with_googles_reader(exported, google_metadata_schema):
    from edgeclf.convert.metadata import TFLITE_METADATA, _tflite_metadata_entries, read_tflite_metadata

    fb = google_metadata_schema
    for file in ("model_fp32.tflite", "model_int8.tflite"):
        data = (exported.out_dir / file).read_bytes()
        raw = _tflite_metadata_entries(data)[TFLITE_METADATA]
        ours = read_tflite_metadata(data)["metadata"]
        theirs = fb.ModelMetadataT.InitFromPackedBuf(bytearray(raw), 0)
        assert theirs.name.decode() == ours["name"] and theirs.minParserVersion.decode() == ours["min_parser_version"]
        assert [f.name.decode() for f in theirs.associatedFiles] == ["edgeclf.json"]
        (sg,) = theirs.subgraphMetadata
        (inp,), (out,) = sg.inputTensorMetadata, sg.outputTensorMetadata
        assert inp.content.contentPropertiesType == fb.ContentProperties.ImageProperties
        assert inp.content.contentProperties.colorSpace == fb.ColorSpaceType.RGB
        size = inp.content.contentProperties.defaultSize
        assert (size.width, size.height) == (IMGSZ, IMGSZ) == ours["subgraphs"][0]["inputs"][0]["default_size"]
        (unit,) = inp.processUnits
        assert unit.optionsType == fb.ProcessUnitOptions.NormalizationOptions
        assert list(unit.options.mean) == [0.0] and list(unit.options.std) == [1.0]  # raw pixels: normalised inside
        assert list(inp.stats.max) == [255.0] and list(inp.stats.min) == [0.0]
        assert out.content.contentPropertiesType == fb.ContentProperties.FeatureProperties
        (labels,) = out.associatedFiles
        assert labels.name.decode() == LABELS_FILE and labels.type == fb.AssociatedFileType.TENSOR_AXIS_LABELS


def test_train_and_export_print_no_tensorflow_chatter(small_run, exported):
    """What `edgeclf train` and `edgeclf export` printed for the session's run (conftest.py keeps it):
    no TensorFlow, absl, XLA or CUDA log lines, no converter prints, no Python warnings."""
    import re

    train_log = (small_run.parent / "train.log").read_text()
    for text in (train_log, exported.log):
        assert text.strip()  # something was printed: progress, tables
        for line in text.splitlines():
            assert not re.match(r"^[IWEF]\d{4} |^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] ", line), line
            low = line.lower()
            for word in ("absl", "cuda", "cuinit", "onednn", "xnnpack delegate", "fully_quantize", "userwarning",
                         "deprecat", "tensorflow/", "tf_tfl"):
                assert word not in low, line
    assert "val top-1" in train_log and "verifying on" in exported.log


@INT8_DRIFT
def test_temperature_calibrates_an_over_confident_model_in_every_format(run_dir, exported, tmp_path):
    """Training fits a temperature on validation and the default export folds it into every file; a model
    made over-confident on purpose (its logits times 4) gets a temperature that lowers its calibration error,
    and every exported format and backend gives the same calibrated scores."""
    import keras

    from edgeclf import temperature
    from edgeclf.convert.calibration import load_images
    from edgeclf.runtime import ModelRef, open_backend

    val = resolve_val(run_dir)
    images = load_images(val, IMGSZ, IMGSZ, "bilinear")
    labels = np.array([s.label for s in val])
    trained = keras.saving.load_model(run_dir / "weights" / "best.keras", compile=False)
    raw = np.asarray(trained.predict(images.astype(np.float32), batch_size=64, verbose=0))

    # the session's export carries the temperature training fitted (report.json), folded into the model
    report = json.loads((run_dir / "report.json").read_text())
    t_run = report["calibration"]["temperature"]
    assert report["calibration"]["fitted_on"] == "validation" and t_run != 1.0
    bundle = load_bundle(exported.out_dir)
    assert bundle.source["temperature"] == t_run
    p32 = open_backend(ModelRef.from_bundle(bundle, "tflite-fp32"), threads=2).predict(images)
    np.testing.assert_allclose(p32, temperature.scale(raw, t_run), atol=1e-4)

    over = tmp_path / "over"
    shutil.copytree(run_dir, over, ignore=shutil.ignore_patterns("export", "bench*"))
    last = trained.layers[-1]
    last.set_weights([w * 4 for w in last.get_weights()])
    trained.save(over / "weights" / "best.keras")
    p_over = temperature.scale(raw, 0.25)  # the over-confident model's scores
    cal = temperature.calibrate(p_over, labels, "validation")
    t = cal["temperature"]
    assert t == pytest.approx(4 * t_run, rel=0.05)
    assert cal["ece_after"] < 0.7 * cal["ece_before"] and cal["nll_after"] < 0.5 * cal["nll_before"], cal

    out = tmp_path / "e"
    formats = "tflite-fp32,tflite-fp16,tflite-int8,onnx-fp32,onnx-int8"
    result = export_model(ExportOptions(target=over, out=out, int8=True, formats=formats, search="none",
                                        calib_images=CALIB, temperature=t))
    assert result.exit_code == EXIT_OK, result.failures
    bundle = load_bundle(out)
    assert bundle.source["temperature"] == t and len(bundle.artifacts) == 5
    want = temperature.scale(p_over, t)
    for art in bundle.artifacts:
        got = open_backend(ModelRef.from_bundle(bundle, art), threads=2).predict(images)
        diff = np.abs(got - want).mean()
        assert diff < (1e-4 if art.precision == "fp32" else 0.01 if art.precision == "fp16" else 0.04), (art.name, diff)
        assert temperature.ece(got, labels) < 0.7 * cal["ece_before"], art.name
