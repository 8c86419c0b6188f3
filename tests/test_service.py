"""`edgeclf run` under systemd, with real components: the unit `edgeclf service install` writes (checked by
systemd-analyze), and the real CLI talking sd_notify to a socket of the test's, on a live MJPEG camera
(tests/stream_helpers.py) that the test pauses as a hanging camera would.

systemd-analyze: installed by .ci/run in CI (EDGECLF_REQUIRE_SYSTEMD=1 makes its absence a failure); skipped
elsewhere when missing. No running systemd is needed (`verify` is offline).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import HYMENOPTERA  # noqa: E402
from stream_helpers import MjpegServer, jpeg_frames  # noqa: E402
from test_unit_systemd import systemd_words, verify_unit  # noqa: E402

from edgeclf.cli.service import parse_run_args  # noqa: E402

pytestmark = pytest.mark.slow  # a real exported model (tests/runtime_models.py)
REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 120):
    return subprocess.run([sys.executable, "-m", "edgeclf", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or REPO, env={**os.environ, "EDGECLF_TOKEN": "", **(env or {})})


def exec_start(unit_text: str) -> list[str]:
    lines = [ln for ln in unit_text.splitlines() if ln.startswith("ExecStart=")]
    assert len(lines) == 1, unit_text
    return systemd_words(lines[0][len("ExecStart="):])


# --- the unit ---------------------------------------------------------------------------------------------
def test_installed_unit_passes_systemd_analyze(export_dir, tmp_path):
    units = tmp_path / "units"
    units.mkdir()
    work = tmp_path / "work dir"  # relative paths of the run are made absolute against it
    work.mkdir()
    proc = cli("service", "install", str(export_dir), "--source", "0", "--serve", "8080", "--mqtt",
               "mqtt://pi@broker.local", "--ha-discovery", "--stall-timeout", "3", "--output", "preds 100%.csv",
               "--name", "edgeclf-test", "--unit-dir", str(units), "--watchdog-sec", "20", cwd=work)
    assert proc.returncode == 0, proc.stderr
    unit = units / "edgeclf-test.service"
    text = unit.read_text()
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=20", "Restart=on-failure", "RestartSec=5",
                 "EnvironmentFile=-/etc/edgeclf/edgeclf-test.env", "Environment=PYTHONUNBUFFERED=1",
                 "WantedBy=multi-user.target", "After=network-online.target", "Wants=network-online.target",
                 f"WorkingDirectory={work}"):
        assert line in text.splitlines(), (line, text)
    assert "sudo systemctl daemon-reload" in proc.stdout
    assert "sudo systemctl enable --now edgeclf-test.service" in proc.stdout
    assert "journalctl -u edgeclf-test -f" in proc.stdout
    argv = exec_start(text)
    assert argv[:4] == [sys.executable, "-m", "edgeclf", "run"] and os.path.isabs(argv[0])
    run = parse_run_args(argv[4:])  # what systemd will start is what edgeclf run accepts
    assert run.params["model"] == export_dir and run.params["source"] == "0" and run.params["serve"] == "8080"
    assert run.params["output"] == work / "preds 100%.csv" and run.params["stall_timeout"] == 3.0
    assert run.params["headless"] and run.params["ha_discovery"]
    ok, out = verify_unit(unit)
    assert ok, f"systemd-analyze verify:\n{out}\n--- unit:\n{text}"


@pytest.mark.parametrize("secret, needle", [(["--token", "abcdefgh123"], "EDGECLF_TOKEN"),
                                            (["--mqtt", "mqtt://u:secret@h"], "EDGECLF_MQTT_PASSWORD")])
def test_install_refuses_secrets(export_dir, tmp_path, secret, needle):
    proc = cli("service", "install", str(export_dir), "--source", "0", *secret, "--unit-dir", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert needle in err and "/etc/edgeclf/edgeclf.env" in err and "chmod 600" in err
    assert "secret" not in err.replace("secrets", "") and "abcdefgh123" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_install_refuses_bad_run_option_in_one_line(export_dir, tmp_path):
    proc = cli("service", "install", str(export_dir), "--source", "0", "--stall-timeout", "-1",
               "--unit-dir", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "--stall-timeout" in err, err
    proc = cli("service", "install", str(export_dir), "--source", "0", "--no-such-option", "--unit-dir", str(tmp_path))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "--no-such-option" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_install_prints_the_unit(export_dir):
    proc = cli("service", "install", str(export_dir), "--source", "0", "--name", "edgeclf-printed", "--unit-dir", "-")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("#") and "[Service]" in proc.stdout and "[Install]" in proc.stdout
    assert exec_start(proc.stdout)[4:7] == [str(export_dir), "--source", "0"]
    assert not Path("/etc/systemd/system/edgeclf-printed.service").exists()


# --- READY / WATCHDOG / STOPPING from the real CLI ----------------------------------------------------------
class NotifySocket:
    """The test's $NOTIFY_SOCKET: every datagram with its arrival time."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sdn")  # short: AF_UNIX paths are limited to 108 bytes
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.got: list[tuple[float, str]] = []

    def wait_for(self, predicate, timeout: float, after: float = 0.0) -> bool:
        """Receive until a message (arrived after ``after``) satisfies ``predicate``, or ``timeout`` passes."""
        end = time.monotonic() + timeout
        if any(t >= after and predicate(m) for t, m in self.got):
            return True
        while time.monotonic() < end:
            try:
                m = self.sock.recv(4096).decode()
            except socket.timeout:
                continue
            self.got.append((time.monotonic(), m))
            if time.monotonic() >= after and predicate(m):
                return True
        return False

    def collect(self, seconds: float) -> None:
        self.wait_for(lambda m: False, seconds)

    def pings(self, start: float = 0.0, end: float = float("inf")) -> list[float]:
        return [t for t, m in self.got if m == "WATCHDOG=1" and start <= t < end]

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


@pytest.fixture
def camera():
    frames = jpeg_frames(HYMENOPTERA / "val", count=12)  # real photos, ants and bees
    with MjpegServer(frames, fps=10) as cam:
        yield cam


def test_ready_watchdog_while_frames_flow_stopping(export_dir, camera):
    notify = NotifySocket()
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000", "PYTHONUNBUFFERED": "1"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "edgeclf", "run", str(export_dir), "--source", camera.url,
                             "--stall-timeout", "1", "--headless"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert notify.wait_for(lambda m: "READY=1" in m.splitlines(), timeout=90), "no READY=1"
        flowing = time.monotonic()
        notify.collect(1.5)
        assert len(notify.pings(flowing)) >= 3, notify.got  # every 0.2 s while frames flow

        camera.pause()  # the camera hangs: the connection stays open, no frame comes
        paused, sent = time.monotonic(), camera.frames_sent
        notify.collect(3.5)
        assert camera.frames_sent == sent
        late = [round(t - paused, 2) for t in notify.pings(paused + 1.5)]
        assert not late, f"WATCHDOG=1 at {late} s after the pause (--stall-timeout 1)"
        assert any(m.startswith("STATUS=") and "stalled" in m for t, m in notify.got if t > paused)

        camera.resume()
        resumed = time.monotonic()
        assert notify.wait_for(lambda m: m == "WATCHDOG=1", timeout=20, after=resumed), \
            "no WATCHDOG=1 once the camera delivers again"
        back = time.monotonic()
        notify.collect(1.0)
        assert len(notify.pings(back)) >= 2

        proc.send_signal(signal.SIGTERM)  # systemctl stop
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err[-3000:]
        notify.collect(0.2)
        msgs = [m for _, m in notify.got]
        assert "STOPPING=1" in msgs[-1].splitlines(), msgs[-5:]
        assert sum("READY=1" in m.splitlines() for m in msgs) == 1
        assert "summary:" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        notify.close()
