"""edgeclf train on the real hymenoptera photos: run folder, accuracy, resume after kill -9, backbones."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow


from conftest import edgeclf_cli as edgeclf  # noqa: E402  (small_run, the session's run, is in conftest.py)


def test_run_folder_has_every_artifact(small_run):
    for name in ("args.yaml", "data_report.json", "split.json", "results.csv", "results.png", "report.json",
                 "confusion_matrix.png", "confusion_matrix_normalized.png", "weights/best.keras", "weights/last.keras"):
        assert (small_run / name).is_file(), name
    for png in ("results.png", "confusion_matrix.png", "confusion_matrix_normalized.png"):
        assert (small_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    args = yaml.safe_load((small_run / "args.yaml").read_text())
    assert args["model"] == "mobilenet_v2_035" and args["imgsz"] == 96 and args["fine_tune_epochs"] == 2
    data_report = json.loads((small_run / "data_report.json").read_text())
    assert [s["file"] for s in data_report["skipped"]] == ["train/ants/imageNotFound.gif"]
    with open(small_run / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]
    assert {r["stage"] for r in rows} == {"frozen", "fine_tune"}
    assert all(float(r["lr"]) > 0 for r in rows)
    assert not list(small_run.rglob("*.part*")), "temporary files left behind"


def test_report_is_real_and_reproducible(small_run, hymenoptera):
    import keras

    from edgeclf.data.dataset import Dataset
    from edgeclf.imageio import load_resized

    report = json.loads((small_run / "report.json").read_text())
    assert report["images"] == 153
    assert report["top1"] >= 0.75, report["top1"]  # 0.35 MobileNetV2 at 96 px; chance is 0.54
    assert set(report["per_class"]) == {"ants", "bees"}
    assert sum(m["support"] for m in report["per_class"].values()) == 153
    cm = np.array(report["confusion_matrix"])
    assert cm.sum() == 153 and np.trace(cm) / 153 == pytest.approx(report["top1"])
    # the saved best model, run by Keras on the photos, gives the reported accuracy
    model = keras.models.load_model(small_run / "weights" / "best.keras")
    val = Dataset.load(small_run / "split.json").val
    x = np.stack([load_resized(s.path, 96, 96) for s in val]).astype(np.float32)
    probs = model.predict(x, batch_size=64, verbose=0)
    top1 = float((probs.argmax(1) == np.array([s.label for s in val])).mean())
    assert abs(top1 - report["top1"]) <= 0.02, (top1, report["top1"])
    # the scores val_predictions.csv records are the saved model's, calibrated by the temperature training
    # fitted on these images (export folds the same temperature into every file)
    from edgeclf import temperature
    from edgeclf.rundir import read_predictions

    cal = report["calibration"]
    assert cal["fitted_on"] == "validation" and cal["images"] == 153 and 0.05 <= cal["temperature"] <= 20
    labels = np.array([s.label for s in val])
    assert cal["ece_before"] == pytest.approx(temperature.ece(probs, labels), abs=0.01)
    scaled = temperature.scale(probs, cal["temperature"])
    scores = np.array([float(r["score"]) for r in read_predictions(small_run)])
    np.testing.assert_allclose(scores, scaled.max(axis=1), atol=2e-3)


def _wait_for_epoch(run: Path, epoch: int, proc, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = run / "state.json"
        if state.is_file():
            try:
                if json.loads(state.read_text()).get("epoch", 0) >= epoch:
                    return
            except json.JSONDecodeError:
                pass
        if proc.poll() is not None:
            raise AssertionError(f"training ended before epoch {epoch} (exit {proc.returncode})")
        time.sleep(0.2)
    raise AssertionError(f"no epoch {epoch} within {timeout}s")


def test_resume_after_kill_9(tmp_path, hymenoptera):
    """simple_cnn (the from-scratch baseline, no feature cache) killed mid-run, then resumed."""
    project = tmp_path / "runs"
    cmd = [sys.executable, "-m", "edgeclf", "train", str(hymenoptera), "--model", "simple_cnn", "--imgsz", "64",
           "--epochs", "6", "--patience", "99", "--project", str(project), "--name", "killed"]
    log = open(tmp_path / "first.log", "w+")  # a file, not a pipe: the training log must never block on it
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    run = project / "killed"
    try:
        _wait_for_epoch(run, 2, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done_before = json.loads((run / "state.json").read_text())["epoch"]
    assert 2 <= done_before < 6 and not json.loads((run / "state.json").read_text())["done"]
    resumed = edgeclf("train", "--resume", str(run))
    assert f"resuming {run} after epoch {done_before}" in resumed.stderr
    with open(run / "results.csv") as fh:
        epochs = [int(r["epoch"]) for r in csv.DictReader(fh)]
    assert epochs == [1, 2, 3, 4, 5, 6]  # nothing lost, nothing repeated
    state = json.loads((run / "state.json").read_text())
    assert state["done"] and state["epoch"] == 6
    report = json.loads((run / "report.json").read_text())
    assert report["images"] == 153 and report["top1"] > 0.5
    again = edgeclf("train", "--resume", str(run))
    assert "already finished" in again.stderr


def test_resume_after_the_last_epoch_writes_the_report(small_run, tmp_path):
    """Killed after the last epoch, before report.json: --resume evaluates the best weights and reports."""
    import shutil

    run = tmp_path / "small"
    shutil.copytree(small_run, run)
    state = json.loads((run / "state.json").read_text())
    state["done"] = False
    (run / "state.json").write_text(json.dumps(state))
    (run / "report.json").unlink()
    resumed = edgeclf("train", "--resume", str(run))
    assert "Traceback" not in resumed.stderr
    report, original = (json.loads((r / "report.json").read_text()) for r in (run, small_run))
    assert report["images"] == 153 and report["best_epoch"] == original["best_epoch"]
    assert abs(report["top1"] - original["top1"]) <= 1 / 153  # the same best weights, evaluated again
    assert report["feature_cache"]["rows_computed"] == 0  # the features the run trained on, read back
    assert json.loads((run / "state.json").read_text())["done"]
    with open(run / "results.csv") as fh, open(small_run / "results.csv") as ref:
        assert fh.read() == ref.read()  # no epoch trained again


def _hymenoptera_subset(hymenoptera: Path, root: Path, train: int, val: int) -> Path:
    """Copy the first ``train`` / ``val`` photos of each class (sorted by name) into ``root``."""
    import shutil

    for split, n in (("train", train), ("val", val)):
        for cls in ("ants", "bees"):
            (root / split / cls).mkdir(parents=True)
            for p in sorted((hymenoptera / split / cls).glob("*.jpg"))[:n]:
                shutil.copy(p, root / split / cls / p.name)
    return root


@pytest.fixture(scope="module")
def few_hymenoptera(hymenoptera, tmp_path_factory) -> Path:
    """Real hymenoptera photos, 12 per class in train and 6 in val: enough to run a big backbone end to end."""
    return _hymenoptera_subset(hymenoptera, tmp_path_factory.mktemp("few") / "hymenoptera", train=12, val=6)


# One big backbone on each path: InceptionResNetV2 the plain way (--no-cache), EfficientNetB0 on cached features.
@pytest.mark.parametrize("model,size,cache", [("inception_resnet_v2", 75, "--no-cache"), ("efficientnet_b0", 64, "--cache")])
def test_big_backbones_train_end_to_end_without_weights(tmp_path, few_hymenoptera, model, size, cache):
    project = tmp_path / "runs"
    edgeclf("train", str(few_hymenoptera), "--model", model, "--imgsz", str(size), "--weights", "none",
            "--epochs", "1", "--fine-tune-epochs", "1", "--unfreeze", "4", "--cache-views", "0", "--batch", "8", cache,
            "--project", str(project))
    run = project / "exp"
    report = json.loads((run / "report.json").read_text())
    assert report["images"] == 12 and report["model"] == model
    with open(run / "results.csv") as fh:
        assert [r["stage"] for r in csv.DictReader(fh)] == ["frozen", "fine_tune"]
    assert (run / "weights" / "best.keras").stat().st_size > 1_000_000


def test_bad_inputs_give_one_line(tmp_path, hymenoptera):
    missing = edgeclf("train", str(tmp_path / "nope"), check=False)
    assert missing.returncode != 0 and "no such data folder" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    empty = tmp_path / "empty_weights"
    empty.mkdir()
    no_weights = edgeclf("train", str(hymenoptera), "--model", "efficientnet_b0", "--imgsz", "64",
                         "--project", str(tmp_path / "r"), check=False, timeout=300,
                         env={"EDGECLF_WEIGHTS_DIR": str(empty), "KERAS_HOME": str(tmp_path / "keras")})
    assert no_weights.returncode != 0 and "Traceback" not in no_weights.stderr
    line = no_weights.stderr.strip().splitlines()[-1]
    assert "efficientnetb0_notop.h5" in line and str(empty) in line and "--weights none" in line
    bad_unfreeze = edgeclf("train", str(hymenoptera), "--unfreeze", "some", check=False)
    assert bad_unfreeze.returncode != 0 and "--unfreeze" in bad_unfreeze.stderr
    no_resume = edgeclf("train", "--resume", str(tmp_path / "nothing"), check=False)
    assert no_resume.returncode != 0 and "no such run folder" in no_resume.stderr
    no_cluster = edgeclf("train", str(hymenoptera), "--distributed", check=False, env={"TF_CONFIG": ""})
    assert no_cluster.returncode == 2 and "needs TF_CONFIG" in no_cluster.stderr.strip().splitlines()[-1]
    bad_config = edgeclf("train", str(hymenoptera), check=False, env={"TF_CONFIG": "{cluster"})
    assert bad_config.returncode == 2 and "TF_CONFIG is not valid" in bad_config.stderr
    assert "Traceback" not in no_cluster.stderr + bad_config.stderr


# --- the feature cache on disk, with the real pipeline (in this process: one TensorFlow start) ------------
@pytest.fixture(scope="module")
def tiny_hymenoptera(hymenoptera, tmp_path_factory) -> Path:
    """10 training and 5 validation photos per class, copied (the tests change one)."""
    return _hymenoptera_subset(hymenoptera, tmp_path_factory.mktemp("tiny") / "hymenoptera", train=10, val=5)


def _cache_run(data: Path, tmp: Path, **overrides) -> dict:
    """One head-only epoch of MobileNetV2 0.35; returns what the run reports about the feature cache."""
    from edgeclf.config import TrainConfig
    from edgeclf.train.trainer import train

    settings = dict(model="mobilenet_v2_035", imgsz=96, epochs=1, fine_tune_epochs=0, project=str(tmp / "runs"),
                    name="r", cache_dir=str(tmp / "cache"), holdout=0.0)  # every one of the 20 photos trained on
    info = train(TrainConfig(data=str(data), **{**settings, **overrides}))
    report = json.loads((info.dir / "report.json").read_text())
    assert report["images"] == 10
    assert json.loads((info.dir / "state.json").read_text())["feature_cache"] == report["feature_cache"]
    return report["feature_cache"]


def test_a_second_run_reuses_the_cache_and_each_key_part_invalidates_it(tiny_hymenoptera, tmp_path):
    from PIL import Image

    first = _cache_run(tiny_hymenoptera, tmp_path)
    assert (first["rows_computed"], first["rows_reused"]) == (20 * 3 + 10, 0)  # train: clean + 2 views; val
    again = _cache_run(tiny_hymenoptera, tmp_path)
    assert (again["rows_computed"], again["rows_reused"], again["engine"]) == (0, 70, None)  # nothing computed
    assert again["entries"] == first["entries"]
    seed = _cache_run(tiny_hymenoptera, tmp_path, seed=1)  # other augmented views
    assert seed["rows_computed"] == 60 and seed["entries"]["val@head_pool"] == first["entries"]["val@head_pool"]
    size = _cache_run(tiny_hymenoptera, tmp_path, imgsz=112)
    assert size["rows_computed"] == 70
    photo = sorted((tiny_hymenoptera / "train" / "bees").glob("*.jpg"))[0]
    Image.open(photo).rotate(180).save(photo)  # same name, other contents
    changed = _cache_run(tiny_hymenoptera, tmp_path)
    assert changed["rows_computed"] == 60 and changed["entries"]["train@head_pool"] != first["entries"]["train@head_pool"]
    assert _cache_run(tiny_hymenoptera, tmp_path)["rows_computed"] == 0


def test_a_cache_shard_cut_short_is_rebuilt_not_read(tiny_hymenoptera, tmp_path, monkeypatch):
    from edgeclf.train import cache

    monkeypatch.setattr(cache, "SHARD_IMAGES", 8)  # the 20 training photos: shards of 8, 8 and 4
    first = _cache_run(tiny_hymenoptera, tmp_path, seed=5)
    entry = tmp_path / "cache" / "features" / first["entries"]["train@head_pool"]
    shard = entry / "shard-00001.npy"
    original = shard.read_bytes()
    shard.write_bytes(original[: len(original) // 3])  # what a crash of the disk's write-back could leave
    rebuilt = _cache_run(tiny_hymenoptera, tmp_path, seed=5)
    assert rebuilt["rows_computed"] == 8 * 3  # that shard again (3 views of its 8 photos), nothing else
    assert shard.read_bytes() == original  # the same numbers: the augmentation is seeded per shard
    # a kill in the middle of caching: the records of finished shards written, the last shard missing, a
    # temporary file left, meta.json (written last) not yet there
    meta = json.loads((entry / "meta.json").read_text())
    for i, record in enumerate(meta["shards"][:2]):
        (entry / f"shard-{i:05d}.json").write_text(json.dumps(record))
    (entry / "meta.json").unlink()
    (entry / "shard-00002.npy").unlink()
    (entry / ".shard-00002.tmp.part.npy").write_bytes(b"\x93NUMPY half")
    resumed = _cache_run(tiny_hymenoptera, tmp_path, seed=5)
    assert resumed["rows_computed"] == 4 * 3 and not list(entry.glob(".*.part*"))
