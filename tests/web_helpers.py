"""What the tests of edgeclf's servers share: a free loopback port, a plain HTTP client, and Debian's Chromium.

The browser is Debian's `chromium` (installed by .ci/run), found here and driven by Playwright through
``executable_path`` -- never a browser Playwright downloads. Without it the browser tests skip, unless
EDGECLF_REQUIRE_BROWSER=1 (CI) makes them fail. The ``browser`` fixture lives in conftest.py.
"""
from __future__ import annotations

import os
import shutil
import socket
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
