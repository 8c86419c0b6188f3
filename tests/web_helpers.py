"""What the tests of edgeclf's servers share: a free loopback port, a plain HTTP client, and Debian's Chromium.

The browser is Debian's `chromium` (installed by .ci/run), found here and driven by Playwright through
``executable_path`` -- never a browser Playwright downloads. Without it the browser tests skip, unless
EDGECLF_REQUIRE_BROWSER=1 (CI) makes them fail. The ``browser`` fixture lives in conftest.py.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 10.0):
    """(status, headers, body) of a request; HTTP errors are answers too."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def chromium() -> str:
    """The path of Debian's Chromium; skips (or fails, with EDGECLF_REQUIRE_BROWSER=1) without it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("EDGECLF_REQUIRE_BROWSER") == "1":
        pytest.fail("headless Chromium is required here (EDGECLF_REQUIRE_BROWSER=1): apt-get install chromium")
    pytest.skip("no Chromium here (apt-get install chromium)")


class EdgeclfServer:
    """``python -m edgeclf COMMAND ... --serve 127.0.0.1:PORT`` in a subprocess, as a user starts it: ready once
    ``ready_path`` answers 200; stopped with SIGTERM on exit, its output kept in ``out`` and ``err``."""

    ready_path = "/healthz"
    start_timeout = 60.0

    def __init__(self, command: list[str], env: dict | None = None, headers: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "edgeclf", *command, "--serve", f"127.0.0.1:{self.port}"]
        self.env = {**os.environ, **(env or {})}
        self.headers = headers or {}
        self.proc: subprocess.Popen | None = None
        self.out = self.err = ""

    def __enter__(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise AssertionError(f"{' '.join(self.args[2:4])} exited {self.proc.returncode}:\n{self.err[-3000:]}")
            try:
                if http(self.url + self.ready_path, headers=self.headers, timeout=2)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"{' '.join(self.args[2:4])} --serve did not come up:\n{self.err[-3000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self.out, self.err = self.out + out, self.err + err
        return self.proc.returncode

    def __exit__(self, *exc) -> None:
        self.stop()
