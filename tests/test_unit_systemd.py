"""`edgeclf service install`'s unit text and the sd_notify protocol, without a model (fast).

The unit's command line is checked twice: by a small reader of systemd's rules written here (independent of
the writer), and, where systemd-analyze is installed, by systemd itself (its `verify` refuses an ExecStart=
whose executable does not exist: a path with spaces and % only passes when quoted right).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from edgeclf.cli.service import (ServiceError, exec_line, parse_run_args, quote_exec_arg, refuse_secrets,
                                 render_unit, service_argv)
from edgeclf.runtime.events import FrameResult
from edgeclf.runtime.hub import Hub
from edgeclf.runtime.output import make_prediction
from edgeclf.runtime.systemd import Notify, SystemdNotifier, socket_address, watchdog_interval

TRICKY = ["plain", "with space", 'dq"uote', "sq'uote", "back\\slash", "100%", "%n", "$HOME", "${HOME}x", "a;b", ";",
          "", "tab\there", "new\nline", "ünïcödé", "--opt=val ue", "\\;"]


# --- a reader of ExecStart= as systemd reads it (systemd.service(5), "Command lines") -----------------------
def systemd_words(value: str) -> list[str]:
    """Specifiers (only %% here), then words with quotes and C escapes, then $$ (a lone ${NAME} word is kept)."""
    text, i = [], 0
    while i < len(value):
        if value[i] == "%":
            assert value[i + 1 : i + 2] == "%", f"unescaped specifier in {value!r}"
            text.append("%")
            i += 2
        else:
            text.append(value[i])
            i += 1
    s = "".join(text)
    words, cur, quote, started, i = [], [], None, False, 0
    escapes = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", ";": ";"}
    while i < len(s):
        ch = s[i]
        if ch == "\\":
            if s[i + 1] == "x":
                cur.append(chr(int(s[i + 2 : i + 4], 16)))
                started, i = True, i + 4
                continue
            assert s[i + 1] in escapes, f"unknown escape in {value!r}"
            cur.append(escapes[s[i + 1]])
            started, i = True, i + 2
            continue
        if quote:
            if ch == quote:
                quote = None
            else:
                cur.append(ch)
        elif ch in "\"'":
            quote, started = ch, True
        elif ch in " \t":
            if started:
                words.append("".join(cur))
            cur, started = [], False
        else:
            cur.append(ch)
            started = True
        i += 1
    assert quote is None, f"unterminated quote in {value!r}"
    if started:
        words.append("".join(cur))
    out = []
    for w in words:
        if re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", w):
            out.append(w)
            continue
        assert not re.search(r"(?<!\$)\$(?!\$)", w.replace("$$", "")), f"an unescaped $ in {w!r}"
        out.append(w.replace("$$", "$"))
    return out


def test_exec_args_read_back_as_written():
    argv = ["/opt/edge clf/bin/python", "-m", "edgeclf", "run", *TRICKY]
    assert systemd_words(exec_line(argv)) == argv
    assert quote_exec_arg("${EDGECLF_SOURCE}") == "${EDGECLF_SOURCE}"  # systemd fills it in, as one argument
    assert quote_exec_arg("$HOME") == '"$$HOME"'
    assert quote_exec_arg("50%") == '"50%%"'
    assert quote_exec_arg("/plain/path-1.0") == "/plain/path-1.0"
    with pytest.raises(ServiceError):
        exec_line(["python", "-m", "edgeclf"])  # systemd needs an absolute executable
    for exe in ('/opt/q"uote/python', "/opt/o'brien/python", "/opt/back\\slash/python", "/opt/$HOME/python"):
        with pytest.raises(ServiceError, match="plainer path"):  # systemd refuses them in an executable's name
            exec_line([exe, "-m", "edgeclf"])


def test_run_args_written_back_absolute_and_parse_the_same(tmp_path):
    cwd = tmp_path / "my dir"
    ctx = parse_run_args(["exp ort", "--source", "clips/a b.mp4", "--output", "out 100%.csv", "--serve", "8080",
                          "--threshold", "0.25", "--loop", "-v", "--event-labels", "ants,bees"])
    argv = service_argv(ctx, cwd)
    assert argv[1:4] == ["-m", "edgeclf", "run"] and os.path.isabs(argv[0])
    back = parse_run_args(systemd_words(exec_line(argv))[4:])
    assert back.params["model"] == cwd / "exp ort"
    assert back.params["source"] == str(cwd / "clips/a b.mp4")
    assert back.params["output"] == cwd / "out 100%.csv"
    assert back.params["threshold"] == 0.25 and back.params["loop"] and back.params["headless"]
    assert back.params["serve"] == "8080" and back.params["event_labels"] == "ants,bees"
    assert "--verbose" in argv
    cam = service_argv(parse_run_args(["/m", "--source", "0"]), cwd)
    assert cam[cam.index("--source") + 1] == "0"  # cameras, URLs and ${VAR} stay as they are


@pytest.mark.parametrize("args, needle", [
    (["--token", "0123456789"], "EDGECLF_TOKEN"),
    (["--token=0123456789"], "EDGECLF_TOKEN"),
    (["--mqtt", "mqtt://u:s3cret@broker"], "EDGECLF_MQTT_PASSWORD"),
    (["--webhook", "https://u:s3cret@hooks.local/x"], "EDGECLF_WEBHOOK"),
])
def test_secrets_refused(args, needle, monkeypatch):
    monkeypatch.delenv("EDGECLF_TOKEN", raising=False)
    ctx = parse_run_args(["/m", "--source", "0", *args])
    with pytest.raises(ServiceError) as info:
        refuse_secrets(ctx, "door")
    msg = str(info.value)
    assert needle in msg and "/etc/edgeclf/door.env" in msg and "chmod 600" in msg
    assert "s3cret" not in msg and "0123456789" not in msg and "\n" not in msg


def test_secrets_allowed_from_environment(monkeypatch):
    monkeypatch.setenv("EDGECLF_TOKEN", "from-the-env-file")  # the run reads it at start: not an argument
    refuse_secrets(parse_run_args(["/m", "--source", "0", "--mqtt", "mqtt://pi@broker"]), "edgeclf")
    refuse_secrets(parse_run_args(["/m", "--source", "${EDGECLF_SOURCE}"]), "edgeclf")


def test_bad_run_option_is_one_line():
    with pytest.raises(ServiceError) as info:
        parse_run_args(["/m", "--source", "0", "--no-such-option"])
    assert "--no-such-option" in str(info.value) and "\n" not in str(info.value)


# --- systemd-analyze --------------------------------------------------------------------------------------
def systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze") or ("/usr/bin/systemd-analyze" if os.path.exists("/usr/bin/systemd-analyze")
                                              else None)
    if exe is None:
        if os.environ.get("EDGECLF_REQUIRE_SYSTEMD") == "1":
            pytest.fail("systemd-analyze is missing (EDGECLF_REQUIRE_SYSTEMD=1): apt-get install systemd")
        pytest.skip("systemd-analyze is not installed")
    return exe


def verify_unit(unit: Path) -> tuple[bool, str]:
    """systemd's own check of a unit file, offline: no running systemd needed (a container, CI). True when it
    passes with nothing to say about this unit (systemd only warns, exit 0, about a setting it ignores)."""
    exe = systemd_analyze()
    help_text = subprocess.run([exe, "--help"], capture_output=True, text=True).stdout
    cmd = [exe, "verify", "--man=no"]
    if "--generators" in help_text:
        cmd.append("--generators=no")
    if "--recursive-errors" in help_text:
        cmd.append("--recursive-errors=no")  # only this unit: not the dependencies a container may lack
    proc = subprocess.run(cmd + [str(unit)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"})
    out = (proc.stdout + proc.stderr).strip()
    about_it = [ln for ln in out.splitlines() if unit.name in ln]
    return proc.returncode == 0 and not about_it, out


def test_systemd_reads_quoted_executable_path(tmp_path):
    """systemd-analyze verify fails on an ExecStart= whose executable does not exist: this one exists only at
    the path with spaces and %, so it passes only when the writer quoted it as systemd reads it."""
    folder = tmp_path / "bin dir 100%"
    folder.mkdir()
    exe = folder / "py thon %n"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    unit = tmp_path / "edgeclf-quote.service"
    unit.write_text(render_unit(name="edgeclf-quote", argv=[str(exe), "-m", "edgeclf", "run", "/a b/export", "50%"],
                                working_dir=str(folder), description="test 100%", user=None, watchdog_sec=30,
                                restart_sec=5))
    ok, out = verify_unit(unit)
    assert ok, out
    naive = unit.read_text().replace(exec_line([str(exe), "-m", "edgeclf", "run", "/a b/export", "50%"]),
                                     f"{exe} -m edgeclf run /a b/export 50%")
    unit.write_text(naive)
    assert not verify_unit(unit)[0]  # the check is sensitive: unquoted, systemd finds no such executable


# --- the notify protocol ----------------------------------------------------------------------------------
def test_socket_address_and_watchdog_env():
    assert socket_address("@edgeclf/notify") == b"\0edgeclf/notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("vsock:2:1234") is None and socket_address("") is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}) == 0.2
    assert watchdog_interval({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}) is None  # another process's
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None and watchdog_interval({}) is None


class Receiver:
    """An abstract-namespace datagram socket, as systemd's (``NOTIFY_SOCKET=@name``)."""

    def __init__(self):
        self.name = f"edgeclf-test-{uuid.uuid4().hex[:12]}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name.encode())
        self.sock.settimeout(0.05)
        self.got: list[tuple[float, str]] = []

    def drain(self, seconds: float = 0.0) -> list[tuple[float, str]]:
        end = time.monotonic() + seconds
        while True:
            try:
                self.got.append((time.monotonic(), self.sock.recv(4096).decode()))
                continue
            except socket.timeout:
                pass
            if time.monotonic() >= end:
                return self.got

    def close(self):
        self.sock.close()


def _publish(hub: Hub, n: int, every: float = 0.04) -> float:
    for _ in range(n):
        hub.publish(FrameResult(hub.frames + 1, "test", hub.frames, time.time(),
                                make_prediction(np.array([0.9, 0.1]), hub.classes), 1.0))
        time.sleep(every)
    return time.monotonic()


def test_notifier_ready_watchdog_only_while_frames_flow_stopping(monkeypatch):
    rx = Receiver()
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + rx.name)
        monkeypatch.setenv("WATCHDOG_USEC", "200000")
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        notifier = SystemdNotifier.from_env(stall_after=0.4)
        assert notifier is not None and notifier.watchdog == 0.1
        hub = Hub(["ants", "bees"], stall_after=0.4, listeners=[notifier])
        hub.start("test")
        assert not [m for _, m in rx.drain(0.3) if "READY=1" in m]  # no frame yet: not ready
        last = _publish(hub, 15)
        rx.drain(0.1)
        assert sum("READY=1" in m for _, m in rx.got) == 1
        assert sum(m == "WATCHDOG=1" for _, m in rx.got) >= 3
        rx.drain(1.2)  # no frame: the pings stop once the latest frame is older than stall_after
        late = [t - last for t, m in rx.got if m == "WATCHDOG=1" and t > last + 0.4 + 0.1 + 0.25]
        assert not late, late
        assert any("stalled" in m and m.startswith("STATUS=") for _, m in rx.got)
        back = time.monotonic()
        _publish(hub, 10)
        assert [t for t, m in rx.drain(0.1) if m == "WATCHDOG=1" and t > back], "no ping once frames flow again"
        hub.close("stopped")
        msgs = [m for _, m in rx.drain(0.2)]
        assert "STOPPING=1" in msgs[-1] and sum("READY=1" in m for m in msgs) == 1
        assert not notifier._thread.is_alive()
    finally:
        rx.close()


def test_notifier_without_watchdog_or_socket_never_raises(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert SystemdNotifier.from_env(stall_after=5) is None
    gone = Notify(b"\0edgeclf-nobody-listens-" + uuid.uuid4().hex.encode())
    assert gone.send("READY=1") is False and gone.failed  # logged once; never raised
    assert gone.send("WATCHDOG=1") is False
    rx = Receiver()
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + rx.name)
        monkeypatch.setenv("WATCHDOG_USEC", "200000")
        monkeypatch.setenv("WATCHDOG_PID", "1")  # the watchdog is another process's business
        notifier = SystemdNotifier.from_env(stall_after=5)
        assert notifier.watchdog is None
        hub = Hub(["ants", "bees"], listeners=[notifier])
        hub.start("test")
        _publish(hub, 5)
        hub.close()
        msgs = [m for _, m in rx.drain(0.1)]
        assert any("READY=1" in m for m in msgs) and "STOPPING=1" in msgs[-1]
        assert "WATCHDOG=1" not in msgs
    finally:
        rx.close()
