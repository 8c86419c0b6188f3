"""`edgeclf run --mqtt/--ha-discovery/--webhook` end to end: the real CLI in a subprocess, a real mosquitto
broker and a real HTTP server, both started here on free 127.0.0.1 ports and stopped here.

The video is made of hymenoptera validation photos that the test's own model classifies confidently (a run
of ants, then a run of bees, with single planted frames of the other class in each run), so what is checked
is the event layer and the listeners, not the model's accuracy.

Without Debian's mosquitto the broker tests skip (they fail instead when EDGECLF_REQUIRE_BROKER=1, as in CI).
"""
from __future__ import annotations

import csv
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from web_helpers import free_port

from edgeclf.imageio import load_resized

sys.path.insert(0, str(Path(__file__).parent))
import runtime_models  # noqa: E402

pytestmark = pytest.mark.slow  # a real exported model (tests/runtime_models.py), a broker, subprocess runs
mqtt = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

VAL = runtime_models.DATA / "val"
FRAME = (160, 120)  # video frame size (w, h)
PACE = 20  # frames per second the runs are paced at
PASSWORD = "S3cret-Pw_917"
SECRET_TOKEN = "hook-token-5521"
# Home Assistant's abbreviations of the options used here: the configs use the full names
ABBREVIATIONS = {"stat_t", "avty_t", "pl_avail", "pl_not_avail", "uniq_id", "obj_id", "def_ent_id", "val_tpl",
                 "stat_cla", "json_attr_t", "dev", "o", "ids", "mf", "mdl", "sw", "ic", "pl_on", "pl_off"}


# --- the broker ------------------------------------------------------------------------------------

def _mosquitto() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
                                              if os.access(p, os.X_OK)), None)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """A mosquitto on 127.0.0.1:port that can be stopped and started again on the same port (no persistence:
    a restarted broker has no retained message)."""

    def __init__(self, exe: str, folder: Path, users: dict[str, str] | None = None):
        self.exe, self.folder, self.port = exe, folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} 127.0.0.1", "persistence false"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:  # as root it would switch to "mosquitto", who cannot
            lines.append("user root")  # read a password file in the test's private temp folder
        if users:
            pwfile = folder / "passwd"
            for i, (user, pw) in enumerate(users.items()):
                subprocess.run([_mosquitto_passwd(), "-b", *(["-c"] if i == 0 else []), str(pwfile), user, pw],
                               check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None
        self.log = folder / "mosquitto.log"

    def start(self) -> "Broker":
        assert self.proc is None
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not _port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mosquitto did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def url(self, userinfo: str = "") -> str:
        return f"mqtt://{userinfo + '@' if userinfo else ''}127.0.0.1:{self.port}"


def _mosquitto_passwd() -> str:
    exe = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not os.access(exe, os.X_OK):
        pytest.skip("mosquitto_passwd is not installed")
    return exe


@pytest.fixture(scope="module")
def mosquitto_exe() -> str:
    exe = _mosquitto()
    if exe is None:
        if os.environ.get("EDGECLF_REQUIRE_BROKER") == "1":
            pytest.fail("EDGECLF_REQUIRE_BROKER=1 but mosquitto is not installed (apt-get install mosquitto)")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto); EDGECLF_REQUIRE_BROKER=1 makes this fail")
    return exe


@pytest.fixture()
def make_broker(mosquitto_exe, tmp_path):
    brokers: list[Broker] = []

    def make(users: dict[str, str] | None = None) -> Broker:
        b = Broker(mosquitto_exe, tmp_path / f"broker{len(brokers)}", users)
        brokers.append(b)
        return b.start()

    yield make
    for b in brokers:
        b.stop()


@pytest.fixture(scope="module")
def broker(mosquitto_exe, tmp_path_factory):
    b = Broker(mosquitto_exe, tmp_path_factory.mktemp("broker")).start()
    yield b
    b.stop()


@dataclass
class Msg:
    topic: str
    payload: str
    retain: bool
    qos: int
    t: float

    def json(self):
        return json.loads(self.payload)


class Subscriber:
    """A paho client of the test's own: every message on ``topics``, in order of arrival."""

    def __init__(self, port: int, topics=("#",), auth: tuple[str, str] | None = None):
        self.msgs: list[Msg] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=f"test-sub-{os.getpid()}-{id(self):x}")
        if auth:
            self.client.username_pw_set(*auth)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self._subscribed.wait(5), "the test's subscriber could not subscribe"

    def _on_message(self, client, userdata, m) -> None:
        with self._cond:
            self.msgs.append(Msg(m.topic, m.payload.decode("utf-8"), bool(m.retain), m.qos, time.monotonic()))
            self._cond.notify_all()

    def on(self, topic: str) -> list[Msg]:
        with self._cond:
            return [m for m in self.msgs if m.topic == topic]

    def wait(self, pred, timeout: float = 10.0) -> Msg | None:
        """The first message (already here or to come) for which ``pred(msg)`` is true; None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.msgs:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _retained(port: int, topics, auth=None, settle: float = 0.5) -> dict[str, Msg]:
    """What a fresh subscriber gets at once: the retained messages, by topic."""
    with Subscriber(port, topics, auth) as sub:
        time.sleep(settle)
        return {m.topic: m for m in sub.msgs if m.retain}


# --- the video ---------------------------------------------------------------------------------------

@dataclass
class Clip:
    path: Path
    labels: list[str]  # what each frame shows, as the model sees it
    planted: list[int]  # frames of the other class inside a run


@pytest.fixture(scope="module")
def clip(export_dir, tmp_path_factory) -> Clip:
    """24 frames of ants with bees planted at 8 and 16, then 24 of bees with ants planted at 8 and 16 (48 in all:
    2.4 s at --pace 20). The photos are picked by what the model says of them as video frames: ants scored at
    least 0.9 ants, bees at least 0.9 bees, so the event layer is tested, not the model's accuracy."""
    from edgeclf.runtime import Classifier, open_backend

    w, h = FRAME
    clf = Classifier(open_backend(export_dir, threads=2), top_k=2)  # the CLI's default pick (tflite int8)
    sure: dict[str, list[np.ndarray]] = {}
    for label in ("ants", "bees"):
        frames = [load_resized(p, h, w) for p in sorted((VAL / label).glob("*.jpg"))]
        preds = clf.classify(frames)
        sure[label] = [f for f, p in zip(frames, preds) if p.label == label and p.score >= 0.9]
    assert len(sure["ants"]) >= 12 and len(sure["bees"]) >= 12, {k: len(v) for k, v in sure.items()}

    labels, planted, pick = [], [], []  # pick: each frame's index into its pool
    for run, other in (("ants", "bees"), ("bees", "ants")):
        for i in range(24):
            kind = other if i in (8, 16) else run
            if kind != run:
                planted.append(len(labels))
            pick.append(len(labels) * 7 % len(sure[kind]))
            labels.append(kind)
    path = tmp_path_factory.mktemp("clip") / "ants_then_bees.mp4"
    # mp4v codes a lone frame unlike its neighbours coarsely: a frame the model no longer sees as picked, once
    # decoded, is replaced by the pool's next photo (deterministic: the same photos every time)
    for _ in range(20):
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(PACE), FRAME)
        assert writer.isOpened()
        for kind, k in zip(labels, pick):
            writer.write(cv2.cvtColor(sure[kind][k], cv2.COLOR_RGB2BGR))
        writer.release()
        cap = cv2.VideoCapture(str(path))
        decoded = []
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            decoded.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        cap.release()
        assert len(decoded) == len(labels)
        bad = [i for i, (pred, want) in enumerate(zip(clf.classify(decoded), labels))
               if pred.label != want or pred.score < 0.8]
        if not bad:
            break
        for i in bad:
            pick[i] = (pick[i] + 1) % len(sure[labels[i]])
    else:
        raise AssertionError(f"frames {bad} of the video are not seen as picked after 20 tries")
    return Clip(path, labels, planted)


# --- running the CLI -------------------------------------------------------------------------------------

class Run:
    """``python -m edgeclf run ...`` in a process of its own; stdout and stderr lines stamped as they come."""

    def __init__(self, *args, env: dict | None = None):
        self.args = [str(a) for a in args]
        self.lines: list[tuple[float, str, str]] = []  # (time.monotonic(), "out"/"err", line)
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "edgeclf", "run", *self.args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self._readers = [threading.Thread(target=self._read, args=(s, n), daemon=True)
                         for s, n in ((self.proc.stdout, "out"), (self.proc.stderr, "err"))]
        for t in self._readers:
            t.start()

    def _read(self, stream, name: str) -> None:
        for line in stream:
            with self._lock:
                self.lines.append((time.monotonic(), name, line.rstrip("\n")))

    def wait(self, timeout: float = 60) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"edgeclf run did not finish in {timeout} s:\n{self.text()[-3000:]}")
        for t in self._readers:
            t.join(5)
        self.ended = time.monotonic()
        return rc

    def ok(self, timeout: float = 60) -> "Run":
        rc = self.wait(timeout)
        assert rc == 0, f"edgeclf run failed ({rc}):\n{self.text()[-3000:]}"
        return self

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        return self.wait(timeout)

    def text(self, stream: str | None = None) -> str:
        with self._lock:
            return "\n".join(line for _, s, line in self.lines if stream in (None, s))

    def when(self, pattern: str) -> float | None:
        with self._lock:
            return next((t for t, _, line in self.lines if re.search(pattern, line)), None)

    def summary(self) -> dict:
        m = re.search(r"summary: (\d+) frames.*?([\d.]+) FPS over ([\d.]+) s", self.text("out"))
        assert m, self.text()[-2000:]
        return {"frames": int(m.group(1)), "fps": float(m.group(2)), "wall_s": float(m.group(3))}


def _installed() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return bool(version("edgeclf"))
    except PackageNotFoundError:
        return False


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _events(sub: Subscriber, prefix: str) -> list[dict]:
    return [m.json() for m in sub.on(f"{prefix}/event")]


def _assert_one_appearance_per_run(events: list[dict], device: str) -> None:
    """ants start, ants end, bees start, bees end: one start and one end per run, nothing for planted frames."""
    assert [(e["type"], e["label"]) for e in events] == [("start", "ants"), ("end", "ants"),
                                                          ("start", "bees"), ("end", "bees")], events
    for start, end in (events[0:2], events[2:4]):
        assert start["id"] == end["id"] and start["device"] == end["device"] == device
        assert start["end"] is None and start["duration"] is None
        assert end["end"] >= end["start"] and end["duration"] == pytest.approx(end["end"] - end["start"], abs=2e-3)
        assert 0.7 <= end["peak"] <= 1.0 and end["frames"] >= 10
    assert events[0]["id"] != events[2]["id"]
    assert events[1]["end"] <= events[2]["start"] + 1.0  # ants left about when bees arrived


# --- MQTT end to end -----------------------------------------------------------------------------------------

def test_mqtt_events_state_availability_and_discovery(export_dir, clip, broker, tmp_path):
    rows_file = tmp_path / "rows.csv"
    with Subscriber(broker.port, ("edgeclf/testcam/#", "homeassistant/#")) as sub:
        run = Run(export_dir, "--source", clip.path, "--mqtt", broker.url(), "--ha-discovery", "--device-name",
                  "testcam", "--pace", PACE, "--output", rows_file, "--headless").ok()
        assert sub.wait(lambda m: m.topic == "edgeclf/testcam/availability" and m.payload == "offline", 5), \
            run.text()
        events_msgs = sub.on("edgeclf/testcam/event")
        states = [m.json()["label"] for m in sub.on("edgeclf/testcam/state")]
        availability = [m.payload for m in sub.on("edgeclf/testcam/availability")]

    # the run saw every frame, the planted ones as the other class
    rows = _rows(rows_file)
    assert len(rows) == len(clip.labels) == run.summary()["frames"]
    assert [r["label"] for r in rows] == clip.labels
    assert all(rows[i]["label"] != rows[i - 1]["label"] for i in clip.planted)

    # events: one start and one end per run, in order, none for the planted frames; QoS 1, not retained
    _assert_one_appearance_per_run([m.json() for m in events_msgs], "testcam")
    assert all(m.qos == 1 and not m.retain for m in events_msgs)
    # the state follows the events: (none), ants, none, bees, none
    changes = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
    assert [s for s in changes if s != "none"] == ["ants", "bees"] and changes[-1] == "none", states
    assert availability[0] == "online" and availability[-1] == "offline"
    assert "mqtt: connected to mqtt://127.0.0.1" in run.text("err")

    # what a fresh subscriber gets after the clean stop: offline, the last state, the discovery configs
    kept = _retained(broker.port, ("edgeclf/testcam/#", "homeassistant/#"))
    assert kept["edgeclf/testcam/availability"].payload == "offline"
    last = kept["edgeclf/testcam/state"].json()
    assert set(last) == {"label", "score", "since"} and last["label"] == "none"
    assert "edgeclf/testcam/event" not in kept

    configs = {t: m.json() for t, m in kept.items() if t.startswith("homeassistant/")}
    label, score = (configs[f"homeassistant/sensor/testcam/{o}/config"] for o in ("label", "score"))
    for obj, cfg in (("label", label), ("score", score)):
        assert cfg["state_topic"] == "edgeclf/testcam/state"
        assert cfg["availability_topic"] == "edgeclf/testcam/availability"
        assert (cfg["payload_available"], cfg["payload_not_available"]) == ("online", "offline")
        assert cfg["unique_id"] == f"edgeclf_testcam_{obj}" and cfg["default_entity_id"] == f"sensor.testcam_{obj}"
        assert cfg["name"] and "object_id" not in cfg
        dev = cfg["device"]
        assert dev["identifiers"] == ["edgeclf_testcam"] and dev["name"] == "testcam"
        assert dev["manufacturer"] == "edgeclf" and "tflite-int8" in dev["model"]
        assert ("sw_version" in dev) == _installed()  # edgeclf's version, when it is installed (pip install -e .)
        assert not (ABBREVIATIONS & (set(cfg) | set(dev))), cfg  # full option names
    assert label["value_template"] == "{{ value_json.label }}"
    assert score["value_template"] == "{{ value_json.score }}" and score["state_class"] == "measurement"
    bees = configs["homeassistant/binary_sensor/testcam/class_bees/config"]
    assert bees["state_topic"] == "edgeclf/testcam/state" and "'ON' if value_json.label == \"bees\"" in \
        bees["value_template"]


def test_mqtt_password_is_never_shown(export_dir, clip, make_broker, tmp_path):
    b = make_broker({"edge": PASSWORD, "watcher": "watcher-pw"})
    rows_file = tmp_path / "rows.jsonl"
    with Subscriber(b.port, ("#",), auth=("watcher", "watcher-pw")) as sub:
        run = Run(export_dir, "--source", clip.path, "--mqtt", b.url(f"edge:{PASSWORD}"), "--device-name", "secure",
                  "--ha-discovery", "--pace", 40, "--output", rows_file, "--headless").ok()
        assert sub.wait(lambda m: m.topic == "edgeclf/secure/availability" and m.payload == "offline", 5), run.text()
        _assert_one_appearance_per_run(_events(sub, "edgeclf/secure"), "secure")  # it did log in
        payloads = "\n".join(m.topic + " " + m.payload for m in sub.msgs)
    assert PASSWORD not in run.text() and PASSWORD not in rows_file.read_text() and PASSWORD not in payloads
    assert f"mqtt: connected to mqtt://127.0.0.1:{b.port} " in run.text("err")

    # the password from the environment instead; a wrong one is one line, and the run goes on without the broker
    run = Run(export_dir, "--source", clip.path, "--mqtt", b.url("edge"), "--device-name", "secure2", "--max-frames",
              "10", "--headless", env={"EDGECLF_MQTT_PASSWORD": "wrong-" + PASSWORD}).ok()
    refused = [ln for ln in run.text("err").splitlines() if "refused the connection" in ln]
    assert len(refused) == 1 and "check the user name and password" in refused[0], run.text()
    assert PASSWORD not in run.text() and run.summary()["frames"] == 10


def test_kill_9_leaves_offline_retained(export_dir, clip, broker):
    with Subscriber(broker.port, ("edgeclf/killed/#",)) as sub:
        run = Run(export_dir, "--source", clip.path, "--loop", "--pace", PACE, "--mqtt", broker.url(),
                  "--device-name", "killed", "--headless")
        assert sub.wait(lambda m: m.topic == "edgeclf/killed/event", 30), run.text()  # running and connected
        assert sub.on("edgeclf/killed/availability")[-1].payload == "online"
        run.proc.kill()  # SIGKILL: no clean stop, the broker's last will speaks for it
        run.wait()
        assert sub.wait(lambda m: m.topic == "edgeclf/killed/availability" and m.payload == "offline", 5)
    assert _retained(broker.port, ("edgeclf/killed/#",))["edgeclf/killed/availability"].payload == "offline"


def test_broker_restart_mid_run(export_dir, clip, make_broker, tmp_path):
    """The broker goes away for ~2.5 s: rows keep coming; it comes back empty (no persistence), the run reconnects
    and publishes the current state again (retained) and "online"."""
    b = make_broker()
    rows_file = tmp_path / "rows.csv"
    with Subscriber(b.port, ("edgeclf/restart/#",)) as sub:
        run = Run(export_dir, "--source", clip.path, "--loop", "--pace", PACE, "--mqtt", b.url(), "--device-name",
                  "restart", "--output", rows_file, "--headless")
        assert sub.wait(lambda m: m.topic == "edgeclf/restart/event", 30), run.text()
    try:
        b.stop()
        size_down = rows_file.stat().st_size
        time.sleep(2.2)  # rows are flushed about once a second
        assert rows_file.stat().st_size > size_down  # the loop never waited for the broker
        assert run.proc.poll() is None
        b.start()
        restarted = time.monotonic()
        with Subscriber(b.port, ("edgeclf/restart/#",)) as fresh:
            state = fresh.wait(lambda m: m.topic == "edgeclf/restart/state", 15)
            online = fresh.wait(lambda m: m.topic == "edgeclf/restart/availability" and m.payload == "online", 5)
            assert state is not None and online is not None, run.text()
            reconnect_s = min(state.t, online.t) - restarted
            assert set(state.json()) == {"label", "score", "since"}
        # a retained state on a broker that started empty: the run published it again
        kept = _retained(b.port, ("edgeclf/restart/#",))
        assert kept["edgeclf/restart/state"].json()["label"] in ("none", "ants", "bees")
    finally:
        rc = run.stop()
    assert rc == 0, run.text()
    err = run.text("err")
    assert "mqtt: lost the connection" in err and "mqtt: reconnected to" in err, err
    assert _retained(b.port, ("edgeclf/restart/#",))["edgeclf/restart/availability"].payload == "offline"
    print(f"reconnected {reconnect_s:.2f} s after the broker came back")


# --- the webhook ---------------------------------------------------------------------------------------

class Hook:
    """A ThreadingHTTPServer on 127.0.0.1 that records each POST; ``answers`` are the status codes it gives,
    in order (then 200)."""

    def __init__(self, answers=()):
        self.posts: list[dict] = []
        self.answers = list(answers)
        self.headers: list[dict] = []
        self.paths: list[str] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = hook.answers.pop(0) if hook.answers else 200
                hook.posts.append({"status": status, "json": json.loads(body)})
                hook.headers.append(dict(self.headers))
                hook.paths.append(self.path)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def delivered(self) -> list[dict]:
        return [p["json"] for p in self.posts if p["status"] == 200]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def hook():
    hooks = []

    def make(answers=()):
        hooks.append(Hook(answers))
        return hooks[-1]

    yield make
    for h in hooks:
        h.close()


def test_webhook_posts_each_event(export_dir, clip, hook):
    h = hook()
    url = f"http://robot:{PASSWORD}@127.0.0.1:{h.port}/hooks/edge?token={SECRET_TOKEN}"
    run = Run(export_dir, "--source", clip.path, "--webhook", url, "--device-name", "hookcam", "--pace", 40,
              "--headless").ok()
    _assert_one_appearance_per_run(h.delivered(), "hookcam")
    assert all(p["status"] == 200 for p in h.posts)
    assert h.paths[0] == f"/hooks/edge?token={SECRET_TOKEN}"  # the query goes to the server...
    assert h.headers[0]["Content-Type"] == "application/json" and h.headers[0]["Authorization"].startswith("Basic ")
    assert PASSWORD not in run.text() and SECRET_TOKEN not in run.text()  # ...and is never shown


def test_webhook_retries_a_server_error(export_dir, clip, hook):
    h = hook(answers=[500])
    run = Run(export_dir, "--source", clip.path, "--webhook", f"http://127.0.0.1:{h.port}/hook", "--device-name",
              "retrycam", "--pace", 40, "--headless").ok()
    assert [p["status"] for p in h.posts] == [500, 200, 200, 200, 200]
    assert h.posts[0]["json"] == h.posts[1]["json"]  # the first event again, after the retry
    _assert_one_appearance_per_run(h.delivered(), "retrycam")
    assert "webhook" not in run.text("err")  # delivered in the end: nothing to report


def test_webhook_that_never_answers_does_not_slow_the_run(export_dir, clip, tmp_path):
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        rows_file = tmp_path / "rows.csv"
        run = Run(export_dir, "--source", clip.path, "--webhook", f"http://127.0.0.1:{port}/hook", "--pace", PACE,
                  "--output", rows_file, "--headless").ok()
    s = run.summary()
    expected = len(clip.labels) / PACE  # 2.4 s
    assert s["frames"] == len(_rows(rows_file)) == len(clip.labels)
    assert s["wall_s"] < expected + 1.5 and s["fps"] > 0.75 * PACE, s
    # from the first line about the model to the summary: the frames, plus at most the 2 s grace of close()
    t0, t1 = run.when(r"^backend: "), run.when(r"^summary: ")
    assert t1 - t0 < expected + 2.0 + 3.0, (t1 - t0, run.text())  # a POST alone may take 3 x 5 s
    assert re.search(r"webhook: \d+ events not delivered to http://127\.0\.0\.1:\d+/hook", run.text("err")), run.text()
