"""``edgeclf run ... --collect DIR`` on a real model: a "field" (hymenoptera training photos through the camera
transform of tests/field_helpers.py) played as a video, and as a live MJPEG camera with a password in its URL.

Checked: the frames kept follow the strategies (each reason recomputed from every frame's scores, written by
``--output``; event starts counted by ``--snapshots``), the caps (a random-only run keeps about 1 in N, a cap of K a
minute keeps at most K, a restart within the minute keeps none more), every record names an existing picture, that
picture is the frame the record's scores are of, and no password of the source reaches DIR.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import HYMENOPTERA, edgeclf_cli  # noqa: E402
from field_helpers import field_frames, field_jpegs, write_video  # noqa: E402

from edgeclf.runtime.collect import RECORDS, read_records  # noqa: E402

pytestmark = pytest.mark.slow
OFF = ["--collect-margin", "0", "--collect-below", "0", "--no-collect-events"]
REPEAT = 2
NO_CAPS = ["--collect-per-minute", "0", "--collect-per-hour", "0"]


@pytest.fixture(scope="module")
def field(tmp_path_factory) -> dict:
    """80 camera frames of training photos (40 per class, in runs of 5 photos of each), each photo shown for 2 frames
    (a visitor stays a while): a 160-frame video."""
    frames = field_frames(HYMENOPTERA / "train", per_class=40, offset=0, seed=11)
    base = tmp_path_factory.mktemp("field")
    video = write_video(base / "field.mp4", frames, fps=20.0, repeat=REPEAT)
    return {"frames": frames, "video": video, "count": len(frames) * REPEAT}


def decoded(video: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    out = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        out.append(bgr)
    cap.release()
    return out


def run(export_dir, source, *args) -> str:
    proc = edgeclf_cli("run", str(export_dir), "--source", str(source), "--headless", *map(str, args), timeout=120)
    return proc.stdout + proc.stderr


def summary(out: str) -> dict:
    m = re.search(r"collect: kept (\d+) frames.*?; skipped by caps (\d+).*?; dropped (\d+)", out)
    assert m, out[-2000:]
    return {"kept": int(m.group(1)), "skipped": int(m.group(2)), "dropped": int(m.group(3))}


def check_records(folder: Path) -> list[dict]:
    """Every record complete and naming a picture that exists, each picture named once."""
    recs = list(read_records(folder))
    for r in recs:
        assert {"file", "time", "source", "label", "score", "top_k", "model_sha256", "reason"} <= r.keys(), r
        assert not Path(r["file"]).is_absolute() and (folder / r["file"]).is_file(), r["file"]
        assert re.fullmatch(r"[0-9a-f]{64}", r["model_sha256"])
        assert r["reason"] and set(r["reason"].split(",")) <= {"low_margin", "low_score", "event_start", "random"}
        assert r["top_k"][0]["label"] == r["label"] and r["top_k"][0]["score"] == r["score"]
    assert len({r["file"] for r in recs}) == len(recs)
    assert len(list((folder / "frames").rglob("*.jpg"))) == len(recs)
    return recs


def test_strategies_keep_exactly_the_frames_they_name(export_dir, field, tmp_path):
    folder, rows, snaps = tmp_path / "c", tmp_path / "rows.jsonl", tmp_path / "snaps"
    # the model is sure of most of its training photos, even through this camera: thresholds that keep some, and
    # with two classes a margin below 0.5 is a score below 0.75: "low_score" (below 0.95) is the larger set
    out = run(export_dir, field["video"], "--pace", 40, "--collect", folder, *NO_CAPS, "--output", rows,
              "--snapshots", snaps, "--collect-margin", 0.5, "--collect-below", 0.95)
    s = summary(out)
    recs = check_records(folder)
    assert s["dropped"] == 0 and s["skipped"] == 0 and s["kept"] == len(recs) > 0
    preds = {r["frame"]: r for r in map(json.loads, rows.read_text().splitlines())}
    assert len(preds) == field["count"]

    def margin(p):
        scores = sorted((t["score"] for t in p["top_k"]), reverse=True)
        return scores[0] - scores[1]

    want_margin = {f for f, p in preds.items() if margin(p) < 0.5}
    want_low = {f for f, p in preds.items() if p["score"] < 0.95}
    by_reason = {k: {r["frame"] for r in recs if k in r["reason"].split(",")}
                 for k in ("low_margin", "low_score", "event_start", "random")}
    # the records' scores are rounded like --output's: compare away from the line
    near = {f for f, p in preds.items() if abs(margin(p) - 0.5) < 1e-5 or abs(p["score"] - 0.95) < 1e-5}
    assert by_reason["low_margin"] - near == want_margin - near
    assert by_reason["low_score"] - near == want_low - near
    assert by_reason["random"] == set() and want_margin and want_low - want_margin
    assert len(by_reason["event_start"]) == len(list(snaps.glob("*.jpg"))) > 0  # one per event start
    assert {r["frame"] for r in recs} == by_reason["low_margin"] | by_reason["low_score"] | by_reason["event_start"]
    print(f"kept {len(recs)} of {len(preds)} frames:", {k: len(v) for k, v in by_reason.items()})
    # each picture is the frame its record scores: the video's frame, as JPEG
    video = decoded(field["video"])
    for r in recs:
        p = preds[r["frame"]]
        assert r["label"] == p["label"] and r["top_k"] == p["top_k"]
        saved = cv2.imread(str(folder / r["file"]))
        assert saved.shape == video[r["frame"]].shape
        diff = np.abs(saved.astype(np.int16) - video[r["frame"]].astype(np.int16)).mean()
        others = min(np.abs(saved.astype(np.int16) - v.astype(np.int16)).mean()
                     for i, v in enumerate(video) if i // REPEAT != r["frame"] // REPEAT)
        assert diff < 3.0 and diff < others / 3, (r["file"], diff, others)
    assert all(r["source"] == str(field["video"]) for r in recs)


def test_random_sample_keeps_about_one_in_n(export_dir, field, tmp_path):
    folder, n, frames = tmp_path / "c", 8, 480
    out = run(export_dir, field["video"], "--loop", "--max-frames", frames, "--pace", 120, "--collect", folder,
              *OFF, *NO_CAPS, "--collect-every", n)
    s = summary(out)
    recs = check_records(folder)
    assert s["dropped"] == 0 and s["kept"] == len(recs)
    assert {r["reason"] for r in recs} == {"random"}
    p = 1 / n
    sd = (frames * p * (1 - p)) ** 0.5
    assert abs(len(recs) - frames * p) <= 4 * sd, (len(recs), frames * p, sd)  # binomial: 4 standard deviations
    assert any(r["score"] >= 0.9 for r in recs)  # confident frames too: a confident mistake can be caught


def test_caps_per_minute_and_disk_and_resume(export_dir, field, tmp_path):
    folder, k = tmp_path / "c", 5
    out = run(export_dir, field["video"], "--pace", 40, "--collect", folder, *OFF, "--collect-every", 1,
              "--collect-per-minute", k, "--collect-per-hour", 0)
    s = summary(out)
    recs = check_records(folder)
    assert s["kept"] == len(recs) == k and s["skipped"] == field["count"] - k
    first = {r["file"]: (folder / r["file"]).read_bytes() for r in recs}
    with open(folder / RECORDS, "a") as fh:
        fh.write('{"file": "frames/torn')  # a run killed mid-line
    # the same minute, a restart: the minute's cap holds across it
    s2 = summary(run(export_dir, field["video"], "--max-frames", 20, "--collect", folder, *OFF, "--collect-every", 1,
                     "--collect-per-minute", k, "--collect-per-hour", 0))
    assert s2["kept"] == 0 and s2["skipped"] == 20
    # without caps: it continues the numbering, never overwrites, appends after the torn line
    run(export_dir, field["video"], "--max-frames", 6, "--collect", folder, *OFF, "--collect-every", 1, *NO_CAPS)
    recs = check_records(folder)
    assert len(recs) == k + 6
    assert sorted(int(Path(r["file"]).name[:6]) for r in recs) == list(range(1, k + 7))
    assert all((folder / f).read_bytes() == data for f, data in first.items())
    # a disk cap: collecting stops, said once, nothing deleted
    cap_dir = tmp_path / "small"
    out = run(export_dir, field["video"], "--pace", 40, "--collect", cap_dir, *OFF, "--collect-every", 1, *NO_CAPS,
              "--collect-max-mb", 0.05)
    recs = check_records(cap_dir)
    used = sum(p.stat().st_size for p in (cap_dir / "frames").rglob("*.jpg")) + (cap_dir / RECORDS).stat().st_size
    assert 0 < len(recs) < field["count"] and used <= 0.05 * 1024 * 1024
    assert out.count("collecting stops") == 1


def test_a_live_camera_with_a_password_never_writes_it(export_dir, field, tmp_path):
    from stream_helpers import MjpegServer

    folder, secret = tmp_path / "c", "Pa55w0rdXyz"
    with MjpegServer(field_jpegs(field["frames"]), fps=20) as cam:
        plain = cam.url
        url = plain.replace("http://", f"http://camuser:{secret}@") + f"?token={secret}"
        out = run(export_dir, url, "--max-frames", 40, "--collect", folder, *NO_CAPS, "--collect-every", 2)
    recs = check_records(folder)
    assert len(recs) >= 8
    assert {r["source"] for r in recs} == {plain}
    for p in folder.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert secret.encode() not in data and b"camuser" not in data, p
        assert secret not in str(p)
    assert secret not in out
