"""edgeclf sweep on real photos: MobileNetV2 0.35 at two input sizes on hymenoptera (few epochs), plus a
backbone whose ImageNet weights are not here (EfficientNetB0: its candidates fail with their reason and the
sweep goes on). The sweep is killed once its first candidate is finished and resumed; the budget is then
judged anew on the finished sweep, met and impossible."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import edgeclf_cli  # noqa: E402

pytestmark = [pytest.mark.slow]
SIZES = (96, 128)
ARGS = ["--models", "mobilenet_v2_035,efficientnet_b0", "--imgsz", ",".join(map(str, SIZES)), "--epochs", "3",
        "--fine-tune-epochs", "1", "--train-args", "--holdout 0.2 --unfreeze 8 --cache-views 1",
        "--formats", "tflite-fp32,tflite-int8", "--export-args", "--calib-images 32", "--runs", "8", "--warmup", "1"]
FIRST = f"mobilenet_v2_035-{SIZES[0]}"


def _finished_files(run: Path) -> dict[str, int]:
    files = [run / "report.json", run / "weights" / "best.keras", run / "export" / "edgeclf.json",
             run / "export" / "model_int8.tflite", run / "bench" / "bench.json"]
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in files}


@pytest.fixture(scope="module")
def swept(hymenoptera, tmp_path_factory):
    """The sweep, killed (SIGKILL, the whole process group) once its first candidate is benched, then resumed."""
    project = tmp_path_factory.mktemp("sweeps")
    folder = project / "s"
    proc = subprocess.Popen([sys.executable, "-m", "edgeclf", "sweep", str(hymenoptera), *ARGS, "--project",
                             str(project), "--name", "s"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    first = folder / "runs" / FIRST / "bench" / "bench.json"
    deadline = time.time() + 900
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(2)  # the next candidate's training has started
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _finished_files(folder / "runs" / FIRST)
    resumed = edgeclf_cli("sweep", "--resume", str(folder), timeout=1500)
    return {"folder": folder, "before": before, "resumed": resumed,
            "sweep": json.loads((folder / "sweep.json").read_text())}


def test_resume_after_a_kill_redoes_nothing_finished(swept):
    folder, sweep = swept["folder"], swept["sweep"]
    assert _finished_files(folder / "runs" / FIRST) == swept["before"]  # not one file of it rewritten
    assert not [s for s in sweep["ran"] if s.startswith(FIRST + ".")]
    assert f"mobilenet_v2_035-{SIZES[1]}.bench" in sweep["ran"]
    assert "resuming the sweep" in swept["resumed"].stdout
    # every candidate trained on the one split of the sweep's single scan
    split = json.loads((folder / "split.json").read_text())
    for size in SIZES:
        assert json.loads((folder / "runs" / f"mobilenet_v2_035-{size}" / "split.json").read_text()) == split


def test_holdout_images_are_never_trained_on_and_judge_the_int8_search(swept):
    """`--holdout 0.2` (the sweep's training option): the held-out images are in split.json, out of the training
    split and out of the feature cache training fits on, and export's int8 search judged on them."""
    import yaml

    from edgeclf.contract import load_bundle
    from edgeclf.data.dataset import Dataset

    run = swept["folder"] / "runs" / FIRST
    ds = Dataset.load(run / "split.json")
    held, train = {s.path for s in ds.holdout}, {s.path for s in ds.train}
    assert len(held) == 49 and not held & train and not held & {s.path for s in ds.val}
    assert {s.label for s in ds.holdout} == {0, 1}
    report = json.loads((run / "report.json").read_text())
    assert (report["train_images"], report["holdout_images"]) == (len(train), 49)
    cache = report["feature_cache"]
    views = yaml.safe_load((run / "args.yaml").read_text())["cache_views"]
    cuts = sum(1 for k in cache["entries"] if k.startswith("train@"))
    assert cache["rows_computed"] + cache["rows_reused"] == cuts * (len(train) * (1 + views) + len(ds.val))
    art = load_bundle(run / "export").artifact("tflite-int8")
    assert art.extra["selection_from"] == "holdout" and art.extra["selection_images"] <= 49


def test_rows_front_and_failed_candidates(swept):
    sweep, folder = swept["sweep"], swept["folder"]
    rows = sweep["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert {(r["candidate"], r["format"]) for r in ok} == {(f"mobilenet_v2_035-{s}", f) for s in SIZES
                                                           for f in ("tflite-fp32", "tflite-int8")}
    for r in ok:  # real measurements: better than chance on two classes, a latency, a size
        assert 0.6 < r["top1"] <= 1 and 0 < r["p50_ms"] <= r["p50_hi_ms"] and r["size_mb"] > 0.1
    failed = [r for r in rows if r["status"] == "failed"]
    assert {r["candidate"] for r in failed} == {f"efficientnet_b0-{s}" for s in SIZES}
    assert all("weights" in r["reason"] and "\n" not in r["reason"] for r in failed)
    # the front: exactly the rows that no other row beats on both top-1 and p50
    for r in ok:
        dominated = any(o["top1"] >= r["top1"] and o["p50_ms"] <= r["p50_ms"] and
                        (o["top1"] > r["top1"] or o["p50_ms"] < r["p50_ms"]) for o in ok if o is not r)
        assert r["pareto"] == (not dominated)
    # without a budget: the most accurate row is named
    (choice,) = sweep["choices"]
    assert choice["device"] == "local" and choice["choice"]["top1"] == max(r["top1"] for r in ok)
    for name in ("sweep.csv", "sweep.md", "sweep-local.png"):
        assert (folder / name).stat().st_size > 200
    assert len((folder / "sweep.csv").read_text().splitlines()) == 1 + len(rows)


def test_a_latency_budget_names_the_most_accurate_that_meets_it(swept):
    folder = swept["folder"]
    ok = [r for r in swept["sweep"]["rows"] if r["status"] == "ok"]
    # a limit that the most accurate row misses if possible: between the fastest and that row's upper p50
    best = max(ok, key=lambda r: r["top1"])
    fastest = min(r["p50_hi_ms"] for r in ok)
    limit = round((fastest + best["p50_hi_ms"]) / 2, 4) if best["p50_hi_ms"] > fastest else best["p50_hi_ms"]
    proc = edgeclf_cli("sweep", "--resume", str(folder), "--max-latency", str(limit))
    sweep = json.loads((folder / "sweep.json").read_text())
    assert sweep["ran"] == []  # judging anew redoes nothing
    meets = [r for r in ok if r["p50_hi_ms"] <= limit]
    expected = max(r["top1"] for r in meets)
    (choice,) = sweep["choices"]
    assert choice["meets_budget"] and choice["choice"]["top1"] == expected
    assert choice["choice"]["p50_hi_ms"] <= limit
    row = choice["choice"]
    assert f"deploy: {row['export_dir']} ({row['format']})" in proc.stdout
    assert f"edgeclf run {row['export_dir']} --artifact {row['format']}" in proc.stdout


def test_an_impossible_budget_exits_3_naming_the_closest(swept):
    folder = swept["folder"]
    proc = edgeclf_cli("sweep", "--resume", str(folder), "--max-latency", "0.0001", check=False)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    sweep = json.loads((folder / "sweep.json").read_text())
    (choice,) = sweep["choices"]
    ok = [r for r in sweep["rows"] if r["status"] == "ok"]
    closest = min(ok, key=lambda r: r["p50_hi_ms"])
    assert not choice["meets_budget"] and choice["closest"]["candidate"] == closest["candidate"]
    assert choice["closest"]["format"] == closest["format"]
    assert f"closest {closest['candidate']} {closest['format']}" in proc.stdout and "over" in proc.stdout
    assert "deploy:" not in proc.stdout


def test_bad_input_is_one_line(tmp_path, hymenoptera):
    for args, words in ((["sweep", str(tmp_path / "nope")], "no such folder"),
                        (["sweep", str(hymenoptera), "--models", "resnet9000"], "unknown backbone"),
                        (["sweep", str(hymenoptera), "--imgsz", "96,x"], "--imgsz"),
                        (["sweep", "--resume", str(tmp_path)], "not a sweep folder")):
        proc = edgeclf_cli(*args, "--project", str(tmp_path / "p"), check=False)
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and words in proc.stderr, proc.stderr
