"""Two `edgeclf train` workers on the loopback interface (MultiWorkerMirroredStrategy, TF_CONFIG, CPU):
one run folder written by the chief, the same weights on both, and a killed worker that is started again
continues the run instead of starting it over."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

MODEL = ["--model", "mobilenet_v2_035", "--imgsz", "96"]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Cluster:
    def __init__(self, tmp_path: Path, data: Path, args: list[str]):
        self.tmp, self.data, self.args = tmp_path, data, args
        self.ports = _free_ports(2)
        self.project = tmp_path / "runs"

    def start(self, index: int, tag: str) -> subprocess.Popen:
        conf = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in self.ports]}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(conf), "EDGECLF_CACHE_DIR": str(self.tmp / f"cache{index}")}
        log = open(self.log(index, tag), "w")  # a file, not a pipe: a full pipe would stall the worker
        return subprocess.Popen([sys.executable, "-m", "edgeclf", "train", str(self.data), *MODEL, *self.args,
                                 "--project", str(self.project), "--name", "dist"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, text=True)

    def log(self, index: int, tag: str) -> Path:
        return self.tmp / f"worker{index}.{tag}.log"

    def run(self, tag: str, timeout: float = 400) -> None:
        procs = [self.start(i, tag) for i in range(2)]
        codes = _wait(procs, timeout)
        assert codes == [0, 0], "\n".join(f"--- worker {i} ({c}):\n{self.log(i, tag).read_text()[-3000:]}"
                                          for i, c in enumerate(codes))


def _wait(procs, timeout: float) -> list[int | None]:
    deadline = time.time() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return [p.returncode for p in procs]


def _epochs(run: Path) -> list[tuple[int, str]]:
    with open(run / "results.csv") as fh:
        return [(int(r["epoch"]), r["stage"]) for r in csv.DictReader(fh)]


def _digests(logs: list[Path]) -> list[str]:
    found = [re.findall(r"final weights sha256 ([0-9a-f]{64})", p.read_text()) for p in logs]
    assert all(len(f) == 1 for f in found), [p.read_text()[-2000:] for p in logs]
    return [f[0] for f in found]


def test_two_workers_train_one_run_with_the_same_weights(tmp_path, hymenoptera):
    import keras

    from edgeclf.train.cache import weights_digest

    cluster = Cluster(tmp_path, hymenoptera, ["--epochs", "1", "--fine-tune-epochs", "1", "--holdout", "0.1"])
    cluster.run("first")
    run = cluster.project / "dist"
    assert sorted(p.name for p in cluster.project.iterdir()) == ["dist"]  # the other worker wrote no run folder
    for name in ("args.yaml", "split.json", "results.csv", "results.png", "report.json", "confusion_matrix.png",
                 "state.json", "weights/best.keras", "weights/last.keras"):
        assert (run / name).is_file(), name
    assert _epochs(run) == [(1, "frozen"), (2, "fine_tune")]
    report = json.loads((run / "report.json").read_text())
    assert report["images"] == 153 and report["cluster"] == {"workers": 2, "replicas": 2}  # all of val, both halves
    assert report["top1"] > 0.6
    # each worker cached the features of its half of the images (two cuts; train: clean + 2 views)
    from edgeclf.data.dataset import Dataset

    split = Dataset.load(run / "split.json")
    assert len(split.holdout) == 24  # held out (--holdout 0.1) by the chief; no worker trains on them
    half = lambda n: (n + 1) // 2  # noqa: E731  (the chief's share: every other image)
    rows = json.loads((run / "state.json").read_text())["feature_cache"]["rows_computed"]
    assert rows == 2 * (half(len(split.train)) * 3 + half(len(split.val)))
    assert (tmp_path / "cache1" / "features").is_dir()
    chief, worker = _digests([cluster.log(0, "first"), cluster.log(1, "first")])
    assert chief == worker
    assert weights_digest(keras.models.load_model(run / "weights" / "best.keras").layers) == chief


def test_a_killed_worker_started_again_resumes_the_run(tmp_path, hymenoptera):
    """--no-cache full fine-tuning on the cluster; worker 1 is killed during epoch 2 of 3, the chief then
    stops with exit 75, and both started again finish the run from epoch 2 (not from epoch 1)."""
    cluster = Cluster(tmp_path, hymenoptera, ["--no-cache", "--epochs", "1", "--fine-tune-epochs", "2",
                                              "--unfreeze", "all", "--batch", "16", "--patience", "9"])
    run = cluster.project / "dist"
    procs = [cluster.start(i, "first") for i in range(2)]
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            state = run / "state.json"
            if state.is_file() and json.loads(state.read_text())["epoch"] >= 1:
                break
            assert all(p.poll() is None for p in procs), cluster.log(0, "first").read_text()[-3000:]
            time.sleep(0.2)
        os.kill(procs[1].pid, signal.SIGKILL)
        codes = _wait(procs, 120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    state = json.loads((run / "state.json").read_text())
    assert codes[1] == -signal.SIGKILL and codes[0] == 75, cluster.log(0, "first").read_text()[-3000:]
    assert "start every worker again" in cluster.log(0, "first").read_text()
    assert 1 <= state["epoch"] < 3 and not state["done"]
    cluster.run("second")
    assert f"resuming {run} after epoch {state['epoch']}" in cluster.log(0, "second").read_text()
    assert _epochs(run) == [(1, "frozen"), (2, "fine_tune"), (3, "fine_tune")]  # nothing repeated, nothing lost
    final = json.loads((run / "state.json").read_text())
    assert final["done"] and final["epoch"] == 3
    assert json.loads((run / "report.json").read_text())["images"] == 153
    chief, worker = _digests([cluster.log(0, "second"), cluster.log(1, "second")])
    assert chief == worker
