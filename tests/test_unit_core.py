"""Fast unit tier: metrics, the contract, calibration/selection sampling, collapse detection, the input
LUT, logging's noise filter, the CLI's error lines, the data set fetcher. No TensorFlow, no training."""
from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from edgeclf import metrics
from edgeclf.contract import Artifact, Bundle, ContractError, InputSpec, Recipe, TensorSpec, bundle_from_dict
from edgeclf.errors import EdgeclfError


# --- metrics ---------------------------------------------------------------------------------------------

def test_classification_report_on_known_counts():
    # 3 classes; truth 0,0,1,1,2,2 ; predicted 0,1,1,1,2,0
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]]
    rep = metrics.classification_report(probs, y, ["a", "b", "c"])
    assert rep["top1"] == pytest.approx(4 / 6)
    assert rep["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert rep["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert rep["per_class"]["b"]["precision"] == pytest.approx(0.6667, abs=1e-4)
    assert rep["per_class"]["c"] == {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}
    assert rep["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert "top5" not in rep


def test_top5_only_with_more_than_five_classes():
    rng = np.random.default_rng(0)
    probs = rng.random((50, 7))
    y = rng.integers(0, 7, 50)
    rep = metrics.classification_report(probs, y, list("abcdefg"))
    top5 = np.argsort(-probs, axis=1)[:, :5]
    assert rep["top5"] == pytest.approx(float((top5 == y[:, None]).any(axis=1).mean()))


def test_compare_top1_agreement_and_drop():
    labels = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 0])
    ref = np.array([0, 1, 1, 0, 1, 0, 0, 1, 0, 1])  # 8/10
    pred = np.array([0, 1, 0, 0, 1, 0, 1, 1, 0, 0])  # 7/10, differs from ref on 3 images
    cmp = metrics.compare(pred, labels, ref)
    assert (cmp.top1, cmp.agreement, cmp.drop_pt) == (0.7, 0.7, 10.0)
    assert metrics.compare(pred, labels) == metrics.Comparison(0.7, None, None)


# --- the contract ------------------------------------------------------------------------------------------

def test_recipe_and_search_survive_the_json_round_trip():
    recipe = Recipe("onnxruntime", "QOperator", "percentile", 300, 7, True, 8, ("Conv_0", "Gemm_3"), "uint8")
    art = Artifact("model_int8.onnx", "onnx", "int8", 10, "ab", TensorSpec("float32"), TensorSpec("float32"), 0.9,
                   {"drop_pt": 0.2}, recipe, [{"label": recipe.label(), "selection_drop_pt": 0.1}])
    bundle = Bundle(["ants", "bees"], InputSpec(96, 96), [art])
    back = bundle_from_dict(json.loads(json.dumps(bundle.to_dict())))
    assert back.artifacts[0].recipe == recipe
    assert back.artifacts[0].search == art.search
    assert recipe.label() == "QOperator U8S8 percentile/300 w7 per-channel a8, 2 float"
    assert Recipe("tflite-converter", None, "minmax", 64).label() == "minmax/64 w8 per-channel a8"
    old = bundle.to_dict()
    del old["artifacts"][0]["recipe"], old["artifacts"][0]["search"]  # written by an older edgeclf
    assert bundle_from_dict(old).artifacts[0].recipe is None


def test_newer_schema_is_refused_in_one_line():
    d = Bundle(["a", "b"], InputSpec(8, 8)).to_dict()
    d["schema"] = 99
    with pytest.raises(ContractError, match="newer than this edgeclf understands"):
        bundle_from_dict(d)


# --- calibration and selection -----------------------------------------------------------------------------

def _samples(counts: dict[int, int]):
    from edgeclf.data.dataset import Sample

    return [Sample(f"/x/{c}/{i}.jpg", c, "train") for c, n in counts.items() for i in range(n)]


def test_stratified_sample_keeps_class_shares_and_is_seeded():
    from edgeclf.convert.calibration import stratified_sample

    pool = _samples({0: 300, 1: 100, 2: 10})
    picked = stratified_sample(pool, 41, seed=3)
    counts = np.bincount([s.label for s in picked], minlength=3)
    assert len(picked) == 41 and len({s.path for s in picked}) == 41
    assert counts.tolist() == [30, 10, 1]
    assert [s.path for s in stratified_sample(pool, 41, seed=3)] == [s.path for s in picked]
    assert [s.path for s in stratified_sample(pool, 41, seed=4)] != [s.path for s in picked]
    assert len(stratified_sample(pool, 10_000)) == len(pool)


def test_selection_and_calibration_are_disjoint_and_stratified():
    from edgeclf.convert.calibration import split_training

    pool = _samples({0: 200, 1: 100})
    calib, sel = split_training(pool, 60, 90, seed=0)
    assert len(calib) == 60 and len(sel) == 90
    assert not {s.path for s in calib} & {s.path for s in sel}
    assert np.bincount([s.label for s in sel]).tolist() == [60, 30]
    small = _samples({0: 30, 1: 20})  # a small training split: selection takes at most half
    calib, sel = split_training(small, 300, 500)
    assert len(sel) == 25 and len(calib) == 25 and not {s.path for s in calib} & {s.path for s in sel}
    calib, sel = split_training(small, 300, 0)  # --search none: no selection images
    assert sel == [] and len(calib) == 50
    with pytest.raises(EdgeclfError, match="--calib-images must be at least 1"):
        split_training(small, 0, 10)


# --- collapse detection --------------------------------------------------------------------------------

def test_verification_counts_lost_and_gained_images_and_says_if_the_drop_is_chance():
    from edgeclf.convert.verify import assess, significance

    labels = np.array([0, 1] * 50)
    ref = labels.copy()
    ref[:6] = 1 - ref[:6]  # the float model: 94 % right
    pred = ref.copy()
    pred[10:15] = 1 - pred[10:15]  # 5 right answers lost ...
    pred[0] = labels[0]  # ... 1 wrong one gained: drop 4 pt
    probs = np.eye(2)[pred]
    v = assess("tflite-int8", probs, labels, ["a", "b"], ref)
    assert (v.lost, v.gained, v.drop_pt) == (5, 1, 4.0)
    assert v.p_value == pytest.approx(2 * 7 / 64)  # exact two-sided binomial: 2 * P(X <= 1), X ~ Bin(6, 1/2)
    text = significance(v.lost, v.gained, v.p_value, 100)
    assert text.startswith("5 images lost and 1 gained of 100; McNemar p 0.22") and "not distinguishable" in text
    pred[20:40] = 1 - pred[20:40]  # 20 more lost: a real loss
    v = assess("tflite-int8", np.eye(2)[pred], labels, ["a", "b"], ref)
    assert v.lost == 25 and "a real loss" in significance(v.lost, v.gained, v.p_value, 100)
    assert significance(None, None, None, 100) == ""


def test_collapse_is_one_class_or_chance_judged_against_the_reference():
    from edgeclf.convert.verify import collapse_reason

    classes = ["a", "b", "c", "d"]
    labels = np.arange(400) % 4
    one_class = np.zeros(400, int)
    assert "predicts 'a' for 100%" in collapse_reason(one_class, labels, 4, 0.25, 0.9, classes, 0.25)
    # the trained model itself predicts one class: the export is faithful, not collapsed
    assert collapse_reason(one_class, labels, 4, 0.25, 0.25, classes, 1.0) is None
    rng = np.random.default_rng(0)
    at_chance = rng.integers(0, 4, 400)  # spread over classes, accuracy ~25 %
    top1 = float((at_chance == labels).mean())
    assert "at chance" in collapse_reason(at_chance, labels, 4, top1, 0.9, classes, 0.25)
    good = labels.copy()
    good[:40] = (good[:40] + 1) % 4
    assert collapse_reason(good, labels, 4, 0.9, 0.92, classes, 0.25) is None
    # a data set where one class really is 95 %: predicting it everywhere is not flagged as collapse
    skewed = np.array([0] * 96 + [1] * 4)
    assert collapse_reason(np.zeros(100, int), skewed, 2, 0.96, 0.97, ["a", "b"], 0.97) is None


# --- the runtime's input quantization ------------------------------------------------------------------

@pytest.mark.parametrize("spec, pixel, expected", [
    (TensorSpec("uint8", 1.0, 0), 200, 200),  # camera pixels as they are
    (TensorSpec("int8", 1.0, -128), 200, 72),  # shifted
    (TensorSpec("int8", 0.5, 0), 200, 127),  # clipped at the type's max
    (TensorSpec("uint8", 2.0, 10), 7, 14),  # round(3.5) + 10 = 14 (round half to even: 4)
])
def test_input_lut_is_the_quantization_formula(spec, pixel, expected):
    from edgeclf.runtime.backends import dequantize, input_lut

    lut = input_lut(spec)
    assert lut.dtype == np.dtype(spec.dtype) and lut.shape == (256,)
    assert int(lut[pixel]) == expected
    q = np.array([expected], dtype=spec.dtype)
    assert dequantize(q, spec)[0] == pytest.approx((expected - spec.zero_point) * spec.scale)
    assert input_lut(TensorSpec("float32")) is None


# --- logging: TensorFlow's native chatter is dropped, everything else passes --------------------------

NATIVE_LINES = [
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    b"I0000 00:00:1795942916.909843    3506 port.cc:153] oneDNN custom operations are on.\n",
    b"E0000 00:00:1795942920.753443    3506 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n",
    b"2026-11-29 09:01:02.123456: I tensorflow/core/util/port.cc:113] oneDNN custom operations are on\n",
    b"fully_quantize: 0, inference_type: 6, input_inference_type: UINT8, output_inference_type: UINT8\n",
    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n",
    b"W0000 00:00:1795942916.9 123 tf_tfl_flatbuffer_helpers.cc:364] Ignored output_format.\n",
]
KEPT_LINES = [b"error: /nope: no such run folder or model file\n", b"warning: calibrating on 64 images\n",
              b"exporting tflite-int8 -> model_int8.tflite\n", b"  indented line of ours\n"]


def test_native_noise_pattern():
    from edgeclf.log import NATIVE_NOISE

    for line in NATIVE_LINES:
        assert NATIVE_NOISE.match(line), line
    for line in KEPT_LINES:
        assert not NATIVE_NOISE.match(line), line


def test_native_stderr_filter_drops_noise_in_a_real_process(tmp_path):
    """A process whose fd 2 gets TensorFlow-style lines (from C, i.e. os.write) and ours."""
    script = tmp_path / "p.py"
    script.write_text(
        "import os, sys\n"
        "from edgeclf import log\n"
        "assert log.quiet_native_stderr()\n"
        f"for line in {NATIVE_LINES!r} + {KEPT_LINES!r}:\n"
        "    os.write(2, line)\n"
        "print('stdout is untouched')\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines(keepends=True) == KEPT_LINES
    assert proc.stdout == b"stdout is untouched\n"


def test_cli_errors_are_one_line_and_debug_shows_the_cause(tmp_path):
    from click.testing import CliRunner

    from edgeclf import log
    from edgeclf.cli import main

    res = CliRunner().invoke(main, ["export", str(tmp_path / "nope")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [f"error: {tmp_path / 'nope'}: no such run folder or model file"]
    try:
        res = CliRunner().invoke(main, ["export", "--debug", str(tmp_path / "nope")])
        assert res.exit_code == 2
        assert "Traceback" in res.output and "resolve_source" in res.output
        assert res.output.strip().splitlines()[-1].startswith("error: ")
    finally:
        log.settings.debug = False


# --- the data set fetcher -------------------------------------------------------------------------------

def _tgz(folder_name: str, files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{folder_name}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture()
def tiny_archive(monkeypatch, tmp_path):
    from edgeclf import datasets

    data = _tgz("tiny", {"a/1.jpg": b"one", "b/2.jpg": b"two"})
    archive = datasets.Archive("tiny", "http://127.0.0.1:9/tiny.tgz", "tiny.tgz", hashlib.sha256(data).hexdigest(),
                               len(data))
    monkeypatch.setitem(datasets.ARCHIVES, "tiny", archive)
    monkeypatch.setenv("EDGECLF_CACHE", str(tmp_path / "cache"))
    return archive, data


def test_fetch_offline_names_the_url_and_the_folder(tiny_archive, tmp_path):
    from edgeclf import datasets

    with pytest.raises(EdgeclfError) as err:
        datasets.fetch("tiny")
    msg = str(err.value)
    assert "http://127.0.0.1:9/tiny.tgz" in msg and str(tmp_path / "cache") in msg and "tiny.tgz" in msg
    assert "\n" not in msg
    assert not list((tmp_path / "cache").glob("*.part"))


def test_fetch_downloads_checks_and_extracts_once(tiny_archive, tmp_path):
    from edgeclf import datasets

    archive, data = tiny_archive
    served = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            served.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/tiny.tgz"
        folder = datasets.fetch("tiny", url=url)
        assert folder == tmp_path / "cache" / "tiny" and (folder / "a" / "1.jpg").read_bytes() == b"one"
        assert datasets.fetch("tiny", url=url) == folder and served == ["/tiny.tgz"]  # cached: no second download
    finally:
        server.shutdown()


def test_fetch_uses_an_archive_put_in_the_cache_and_refuses_a_wrong_one(tiny_archive, tmp_path):
    from edgeclf import datasets

    archive, data = tiny_archive
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny.tgz").write_bytes(data[:-10])  # truncated
    with pytest.raises(EdgeclfError, match="sha256 .* is not the expected"):
        datasets.fetch("tiny")
    (cache / "tiny.tgz").write_bytes(data)  # offline, by hand: no network needed
    assert (datasets.fetch("tiny") / "b" / "2.jpg").read_bytes() == b"two"


def test_main_job_without_data_or_network_is_one_line(tmp_path):
    """scripts/main-job.sh in a clone with no ../shared beside it, offline: one line, non-zero, nothing set up."""
    import shutil

    repo = Path(__file__).resolve().parents[1]
    clone = tmp_path / "clone"
    clone.mkdir()
    for part in ("scripts", "edgeclf"):
        shutil.copytree(repo / part, clone / part)
    env = {k: v for k, v in os.environ.items() if k != "EDGECLF_DATA"}
    env.update(EDGECLF_CACHE=str(tmp_path / "cache"), EDGECLF_FLOWER_PHOTOS_URL="http://127.0.0.1:9/flower_photos.tgz")
    proc = subprocess.run(["bash", str(clone / "scripts" / "main-job.sh")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "http://127.0.0.1:9/flower_photos.tgz" in lines[0] and str(tmp_path / "cache") in lines[0]
    assert not (clone / ".venv").exists()  # failed before setting anything up


def test_first_line_of_an_exception_never_fails():
    from edgeclf.errors import first_line

    assert first_line(ValueError("")) == "ValueError"
    assert first_line(RuntimeError("\n  \n")) == "RuntimeError"
    assert first_line(OSError("\n  disk full \nmore")) == "disk full"
    cut = first_line(KeyError("x" * 300), 120)
    assert cut == "'" + "x" * 118 + "…" and len(cut) == 120
