"""`edgeclf bench` on real exports and real photos (hymenoptera val, 153 images), here and on a "device"
reached over real SSH.

The export is the session's (conftest.small_export: MobileNetV2 0.35 at 96 px, `edgeclf export --int8`,
six artifacts); the second export is the runtime tests' model (tests/runtime_models.py, 128 px, shared
cache). The device is this machine through a real OpenSSH server on 127.0.0.1 (tests/ssh_helpers.py)
with its own venv holding only edgeclf[runtime] (no TensorFlow): the main bench measures here and there
in one run, as a user with a Raspberry Pi would. Every number checked here is measured; there are no
timing assertions.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import INT8_DRIFT  # noqa: E402
from click.testing import CliRunner

from edgeclf.bench.report import CSV_COLUMNS
from edgeclf.cli import main
from edgeclf.contract import load_bundle

pytestmark = pytest.mark.slow
sys.path.insert(0, str(Path(__file__).parent))
import runtime_models  # noqa: E402
import ssh_helpers  # noqa: E402

IMGSZ = 96
FAST = ["--runs", "3", "--warmup", "1"]
TMP = Path(tempfile.gettempdir())


@pytest.fixture(scope="session")
def export_dir(small_export) -> Path:
    return small_export


@pytest.fixture(scope="session")
def second_export() -> Path:
    """The runtime tests' 128 px model (tflite fp32/int8, onnx fp32), same cache as tests/test_runtime.py."""
    out = TMP / f"edgeclf-runtime-models-{runtime_models.fixture_key(0.35, 128)}"
    if not (out / "DONE").is_file():
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run([sys.executable, str(Path(runtime_models.__file__)), str(out), "--size", "128"],
                              capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                              timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "export"


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1 (stopped at the end of the session)."""
    try:
        server = ssh_helpers.start_sshd(tmp_path_factory.mktemp("sshd"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def device_python() -> Path:
    """The device's interpreter: a venv with edgeclf[runtime] only (cached by source hash)."""
    return ssh_helpers.remote_venv(TMP)


# The bench as a user runs it, in a process of its own, which must never import TensorFlow.
NO_TF = r"""
import sys
from edgeclf.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code or 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
print("HEAVY:", heavy)
sys.exit(code)
"""


@pytest.fixture(scope="session")
def bench_out(export_dir, hymenoptera, sshd, device_python, tmp_path_factory):
    """One bench, here and on the SSH device, in a process that must never import TensorFlow."""
    out = tmp_path_factory.mktemp("bench") / "out"
    log = out.parent / "log.jsonl"
    before = set(TMP.glob("edgeclf-remote-*"))
    proc = subprocess.run([sys.executable, "-c", NO_TF, "bench", str(export_dir), "--data", str(hymenoptera),
                           "--out", str(out), "--runs", "20", "--warmup", "2", "--min-top1", "0.5", "--log", str(log),
                           "--remote", sshd.remote, "--remote-python", str(device_python),
                           "--ssh-config", str(sshd.config)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})
    return out, proc, set(TMP.glob("edgeclf-remote-*")) - before  # (the device's temp folders left behind)


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _local(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["device"] == "local"]


def test_bench_runs_without_tensorflow(bench_out):
    out, proc, _ = bench_out
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "HEAVY: []" in proc.stdout
    for col in ("Format", "Status", "Size", "top-1", "Δ", "McNemar p", "worst class", "p50 (95% CI)", "p90", "p99",
                "FPS", "cold ms", "RAM", "device by device"):
        assert col in proc.stdout, col
    assert "Traceback" not in proc.stderr


def test_files_have_one_row_per_artifact_and_backend(bench_out, export_dir, sshd):
    out, proc, _ = bench_out
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("bench.csv", "bench.json", "bench.md", "bench.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 200, name
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bundle = load_bundle(export_dir)
    with open(out / "bench.csv", newline="") as fh:
        assert next(csv.reader(fh)) == CSV_COLUMNS
    all_rows = _csv(out / "bench.csv")
    assert [r["device"] for r in all_rows] == ["local"] * 7 + [sshd.remote] * 7
    expected = [(a.name, "litert") for a in bundle.artifacts if a.format == "tflite"] + \
        [(a.name, b) for a in bundle.artifacts if a.format == "onnx" for b in
         (("onnxruntime", "opencv") if a.precision == "fp32" else ("onnxruntime",))]
    assert len(expected) == 7  # tflite fp32/fp16/dynamic/int8, onnx fp32 (two backends), onnx int8
    for device in ("local", sshd.remote):
        rows = [r for r in all_rows if r["device"] == device]
        assert sorted((r["format"], r["backend"]) for r in rows) == sorted(expected)
        assert all(r["status"] == "ok" for r in rows), [(r["format"], r["backend"], r["note"]) for r in rows]

    data = json.loads((out / "bench.json").read_text())
    assert len(data["rows"]) == len(all_rows)
    m = data["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["python"] and "onnxruntime" in m["versions"]
    assert "ai-edge-litert" in m["versions"] and m["threads"] == data["settings"]["threads"]
    assert data["settings"]["runs"] == 20 and data["settings"]["warmup"] == 2
    assert data["exports"][0]["reference"]["format"] == "tflite-fp32"
    assert set(data["exports"][0]["references"]) == {"local", sshd.remote}
    md = (out / "bench.md").read_text()
    assert ("| Device | Format | Backend | Status | Size | top-1 | Δ | McNemar p | worst class | p50 (95% CI) | p90 | "
            "p99 | FPS | cold ms | RAM | Recipe |") in md
    # the int8 rows show how export quantized them (edgeclf.json's recipe), read back on every device
    for r in all_rows:
        art = bundle.artifact(r["format"])
        assert r["recipe"] == (art.recipe.label() if art.recipe else ""), r
    assert bundle.artifact("tflite-int8").recipe.label() in md
    for a in bundle.artifacts:
        assert f"| local | {a.name} |" in md and f"| {sshd.remote} | {a.name} |" in md
    assert m["cpu"] in md and "bench.png" in md and f"p50 ms {sshd.remote}" in md


def test_numbers_agree_with_export_and_are_consistent(bench_out, export_dir):
    out, _, _ = bench_out
    bundle = load_bundle(export_dir)
    rows = _csv(out / "bench.csv")
    by = {(r["device"], r["format"], r["backend"]): r for r in rows}
    for r in rows:
        ref_top1 = float(by[(r["device"], "tflite-fp32", "litert")]["top1"])
        art = bundle.artifact(r["format"])
        n = int(r["val_images"])
        assert n == 153 == art.extra["val_images"]
        top1 = float(r["top1"])
        # the same images through the same runtime as export: the same top-1 (edgeclf.json rounds to 4 places)
        if r["backend"] != "opencv":
            assert top1 == pytest.approx(art.val_top1, abs=1e-4), (r["format"], top1, art.val_top1)
            assert abs(float(r["export_diff_pt"])) <= 0.01
            assert float(r["export_top1"]) == pytest.approx(art.val_top1)
        assert float(r["drop_pt"]) == pytest.approx((ref_top1 - top1) * 100, abs=0.011)
        assert 0.0 <= float(r["macro_f1"]) <= 1.0 and r["top5"] == ""  # two classes: no top-5
        p50, p90, p99 = (float(r[k]) for k in ("p50_ms", "p90_ms", "p99_ms"))
        assert 0 < float(r["min_ms"]) <= p50 <= p90 <= p99 <= float(r["max_ms"])
        assert float(r["min_ms"]) <= float(r["p50_ci_low_ms"]) <= p50 <= float(r["p50_ci_high_ms"])  # 20 runs: x(6)..x(15)
        assert float(r["fps"]) == pytest.approx(1000 / float(r["mean_ms"]), rel=1e-3)
        assert float(r["rss_peak_mib"]) >= float(r["rss_baseline_mib"]) > 0
        assert float(r["cold_start_ms"]) > float(r["load_ms"]) > 0 and float(r["import_ms"]) > 0 and r["engine"]
        assert int(r["size_bytes"]) == (export_dir / art.file).stat().st_size == art.bytes
        # McNemar's discordant images are the disagreements that change correctness
        b, c = int(r["only_reference_right"]), int(r["only_model_right"])
        assert b - c == round(float(r["drop_pt"]) * n / 100)
        assert b + c <= round((1 - float(r["agreement"])) * n)
        assert 0 < float(r["mcnemar_p"]) <= 1
        if b + c == 0:
            assert float(r["mcnemar_p"]) == 1.0
    for device in {r["device"] for r in rows}:
        fp32 = by[(device, "tflite-fp32", "litert")]
        assert float(fp32["drop_pt"]) == 0 and float(fp32["agreement"]) == 1.0
        assert float(fp32["worst_class_drop_pt"]) == 0 and float(fp32["mcnemar_p"]) == 1.0
        for key in (("onnx-fp32", "onnxruntime"), ("onnx-fp32", "opencv")):
            assert float(by[(device, *key)]["agreement"]) >= 0.99, key  # float formats: the same model
        # half-precision weights may flip an image whose fp32 top-2 are within rounding (test_export checks which)
        fp16 = by[(device, "tflite-fp16", "litert")]
        assert float(fp16["agreement"]) >= 0.98 and float(fp16["agreement"]) == \
            float(by[("local", "tflite-fp16", "litert")]["agreement"])
        for key in (("tflite-int8", "litert"), ("onnx-int8", "onnxruntime")):
            assert 0.8 <= float(by[(device, *key)]["agreement"]) <= 1.0, key
            assert by[(device, *key)]["worst_class"] in ("ants", "bees")
        # the int8 model holds less than the float one in memory (smaller weights), measured per process
        assert float(by[(device, "tflite-int8", "litert")]["rss_model_mib"]) < \
            float(by[(device, "tflite-fp32", "litert")]["rss_model_mib"])


def test_remote_device_measures_the_same_models(bench_out, sshd, device_python):
    """Same artifacts, same images, same runtime versions: the device's accuracy is the local one, to the image."""
    out, proc, leftovers = bench_out
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "bench.json").read_text())
    rows = data["rows"]
    local = {(r["format"], r["backend"]): r for r in rows if r["device"] == "local"}
    there = {(r["format"], r["backend"]): r for r in rows if r["device"] == sshd.remote}
    assert set(local) == set(there) and len(there) == 7
    for key, r in there.items():
        for field in ("top1", "macro_f1", "agreement", "drop_pt", "per_class", "mcnemar_p", "worst_class",
                      "size_bytes", "engine"):
            assert r[field] == local[key][field], (key, field, r[field], local[key][field])
    # the device's fingerprint, taken there by its own interpreter
    device = data["devices"][sshd.remote]
    assert device["python_executable"] == str(device_python)
    assert device["cpu"] and device["cores"] >= 1 and device["arch"] in ("x86", "arm") and device["features"]
    assert isinstance(device["int8_dot"], bool) and device["memory_mib"] > 0 and device["os"]
    for pkg in ("edgeclf", "onnxruntime", "ai-edge-litert", "opencv-python-headless", "numpy"):
        assert device["versions"][pkg] == data["machine"]["versions"][pkg], pkg
    assert "temps_c" in device and "governor" in device and "thermal_after" in device
    assert device["bytes_sent"] > 153 * 96 * 96 * 3  # the decoded images travelled, not the JPEGs
    # its temporary folder is gone, and nothing else was left behind
    assert device["workdir"] and device["workdir_removed"] is True and not Path(device["workdir"]).exists()
    assert not leftovers, leftovers
    # progress streamed as each job finished there
    assert f"[14/14] {sshd.remote} " in proc.stderr and f"{sshd.remote}: sent " in proc.stderr


def test_top1_recomputed_independently(bench_out, export_dir, hymenoptera):
    """The float model's top-1 and macro-F1, recomputed here through the runtime and the one decoder."""
    from edgeclf.data.dataset import scan
    from edgeclf.imageio import load_resized
    from edgeclf.metrics import classification_report
    from edgeclf.runtime import ModelRef, open_backend

    out, _, _ = bench_out
    bundle = load_bundle(export_dir)
    ds = scan(hymenoptera)
    images = np.stack([load_resized(s.path, IMGSZ, IMGSZ, bundle.input.resize) for s in ds.val])
    labels = np.array([bundle.classes.index(ds.classes[s.label]) for s in ds.val])
    backend = open_backend(ModelRef.from_bundle(bundle, "tflite-fp32"), backend="litert", threads=2)
    rep = classification_report(backend.predict(images), labels, bundle.classes)
    row = next(r for r in _csv(out / "bench.csv") if r["format"] == "tflite-fp32")
    assert float(row["top1"]) == pytest.approx(rep["top1"], abs=1e-6)
    assert float(row["macro_f1"]) == pytest.approx(rep["macro_f1"], abs=1e-6)
    per_class = json.loads((out / "bench.json").read_text())["rows"][0]["per_class"]
    assert per_class == json.loads(json.dumps(rep["per_class"]))


def test_log_appends_one_line_per_run(bench_out, sshd):
    out, _, _ = bench_out
    lines = (out.parent / "log.jsonl").read_text().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["out"] == str(out) and len(entry["rows"]) == 14 and entry["machine"]["cpu"]
    assert set(entry["devices"]) == {"local", sshd.remote}


def test_min_top1_gate_and_thread_sweep(export_dir, hymenoptera, tmp_path):
    runner = CliRunner()
    high = runner.invoke(main, ["bench", str(export_dir), "--data", str(hymenoptera), "--out", str(tmp_path / "a"),
                                "--backends", "litert", "--threads", "1,2", "--min-top1", "0.99",
                                "--log", str(tmp_path / "log.jsonl"), *FAST])
    assert high.exit_code == 3, high.output
    rows = _csv(tmp_path / "a" / "bench.csv")
    assert {r["backend"] for r in rows} == {"litert"} and sorted({r["threads"] for r in rows}) == ["1", "2"]
    assert len(rows) == 2 * 4  # four TFLite artifacts x two thread counts
    assert all(r["status"] == "below --min-top1" for r in rows)  # a 0.35 model at 96 px is far from 99 %
    for fmt in {r["format"] for r in rows}:  # accuracy does not depend on the thread count
        assert len({r["top1"] for r in rows if r["format"] == fmt}) == 1
    low = runner.invoke(main, ["bench", str(export_dir), "--data", str(hymenoptera), "--out", str(tmp_path / "b"),
                               "--backends", "litert", "--min-top1", "0.5", "--log", str(tmp_path / "log.jsonl"),
                               *FAST])
    assert low.exit_code == 0, low.output
    assert all(r["status"] == "ok" for r in _csv(tmp_path / "b" / "bench.csv"))
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 2


def test_two_exports_one_table(export_dir, second_export, hymenoptera, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default --out runs/bench/exp and --log runs/bench/bench_log.jsonl
    runner = CliRunner()
    for expected, backends in (("exp", "litert,onnxruntime"), ("exp2", "litert")):  # the second only for its name
        result = runner.invoke(main, ["bench", str(export_dir), str(second_export), "--data", str(hymenoptera),
                                      "--backends", backends, *FAST])
        assert result.exit_code == 0, result.output
        assert (tmp_path / "runs" / "bench" / expected / "bench.csv").is_file()
    assert len((tmp_path / "runs" / "bench" / "bench_log.jsonl").read_text().splitlines()) == 2
    out = tmp_path / "runs" / "bench" / "exp"
    rows = _csv(out / "bench.csv")
    first, second = load_bundle(export_dir), load_bundle(second_export)
    assert len(rows) == len(first.artifacts) + len(second.artifacts)
    assert {r["imgsz"] for r in rows} == {"96", "128"} and len({r["model"] for r in rows}) == 2
    assert all(r["status"] == "ok" for r in rows)
    md = (out / "bench.md").read_text()
    assert "| Model | Format | Backend | Status |" in md
    data = json.loads((out / "bench.json").read_text())
    assert [e["input"]["height"] for e in data["exports"]] == [96, 128]
    # the second export's float reference is its own fp32 model
    assert all(e["reference"]["format"] == "tflite-fp32" for e in data["exports"])
    r128 = [r for r in rows if r["imgsz"] == "128"]
    assert float(next(r for r in r128 if r["format"] == "tflite-fp32")["drop_pt"]) == 0


@INT8_DRIFT
def test_opencv_runs_the_int8_onnx_model_like_onnxruntime(export_dir, hymenoptera, tmp_path):
    """OpenCV DNN on the int8 ONNX model, QDQ or QOperator (OpenCV 5's classic engine runs QDQ graphs its
    new engine refuses): it loads and agrees with ONNX Runtime within a point or two."""
    result = CliRunner().invoke(main, ["bench", str(export_dir), "--data", str(hymenoptera), "--out", str(tmp_path),
                                       "--backends", "opencv,onnxruntime", "--log", "", *FAST])
    assert result.exit_code == 0, result.output
    rows = {(r["format"], r["backend"]): r for r in _csv(tmp_path / "bench.csv")}
    assert set(rows) == {(f, b) for f in ("onnx-fp32", "onnx-int8") for b in ("opencv", "onnxruntime")}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    cv, ort = float(rows[("onnx-fp32", "opencv")]["top1"]), float(rows[("onnx-fp32", "onnxruntime")]["top1"])
    assert abs(cv - ort) <= 0.02, (cv, ort)  # float: the same arithmetic
    # int8: OpenCV's classic engine and ONNX Runtime's int8 kernels are two approximations of the float model.
    # Export corrects the int8 biases against ONNX Runtime's outputs, so ONNX Runtime is the more faithful of
    # the two (on this tiny model it changes about 1-2 % of the answers, OpenCV about 4 %, uncorrected both
    # about 5 %): OpenCV's must stay within a few points of it. A misread scale or zero point would be far worse.
    from edgeclf.convert.calibration import load_images
    from edgeclf.rundir import load_run
    from edgeclf.runtime.backends import open_backend

    bundle = load_bundle(export_dir)
    val = load_run(bundle.source["run"]).dataset().val
    x = load_images(val, bundle.input.height, bundle.input.width, bundle.input.resize)
    preds = {}
    for backend, artifact in (("opencv", "onnx-int8"), ("onnxruntime", "onnx-int8"), ("onnxruntime", "onnx-fp32")):
        b = open_backend(export_dir, backend, artifact=artifact)
        try:
            preds[backend, artifact] = np.concatenate([b.predict(x[k:k + 32]) for k in range(0, len(x), 32)]).argmax(1)
        finally:
            b.close()
    fp32 = preds["onnxruntime", "onnx-fp32"]
    agree_cv = float((preds["opencv", "onnx-int8"] == fp32).mean())
    agree_ort = float((preds["onnxruntime", "onnx-int8"] == fp32).mean())
    assert agree_cv >= 0.9 and agree_cv >= agree_ort - 0.05, (agree_cv, agree_ort)


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_inputs_one_line(export_dir, hymenoptera, tmp_path):
    runner = CliRunner()
    bench = lambda *args: runner.invoke(main, ["bench", *map(str, args), "--log", "", "--out", str(tmp_path / "o")])
    _one_line_error(bench(tmp_path / "nope", "--data", hymenoptera), "no such export folder")
    (tmp_path / "empty").mkdir()
    _one_line_error(bench(tmp_path / "empty", "--data", hymenoptera), "edgeclf.json")
    _one_line_error(bench(export_dir, "--data", tmp_path / "nodata"), "no such data folder")
    _one_line_error(bench(export_dir, "--data", hymenoptera, "--threads", "0"), "--threads")
    _one_line_error(bench(export_dir, "--data", hymenoptera, "--min-top1", "90"), "--min-top1")
    _one_line_error(bench(export_dir, "--data", hymenoptera, "--backends", "tensorrt"), "--backends")
    _one_line_error(bench(export_dir, export_dir, "--data", hymenoptera), "given twice")
    _one_line_error(bench(export_dir, "--data", hymenoptera, "--no-local"), "--no-local", "--remote")
    _one_line_error(bench(export_dir, "--data", hymenoptera, "--remote", "pi@host:port"), "[user@]host[:port]")
    _one_line_error(bench(export_dir, "--data", hymenoptera, "--remote", "pi@a", "--remote", "pi@a"), "given twice")
    _one_line_error(bench(export_dir, "--data", hymenoptera, "--remote", "pi@a", "--ssh-config", tmp_path / "no"),
                    "--ssh-config")
    flowers_like = tmp_path / "other"
    for split in ("train", "val"):
        for cls, src in (("cats", "ants"), ("dogs", "bees")):
            (flowers_like / split / cls).mkdir(parents=True)
            for p in sorted((hymenoptera / split / src).glob("*.jpg"))[:3]:
                shutil.copy(p, flowers_like / split / cls / p.name)
    # bench measures the images export verified on (val_split.json): another data set lacks them
    _one_line_error(bench(export_dir, "--data", flowers_like), "is missing", "the data set the model was exported with")
    legacy = tmp_path / "legacy"  # an export from before val_split.json: the split is a scan's, its classes checked
    shutil.copytree(export_dir, legacy, ignore=shutil.ignore_patterns("val_split.json"))
    _one_line_error(bench(legacy, "--data", flowers_like), "not one the model")
    assert not (tmp_path / "o").exists()  # nothing written on bad input


def test_remote_preflight_errors_are_one_line(export_dir, hymenoptera, sshd, device_python, tmp_path):
    """Closed port, refused key, no edgeclf there: one line each, exit 2, nothing measured or written."""
    from importlib.metadata import version

    runner = CliRunner()

    def bench(remote: str, config: Path, python: Path):
        return runner.invoke(main, ["bench", str(export_dir), "--data", str(hymenoptera), "--out", str(tmp_path / "o"),
                                    "--log", "", "--remote", remote, "--remote-python", str(python),
                                    "--ssh-config", str(config), *FAST])

    closed = f"{sshd.user}@127.0.0.1:{ssh_helpers.free_port()}"
    _one_line_error(bench(closed, sshd.config, device_python), f"--remote {closed}: cannot reach the host",
                    "Connection refused")
    _one_line_error(bench(sshd.remote, sshd.wrong_key_config, device_python), "authentication refused",
                    "Permission denied", "ssh-copy-id")
    bare = ssh_helpers.bare_venv(tmp_path)
    _one_line_error(bench(sshd.remote, sshd.config, bare), f"edgeclf is not installed for {bare} there",
                    f'run there: {bare} -m pip install "edgeclf[runtime]=={version("edgeclf")}"')
    _one_line_error(bench(sshd.remote, sshd.config, tmp_path / "no-python"), f"{tmp_path / 'no-python'} not found there",
                    "--remote-python")
    assert not (tmp_path / "o").exists()


def _device_processes(device_python: Path) -> list[str]:
    """Command lines of processes running the device's interpreter (the agent and its workers)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(device_python) in text:
            found.append(text)
    return found


def test_ctrl_c_mid_bench_leaves_nothing_on_the_device(export_dir, hymenoptera, sshd, device_python, tmp_path):
    """Ctrl-C in the terminal (SIGINT to the foreground group, ssh included) while the device measures."""
    before = set(TMP.glob("edgeclf-remote-*"))
    err = tmp_path / "stderr"
    with open(err, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeclf", "bench", str(export_dir), "--data", str(hymenoptera), "--out",
             str(tmp_path / "o"), "--runs", "3000", "--log", "", "--no-local", "--remote", sshd.remote,
             "--remote-python", str(device_python), "--ssh-config", str(sshd.config)],
            stdout=subprocess.DEVNULL, stderr=fh, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background job inherits it ignored
    deadline = time.monotonic() + 120
    while "[1/7]" not in err.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, err.read_text()
    running = [d for d in set(TMP.glob("edgeclf-remote-*")) - before]
    assert len(running) == 1 and (running[0] / "plan.json").is_file()  # the device's folder, mid-bench
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    text = err.read_text()
    assert text.rstrip().endswith("interrupted") and "Traceback" not in text, text
    deadline = time.monotonic() + 30
    while (set(TMP.glob("edgeclf-remote-*")) - before or _device_processes(device_python)) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(TMP.glob("edgeclf-remote-*")) - before
    assert not _device_processes(device_python)
    assert not (tmp_path / "o").exists()
