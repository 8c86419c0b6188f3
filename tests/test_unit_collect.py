"""``--collect`` and ``edgeclf label`` without a model: strategies, caps, resuming, a writer that falls behind, and
the labels file's rules (rows written by users kept, undo, atomic rewrite)."""
from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgeclf.label.store import LabelError, open_store, read_rows
from edgeclf.runtime.collect import (RECORDS, CollectOptions, Collector, RateCaps, margin_of, read_records,
                                     reasons_for)
from edgeclf.runtime.events import Event, FrameResult
from edgeclf.runtime.output import make_prediction

CLASSES = ["ants", "bees"]


def frame(seq: int, p_ants: float, t: float | None = None, source: str = "cam") -> FrameResult:
    probs = np.array([p_ants, 1.0 - p_ants], np.float32)
    img = np.full((24, 32, 3), seq % 255, np.uint8)
    return FrameResult(seq, source, seq, time.time() if t is None else t, make_prediction(probs, CLASSES, 2), 1.0, img)


def collector(tmp_path: Path, **kw) -> Collector:
    kw.setdefault("per_minute", 0)
    kw.setdefault("per_hour", 0)
    c = Collector(CollectOptions(folder=tmp_path / "c", **kw), classes=CLASSES, model_sha256="ab" * 32,
                  echo=lambda m: None)
    c.start(None)
    return c


def test_margin_and_reasons():
    assert margin_of(np.array([0.55, 0.45])) == pytest.approx((0.55, 0.10))
    assert margin_of(np.array([0.1, 0.7, 0.2])) == pytest.approx((0.7, 0.5))
    opts = CollectOptions(folder=Path("x"), margin=0.2, below=0.6, every=0)
    rng = random.Random(0)
    assert reasons_for(np.array([0.55, 0.45]), opts, rng) == ["low_margin", "low_score"]
    assert reasons_for(np.array([0.65, 0.35]), opts, rng) == []
    assert reasons_for(np.array([0.55, 0.15, 0.30]), opts, rng) == ["low_score"]
    every = CollectOptions(folder=Path("x"), margin=0, below=0, events=False, every=10)
    kept = sum(bool(reasons_for(np.array([0.99, 0.01]), every, rng)) for _ in range(20000))
    assert abs(kept - 2000) < 4 * (20000 * 0.1 * 0.9) ** 0.5  # binomial(20000, 0.1): 4 standard deviations


def test_rate_caps_sliding_windows():
    caps = RateCaps(per_minute=3, per_hour=5)
    t0 = 1_000_000.0
    kept = []
    for i in range(200):  # a frame every 2 s for 400 s
        t = t0 + 2 * i
        if caps.blocked(t) is None:
            caps.take(t)
            kept.append(t)
    assert len(kept) == 5  # the hour cap
    for a, b in zip(kept, kept[3:]):
        assert b - a >= 60  # never 4 in a minute
    caps = RateCaps(per_minute=2, per_hour=0)
    caps.preload([t0 - 30, t0 - 10, t0 - 4000], t0)  # an earlier run's frames: two in the open minute
    assert caps.blocked(t0) == "per_minute"
    assert caps.blocked(t0 + 31) is None


def test_bad_options_refused(tmp_path):
    from edgeclf.errors import ServiceError

    with pytest.raises(ServiceError, match="nothing would be kept"):
        CollectOptions(folder=tmp_path, margin=0, below=0, events=False, every=0).check()
    with pytest.raises(ServiceError, match="max-mb"):
        CollectOptions(folder=tmp_path, max_mb=0).check()


def test_reasons_recorded_event_start_and_password_never_written(tmp_path):
    c = collector(tmp_path, margin=0.2, below=0.6, events=True, every=0)
    src = "http://bob:hunter2secret@10.0.0.5:8080/stream.mjpg?token=tok3n"
    c.result(frame(1, 0.55, source=src))  # low margin + low score
    c.result(frame(2, 0.95, source=src))  # confident: kept only as an event start
    c.event(Event(1, "start", "ants", time.time(), None, 0.9, 3))
    c.result(frame(3, 0.95, source=src))  # confident, no event: not kept
    c.close()
    recs = list(read_records(c.folder))
    assert [r["reason"] for r in recs] == ["low_margin,low_score", "event_start"]
    assert [r["frame"] for r in recs] == [1, 2]
    for r in recs:
        assert (c.folder / r["file"]).is_file()
        assert r["source"] == "http://10.0.0.5:8080/stream.mjpg"
        assert r["model_sha256"] == "ab" * 32 and len(r["top_k"]) == 2
    blob = b"".join(p.read_bytes() for p in c.folder.rglob("*") if p.is_file())
    assert b"hunter2secret" not in blob and b"tok3n" not in blob and b"bob" not in blob
    assert c.counters()["kept"] == 2


def test_resume_after_a_torn_line_never_overwrites(tmp_path):
    c = collector(tmp_path, every=1, events=False)
    for i in range(3):
        c.result(frame(i + 1, 0.99))
    c.close()
    first = {p.name: p.read_bytes() for p in c.folder.rglob("*.jpg")}
    with open(c.folder / RECORDS, "a") as fh:
        fh.write('{"file": "frames/2026')  # a kill in the middle of a line
    c2 = collector(tmp_path, every=1, events=False)
    assert c2.resumed == 3
    for i in range(2):
        c2.result(frame(i + 1, 0.99))
    c2.close()
    recs = list(read_records(c2.folder))
    assert len(recs) == 5 and len({r["file"] for r in recs}) == 5
    assert [int(Path(r["file"]).name[:6]) for r in recs] == [1, 2, 3, 4, 5]
    for name, data in first.items():  # the first run's pictures are untouched
        assert next(c2.folder.rglob(name)).read_bytes() == data
    lines = (c2.folder / RECORDS).read_text().splitlines()
    assert len(lines) == 6 and lines[3] == '{"file": "frames/2026'  # the torn line stays alone on its line


def test_per_minute_cap_and_counters(tmp_path):
    c = collector(tmp_path, every=1, events=False, per_minute=4)
    t0 = time.time()
    for i in range(30):
        c.result(frame(i + 1, 0.99, t=t0 + i * 0.1))
    c.close()
    assert c.kept == 4 and c.skipped["per_minute"] == 26 - 0 and c.dropped == 0
    assert "skipped by caps 26" in c.summary()


def test_disk_cap_stops_collecting_and_deletes_nothing(tmp_path):
    said = []
    c = Collector(CollectOptions(folder=tmp_path / "c", every=1, events=False, per_minute=0, per_hour=0,
                                 max_mb=4000 / 1024 / 1024), classes=CLASSES, echo=said.append)
    c.start(None)
    for i in range(50):
        c.result(frame(i + 1, 0.99))
        time.sleep(0.002)
    c.close()
    used = sum(p.stat().st_size for p in (c.folder / "frames").rglob("*.jpg")) + (c.folder / RECORDS).stat().st_size
    assert 0 < c.kept < 50 and used <= 4000 and c.full
    assert c.kept + c.skipped["disk"] + c.dropped == 50  # every frame accounted for
    assert sum("collecting stops" in m for m in said) == 1
    assert len(list(read_records(c.folder))) == c.kept == len(list((c.folder / "frames").rglob("*.jpg")))


def test_a_slow_writer_drops_frames_never_the_loop(tmp_path, monkeypatch):
    from edgeclf import fsutil

    gate = threading.Event()
    real = fsutil.write_bytes

    def slow(path, data):
        if str(path).endswith(".jpg"):
            gate.wait(5)  # an SD card that hangs on pictures
        return real(path, data)

    monkeypatch.setattr("edgeclf.runtime.collect.fsutil.write_bytes", slow)
    c = collector(tmp_path, every=1, events=False)
    worst = 0.0
    for i in range(200):
        t = time.perf_counter()
        c.result(frame(i + 1, 0.99))
        worst = max(worst, time.perf_counter() - t)
    assert worst < 0.05
    gate.set()
    c.close()
    assert c.dropped > 150 and c.kept + c.dropped == 200
    assert f"dropped {c.dropped}" in c.summary()


# --- the labels file -------------------------------------------------------------------------------------

def _field(tmp_path: Path) -> Path:
    c = collector(tmp_path, every=1, events=False)
    for i, p in enumerate([0.9, 0.52, 0.7, 0.45]):
        c.result(frame(i + 1, p))
    c.close()
    return c.folder


def test_store_order_answers_undo_and_user_rows(tmp_path):
    folder = _field(tmp_path)
    (folder / "labels.csv").write_text("file,label\nmine/extra.jpg,wasp\n")
    store = open_store(folder)
    assert store.classes == CLASSES
    view = store.view()
    margins = [it["margin"] for it in view["items"]]
    assert margins == sorted(margins) and view["done"] == 0 and view["total"] == 4
    a, b, c = (it["file"] for it in view["items"][:3])
    store.answer(a, "bees")
    store.answer(b, "")
    assert store.progress() == {"done": 2, "total": 4}
    with open(folder / "labels.csv", "a") as fh:  # a script writes to the file meanwhile
        fh.write("mine/other.jpg,ants\n")
    assert store.undo() == {"file": b, "answer": None, "done": 1, "total": 4}
    store.answer(c, "ants")
    assert read_rows(folder / "labels.csv") == [["mine/extra.jpg", "wasp"], [a, "bees"], ["mine/other.jpg", "ants"],
                                                [c, "ants"]]
    with pytest.raises(ValueError):
        store.answer(a, "wasp")
    with pytest.raises(KeyError):
        store.answer("frames/nope.jpg", "ants")
    again = open_store(folder).view()  # a restart: unanswered first, the count done
    assert again["done"] == 2 and [it["answer"] for it in again["items"]][:2] == [None, None]


def test_store_needs_frames_and_classes(tmp_path):
    with pytest.raises(LabelError):
        open_store(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LabelError):
        open_store(tmp_path / "empty", ["ants"])
    folder = _field(tmp_path)
    (folder / "collect.json").unlink()
    recs = [json.loads(x) for x in (folder / RECORDS).read_text().splitlines()]
    assert open_store(folder).classes == sorted({t["label"] for r in recs for t in r["top_k"]})
    assert open_store(folder, ["bees", "ants", "wasp"]).classes == ["bees", "ants", "wasp"]
