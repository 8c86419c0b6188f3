"""The runtime (`edgeclf run`, edgeclf.runtime) on real models built from the shared weights and photos.

The models are built once by tests/runtime_models.py in a subprocess (this process never imports
TensorFlow) and cached in the temp folder, keyed on that script's content.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import _thread
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edgeclf.cli import main
from edgeclf.imageio import bgr_to_rgb, load_resized, resize_rgb
from edgeclf.runtime import (Classifier, LiveSource, Preprocess, RunOptions, SourceError, open_backend,
                             resolve_model, run_source)
from edgeclf.runtime.frames import Frame
from edgeclf.runtime.sources import FileSource
from edgeclf.runtime.output import Window, display_available

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import runtime_models  # noqa: E402
from conftest import RUNTIME_MODEL_SIZE  # noqa: E402

SIZE = RUNTIME_MODEL_SIZE
# real exported models (built once by tests/runtime_models.py with TensorFlow, about 2 min on a new machine)
pytestmark = pytest.mark.slow
VAL = runtime_models.DATA / "val"


@pytest.fixture(scope="session")
def reference(runtime_models_dir) -> dict:
    return json.loads((runtime_models_dir / "reference.json").read_text())


@pytest.fixture(scope="session")
def val_batch(reference):
    paths = list(reference["images"])
    images = np.stack([load_resized(p, SIZE, SIZE) for p in paths])
    keras_probs = np.array([reference["images"][p] for p in paths], dtype=np.float32)
    labels = np.array([reference["classes"].index(reference["labels"][p]) for p in paths])
    return paths, images, keras_probs, labels


def _video(path: Path, photos: list[Path], size=(160, 120), fps=10.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for p in photos:
        rgb = resize_rgb(load_resized(p, size[1], size[0]), size[1], size[0])
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _video_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr)
    cap.release()
    return frames


@pytest.fixture(scope="session")
def val_photos() -> list[Path]:
    return sorted((VAL / "ants").glob("*.jpg"))[:20] + sorted((VAL / "bees").glob("*.jpg"))[:20]


@pytest.fixture(scope="session")
def video_file(tmp_path_factory, val_photos) -> Path:
    return _video(tmp_path_factory.mktemp("video") / "clip.mp4", val_photos)


def _expected(backend, rgb_inputs: list[np.ndarray]) -> np.ndarray:
    return backend.predict(np.stack(rgb_inputs))


def _cli(*args: str):
    result = CliRunner().invoke(main, ["run", *map(str, args)])
    return result


# --- backends ----------------------------------------------------------------------------------

@pytest.mark.parametrize("artifact, backend", [("tflite-fp32", "litert"), ("onnx-fp32", "onnxruntime"),
                                               ("onnx-fp32", "opencv")])
def test_float_backends_match_keras(export_dir, val_batch, artifact, backend):
    _, images, keras_probs, labels = val_batch
    be = open_backend(export_dir, backend, artifact=artifact, threads=2)
    probs = be.predict(images)
    assert probs.shape == keras_probs.shape and probs.dtype == np.float32
    np.testing.assert_allclose(probs, keras_probs, atol=2e-4)
    assert (probs.argmax(1) == labels).mean() > 0.8
    assert be.input_spec.dtype == "float32" and be.num_classes == 2


def test_int8_backend_quantizes_with_the_tensors_own_parameters(export_dir, val_batch):
    _, images, keras_probs, labels = val_batch
    be = open_backend(export_dir)  # default pick: tflite-int8 through LiteRT
    assert be.model.name == "tflite-int8" and be.name == "litert"
    assert (be.input_spec.dtype, be.input_spec.scale, be.input_spec.zero_point) == ("int8", 1.0, -128)
    tensor = be.prepare(images[:4])
    assert tensor.dtype == np.int8
    np.testing.assert_array_equal(tensor.astype(np.int16), images[:4].astype(np.int16) - 128)
    probs = be.predict(images)
    assert np.all(probs >= 0) and np.allclose(probs.sum(1), 1.0, atol=0.02)
    assert (probs.argmax(1) == keras_probs.argmax(1)).mean() >= 0.9
    assert (probs.argmax(1) == labels).mean() > 0.8
    # batch of N == N batches of 1
    np.testing.assert_array_equal(probs[:5], np.concatenate([be.predict(images[i:i + 1]) for i in range(5)]))


def test_lone_model_files_carry_their_labels(runtime_models_dir, export_dir, val_batch):
    _, images, _, _ = val_batch
    images = images[:16]
    want_tflite = open_backend(export_dir, artifact="tflite-int8").predict(images)
    want_onnx = open_backend(export_dir, artifact="onnx-fp32").predict(images)
    lone = runtime_models_dir / "lone"
    for name, origin, want in (("model_meta.tflite", "edgeclf metadata", want_tflite),
                               ("model_zip.tflite", "TFLite labels zip", want_tflite),
                               ("model.onnx", "edgeclf metadata", want_onnx)):
        be = open_backend(lone / name)
        assert be.model.origin == origin
        assert be.model.classes == ["ants", "bees"] and (be.height, be.width) == (SIZE, SIZE)
        np.testing.assert_array_equal(be.predict(images), want)


def test_classifier_api(export_dir, val_batch, reference):
    paths, _, keras_probs, _ = val_batch
    clf = Classifier(open_backend(export_dir, artifact="tflite-fp32"), top_k=2)
    preds = clf.classify_files(paths[:6])
    for pred, kp in zip(preds, keras_probs[:6]):
        assert pred.label == reference["classes"][int(kp.argmax())]
        assert [lb for lb, _ in pred.top_k] == [reference["classes"][i] for i in np.argsort(-kp)]
        assert abs(pred.score - kp.max()) < 2e-4


# --- edgeclf run on files --------------------------------------------------------------------------

@pytest.fixture()
def photo_folder(tmp_path, val_photos) -> Path:
    """Photos in nested folders, plus files that do not decode (and junk that is ignored)."""
    folder = tmp_path / "photos"
    for i, p in enumerate(val_photos[::4]):
        sub = folder / ("a" if i % 2 else "b") / ("deep" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, sub / p.name)
    (folder / "a" / "broken.jpg").write_bytes(val_photos[0].read_bytes()[:200])
    (folder / "b" / "not an image.png").write_text("hello")
    (folder / "notes.txt").write_text("ignored")
    return folder


def test_run_folder_csv_matches_the_model(export_dir, photo_folder):
    out = photo_folder.parent / "preds.csv"
    result = _cli(export_dir, "--source", photo_folder, "--output", out, "--headless", "--top-k", "2",
                  "--threads", "2")
    assert result.exit_code == 0, result.output + result.stderr
    assert "tflite-int8" in result.stderr and "picked" in result.stderr
    assert "broken.jpg" in result.stderr and "not an image.png" in result.stderr  # skipped, named
    assert "summary: 10 frames, 0 dropped, 2 skipped" in result.output
    assert "(2 frames at a time, one thread each)" in result.output  # a folder runs in throughput mode
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["source", "frame", "label", "score", "top1_label", "top1_score", "top2_label",
                             "top2_score", "latency_ms"]
    files = sorted((p for p in photo_folder.rglob("*.jpg") if p.name != "broken.jpg"),
                   key=lambda p: p.relative_to(photo_folder).as_posix())
    assert [r["source"] for r in rows] == [str(p) for p in files]
    be = open_backend(export_dir)
    probs = _expected(be, [load_resized(p, SIZE, SIZE) for p in files])
    classes = be.model.classes
    for row, p in zip(rows, probs):
        order = np.argsort(-p, kind="stable")
        assert row["label"] == row["top1_label"] == classes[order[0]]
        assert float(row["score"]) == pytest.approx(p[order[0]], abs=1e-6)
        assert row["top2_label"] == classes[order[1]]
        assert float(row["top2_score"]) == pytest.approx(p[order[1]], abs=1e-6)
        assert float(row["latency_ms"]) > 0


def test_throughput_mode_keeps_order_and_results(export_dir, tmp_path):
    """Three one-thread interpreters on a folder: the same rows, in the same order, as one interpreter."""
    folder = tmp_path / "photos"
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            for p in sorted((runtime_models.DATA / split / cls).glob("*.jpg"))[:12]:
                dst = folder / split / cls
                dst.mkdir(parents=True, exist_ok=True)
                (dst / p.name).symlink_to(p)
    rows = {}
    for mode in ("latency", "throughput"):
        out = tmp_path / f"{mode}.csv"
        result = _cli(export_dir, "--source", folder, "--output", out, "--headless", "--threads", "3",
                      "--mode", mode)
        assert result.exit_code == 0, result.output + result.stderr
        assert "summary: 48 frames" in result.output
        assert ("3 frames at a time" in result.output) == (mode == "throughput")
        rows[mode] = [(r["source"], r["frame"], r["label"], r["score"]) for r in csv.DictReader(out.open())]
    assert rows["throughput"] == rows["latency"]  # int8: bit-exact whatever the thread count
    assert [r[1] for r in rows["throughput"]] == [str(i) for i in range(48)]


def test_auto_mode_picks_by_source_and_memory(export_dir, val_photos, video_file, monkeypatch):
    from edgeclf.runtime import loop

    be = open_backend(export_dir, threads=2)
    prep = Preprocess(be.height, be.width)
    assert loop._pick_mode("auto", FileSource(val_photos, prep), be) == "throughput"
    assert loop._pick_mode("auto", FileSource(val_photos[:3], prep), be) == "latency"  # not worth a 2nd model
    assert loop._pick_mode("auto", FileSource(val_photos, prep), open_backend(export_dir, threads=1)) == "latency"
    with LiveSource(lambda: _Camera(video_file), "camera", prep) as camera:
        assert loop._pick_mode("auto", camera, be) == "latency"  # the newest frame, as soon as possible
        assert loop._pick_mode("throughput", camera, be) == "throughput"  # unless asked
    size = be.model.path.stat().st_size
    monkeypatch.setattr(loop, "_available_memory", lambda: 4 * 2 * 2 * size - 1)  # 2 copies would not fit
    assert loop._pick_mode("auto", FileSource(val_photos, prep), be) == "latency"


def test_throughput_mode_stops_at_a_broken_file_in_order(export_dir, val_photos, tmp_path):
    """A source that fails mid-way: every frame before the failure is written, in order, then the error."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(val_photos[0].read_bytes()[:300])
    paths = val_photos[:11] + [broken] + val_photos[11:20]
    be = open_backend(export_dir, threads=2)
    out = tmp_path / "preds.csv"
    with pytest.raises(SourceError, match="broken.jpg"):
        run_source(be, FileSource(paths, Preprocess(be.height, be.width), strict=True),
                   RunOptions(headless=True, output=out, mode="throughput"))
    rows = list(csv.DictReader(out.open()))
    assert [r["source"] for r in rows] == [str(p) for p in val_photos[:11]]
    probs = _expected(be, [load_resized(p, SIZE, SIZE) for p in val_photos[:11]])
    assert [r["label"] for r in rows] == [be.model.classes[int(p.argmax())] for p in probs]
    assert not [t for t in threading.enumerate() if t.name.startswith("edgeclf-infer")]


def test_threshold_and_glob(export_dir, val_photos, tmp_path):
    out = tmp_path / "preds.jsonl"
    pattern = str(VAL / "bees" / "1*.jpg")
    result = _cli(export_dir, "--artifact", "tflite-fp32", "--source", pattern, "--output", out, "--headless",
                  "--threshold", "0.9", "--top-k", "5")
    assert result.exit_code == 0, result.output + result.stderr
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    files = sorted(Path(p) for p in __import__("glob").glob(pattern))
    assert [r["source"] for r in rows] == [str(p) for p in files]
    probs = _expected(open_backend(export_dir, artifact="tflite-fp32"), [load_resized(p, SIZE, SIZE) for p in files])
    assert any(p.max() < 0.9 for p in probs) and any(p.max() >= 0.9 for p in probs)
    for row, p in zip(rows, probs):
        assert row["label"] == ("unknown" if p.max() < 0.9 else ["ants", "bees"][int(p.argmax())])
        assert len(row["top_k"]) == 2  # capped at the number of classes
        assert row["top_k"][0]["label"] == ["ants", "bees"][int(p.argmax())]


def test_run_video_jsonl_and_save(export_dir, video_file, tmp_path):
    out, saved = tmp_path / "preds.jsonl", tmp_path / "annotated.mp4"
    result = _cli(export_dir, "--artifact", "onnx-fp32", "--source", video_file, "--output", out, "--save", saved)
    assert result.exit_code == 0, result.output + result.stderr
    assert "summary: 40 frames, 0 dropped" in result.output
    frames = _video_frames(video_file)
    assert len(frames) == 40
    be = open_backend(export_dir, artifact="onnx-fp32")
    probs = _expected(be, [resize_rgb(bgr_to_rgb(f), SIZE, SIZE) for f in frames])
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(40))
    assert {r["source"] for r in rows} == {str(video_file)}
    for row, p in zip(rows, probs):
        assert row["label"] == be.model.classes[int(p.argmax())]
        assert row["score"] == pytest.approx(float(p.max()), abs=1e-6)
    # the model tells ants from bees in the video too (first 20 frames ants, then bees)
    truth = [0] * 20 + [1] * 20
    assert np.mean([be.model.classes.index(r["label"]) == t for r, t in zip(rows, truth)]) > 0.75
    written = _video_frames(saved)
    assert len(written) == 40 and written[0].shape == (120, 160, 3)


# --- live sources -----------------------------------------------------------------------------------

class _Camera:
    """A 'camera': a real cv2.VideoCapture on a video file, paced like a device (read blocks ~5 ms)."""

    def __init__(self, path: Path | None):
        self.cap = cv2.VideoCapture(str(path)) if path else None

    def isOpened(self):
        return self.cap is not None and self.cap.isOpened()

    def read(self):
        threading.Event().wait(0.005)
        return self.cap.read()

    def release(self):
        if self.cap is not None:
            self.cap.release()

    def get(self, prop):
        return 0.0  # cameras often report 0 FPS


def test_camera_drops_and_comes_back(export_dir, val_photos, tmp_path):
    first = _video(tmp_path / "first.mp4", val_photos[:20])
    second = _video(tmp_path / "second.mp4", val_photos[20:])
    # opened, delivers 20 frames, drops; reopening fails once; then it is back for 20 frames; then gone
    plan = iter([first, None, second])
    be = open_backend(export_dir)
    prep = Preprocess(be.height, be.width)
    source = LiveSource(lambda: _Camera(next(plan, None)), "camera 0", prep, backoff=0.05, reconnect_timeout=0.5)
    out = tmp_path / "preds.jsonl"
    summary = run_source(be, source, RunOptions(headless=True, output=out))
    assert source.reconnects == 1
    assert not source._thread.is_alive()
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(rows) == summary.frames > 0
    # every frame delivered was either classified or dropped (replaced by a newer one): none lost, none twice
    assert summary.frames + summary.dropped == 40
    indexes = [r["frame"] for r in rows]
    assert indexes == sorted(set(indexes)) and indexes[-1] == 39  # the newest frame is always the one taken
    assert any(i < 20 for i in indexes) and any(i >= 20 for i in indexes)  # before and after the reconnect
    frames = _video_frames(first) + _video_frames(second)
    probs = _expected(be, [resize_rgb(bgr_to_rgb(frames[i]), SIZE, SIZE) for i in indexes])
    for row, p in zip(rows, probs):
        assert row["label"] == be.model.classes[int(p.argmax())]
        assert row["score"] == pytest.approx(float(p.max()), abs=1e-6)


@pytest.fixture()
def ctrl_c():
    """Ctrl-C as in a terminal: a shell that starts the tests in the background (``cmd &``, no job
    control) leaves SIGINT ignored, and Python keeps it so: interrupt_main() would then do nothing."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("mode", ["latency", "throughput"])
def test_ctrl_c_stops_cleanly(export_dir, video_file, tmp_path, mode, ctrl_c):
    be = open_backend(export_dir, threads=2)

    class Looping(_Camera):  # a camera that never ends
        def read(self):
            ok, frame = super().read()
            if not ok:
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, frame = self.cap.read()
            return ok, frame

    source = LiveSource(lambda: Looping(video_file), "camera 0", Preprocess(be.height, be.width, keep_image=True))
    timer = threading.Timer(1.5, _thread.interrupt_main)
    timer.start()
    saved, out = tmp_path / "live.mp4", tmp_path / "live.csv"
    summary = run_source(be, source, RunOptions(headless=True, save=saved, output=out, mode=mode))
    timer.join()
    assert summary.interrupted and summary.frames > 0 and summary.mode == mode
    assert not source._thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("edgeclf-infer")]  # workers joined
    assert len(_video_frames(saved)) == summary.frames  # the video was finished, not left half-written
    assert len(out.read_text().splitlines()) == summary.frames + 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt
def test_ctrl_c_lost_in_a_finalizer_still_stops(export_dir, val_photos, tmp_path, ctrl_c):
    """A Ctrl-C whose KeyboardInterrupt is raised inside a __del__ (the garbage collector runs them, and
    Python prints and drops what they raise) must still stop the loop at the end of the frame."""
    import signal

    from edgeclf.runtime import Source

    be = open_backend(export_dir, threads=1)
    inputs = [load_resized(p, SIZE, SIZE) for p in val_photos]

    class Dropper:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)  # the handler runs here, inside the finalizer
            sum(range(100))

    class Frames(Source):
        name = "frames"

        def __iter__(self):
            for i, x in enumerate(inputs):
                if i == 5:
                    Dropper()  # collected at once: its __del__ swallows the KeyboardInterrupt
                yield Frame("mem", i, x, None, 0.0)

    out = tmp_path / "p.csv"
    summary = run_source(be, Frames(), RunOptions(headless=True, output=out, mode="latency"))
    assert summary.interrupted and 5 <= summary.frames <= 6 < len(inputs)
    assert len(out.read_text().splitlines()) == summary.frames + 1


def test_window_falls_back_to_headless():
    ok, why = display_available()
    if not ok:
        assert why
    window = Window()
    assert window.show(np.zeros((10, 10, 3), np.uint8)) is True  # headless OpenCV: warns, never raises
    window.close()


# --- no TensorFlow on the device ---------------------------------------------------------------------

NO_TF = r"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):  # as on a device where TensorFlow is not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras", "tensorflow_core"):
            raise ImportError(f"blocked: {name}")
        return None
if sys.argv[1] == "block":
    sys.meta_path.insert(0, Block())
import edgeclf.runtime
from edgeclf.cli import main
for args in (sys.argv[2:5], sys.argv[5:8]):
    try:
        main(["run", args[0], "--source", args[1], "--artifact", args[2], "--headless", "--max-frames", "5"])
    except SystemExit as exc:
        assert exc.code in (0, None), exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
assert not heavy, heavy
print("NO-TF-OK")
"""


@pytest.mark.parametrize("mode", ["check", "block"])
def test_runtime_never_loads_tensorflow(export_dir, mode):
    proc = subprocess.run([sys.executable, "-c", NO_TF, mode, str(export_dir), str(VAL / "ants"), "tflite-int8",
                           str(export_dir), str(VAL / "bees"), "onnx-fp32"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "NO-TF-OK" in proc.stdout and proc.stdout.count("summary: 5 frames") == 2


# --- bad input: one clear line, non-zero exit ----------------------------------------------------------

def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_bad_models(export_dir, tmp_path, val_photos):
    src = str(val_photos[0])
    _one_line_error(_cli(tmp_path / "nope", "--source", src), "no such model")
    (tmp_path / "junk.tflite").write_bytes(os.urandom(4000))
    _one_line_error(_cli(tmp_path / "junk.tflite", "--source", src), "junk.tflite", "not a TFLite model")
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07" + os.urandom(4000))
    _one_line_error(_cli(tmp_path / "junk.onnx", "--source", src), "junk.onnx")
    # a corrupt model inside an export folder: LiteRT refuses it
    broken = tmp_path / "broken"
    shutil.copytree(export_dir, broken)
    data = bytearray((broken / "model_int8.tflite").read_bytes())
    data[8:4000] = os.urandom(3992)
    (broken / "model_int8.tflite").write_bytes(bytes(data))
    _one_line_error(_cli(broken, "--source", src), "model_int8.tflite")
    (broken / "model_int8.tflite").write_bytes(bytes(data[:1000]))
    _one_line_error(_cli(broken, "--source", src), "truncated")
    _one_line_error(_cli(export_dir, "--artifact", "tflite-fp16", "--source", src), "tflite-fp16", "tflite-int8")
    _one_line_error(_cli(export_dir, "--provider", "tensorrt", "--artifact", "onnx-fp32", "--source", src),
                    "TensorrtExecutionProvider", "CPUExecutionProvider")
    (tmp_path / "plain").mkdir()
    _one_line_error(_cli(tmp_path / "plain", "--source", src), "edgeclf.json")


def test_labels_that_do_not_match_the_model(export_dir, tmp_path, val_photos):
    wrong = tmp_path / "wrong"
    shutil.copytree(export_dir, wrong)
    contract = json.loads((wrong / "edgeclf.json").read_text())
    contract["classes"] = ["ants", "bees", "wasps"]
    (wrong / "edgeclf.json").write_text(json.dumps(contract))
    (wrong / "labels.txt").write_text("ants\nbees\nwasps\n")
    for artifact in ("tflite-int8", "onnx-fp32"):
        _one_line_error(_cli(wrong, "--artifact", artifact, "--source", val_photos[0]),
                        "outputs 2 scores", "3 classes")
    (wrong / "labels.txt").write_text("bees\nants\n")
    _one_line_error(_cli(wrong, "--source", val_photos[0]), "labels.txt")


def test_sources_that_do_not_open(export_dir, tmp_path):
    _one_line_error(_cli(export_dir, "--source", tmp_path / "missing.mp4"), "no such file")
    (tmp_path / "bad.mp4").write_bytes(os.urandom(5000))
    _one_line_error(_cli(export_dir, "--source", tmp_path / "bad.mp4"), "bad.mp4")
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    _one_line_error(_cli(export_dir, "--source", tmp_path / "bad.jpg"), "bad.jpg")
    (tmp_path / "empty").mkdir()
    _one_line_error(_cli(export_dir, "--source", tmp_path / "empty"), "holds no images")
    _one_line_error(_cli(export_dir, "--source", "7"), "camera 7", "cannot open")
    _one_line_error(_cli(export_dir, "--source", "picamera"), "picamera2")
    _one_line_error(_cli(export_dir, "--source", tmp_path / "x.csv", "--output", tmp_path / "p.txt",
                         "--headless"), "no such file")
    img = tmp_path / "ok.jpg"
    shutil.copy(next((VAL / "ants").glob("*.jpg")), img)
    _one_line_error(_cli(export_dir, "--source", img, "--output", tmp_path / "p.txt"), ".csv or .jsonl")


def test_resolve_model_says_what_it_picked(export_dir):
    ref = resolve_model(export_dir)
    assert ref.name == "tflite-int8" and ref.origin == "export folder"
    assert resolve_model(export_dir, formats=("onnx",)).name == "onnx-fp32"
    assert resolve_model(export_dir, artifact="model_fp32.tflite").name == "tflite-fp32"
