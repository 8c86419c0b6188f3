"""``edgeclf label DIR``: the labelling page in a real browser over frames a real ``edgeclf run --collect`` kept.

The frames are collected from the field of tests/field_helpers.py (hymenoptera training photos through the camera
transform). The server is the real command (a subprocess, as a user starts it) on 127.0.0.1 and a free port; the
browser is Debian's Chromium driven by Playwright, as in tests/test_serve.py (skipped without it, unless
EDGECLF_REQUIRE_BROWSER=1 makes that a failure). Checked: keys and clicks assign labels, undo works, labels.csv
holds exactly the answers given (and the rows a user wrote), a restart resumes, nothing is fetched off this host.
"""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import HYMENOPTERA, edgeclf_cli  # noqa: E402
from field_helpers import field_frames, write_video  # noqa: E402
from web_helpers import EdgeclfServer, free_port, http  # noqa: E402

from edgeclf.runtime.collect import read_records  # noqa: E402

pytestmark = pytest.mark.slow
USER_ROWS = [["mine/extra.jpg", "wasp"], ["mine/other.jpg", ""]]  # written by a person: kept as they are


class Label(EdgeclfServer):
    """``edgeclf label DIR --serve 127.0.0.1:PORT`` in a subprocess; stopped (SIGTERM) on exit."""

    ready_path = "/api/items"
    start_timeout = 30.0

    def __init__(self, folder: Path, *args: str):
        token = {"Authorization": f"Bearer {args[args.index('--token') + 1]}"} if "--token" in args else {}
        super().__init__(["label", str(folder), *args], headers=token)


@pytest.fixture(scope="module")
def collected(export_dir, tmp_path_factory) -> Path:
    """Frames a real run kept from the field (uncertain ones, event starts, 1 in 6 at random)."""
    base = tmp_path_factory.mktemp("label")
    video = write_video(base / "field.mp4", field_frames(HYMENOPTERA / "train", per_class=20, offset=60, seed=5))
    folder = base / "collected"
    edgeclf_cli("run", str(export_dir), "--source", str(video), "--headless", "--collect", str(folder),
                "--collect-every", "6", "--collect-per-minute", "0", "--collect-per-hour", "0", timeout=120)
    assert len(list(read_records(folder))) >= 8
    return folder


def rows(folder: Path) -> list[list[str]]:
    with open(folder / "labels.csv", newline="") as fh:
        got = list(csv.reader(fh))
    assert got[0] == ["file", "label"]
    return got[1:]


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(url + "/", wait_until="load")
    page.wait_for_function("document.body.dataset.ready === '1'", timeout=15000)
    return page, requested


def current(page) -> str:
    return page.evaluate("document.body.dataset.current")


def settle(page, done: int) -> None:
    page.wait_for_function(f"document.body.dataset.pending === '0' && document.getElementById('done').textContent "
                           f"=== '{done}'", timeout=10000)


def test_keys_clicks_undo_and_restart(collected, browser, tmp_path):
    import shutil

    folder = tmp_path / "copy"  # a folder copied from the device (as rsync -a would)
    shutil.copytree(collected, folder)
    with open(folder / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["file", "label"], *USER_ROWS])
    by_margin = sorted(read_records(folder), key=lambda r: r["margin"])
    with Label(folder) as srv:
        ports = [srv.port]
        page, requested = open_page(browser, srv.url)
        classes = page.eval_on_selector_all("#classes button", "bs => bs.map(b => b.dataset.label)")
        assert classes == ["ants", "bees"]
        assert page.evaluate("document.getElementById('total').textContent") == str(len(by_margin))
        a = current(page)
        assert a == by_margin[0]["file"]  # the most uncertain first
        page.wait_for_function("document.getElementById('frame').complete && "
                               "document.getElementById('frame').naturalWidth > 0", timeout=10000)
        assert by_margin[0]["label"] in page.inner_text("#guess")
        page.keyboard.press("1")  # two keys at once: answered in order, each on the frame it was shown with
        page.keyboard.press("2")
        settle(page, 2)
        b = by_margin[1]["file"]
        c = current(page)
        page.click("#classes button[data-label='bees']")  # a click
        settle(page, 3)
        d = current(page)
        page.keyboard.press("x")  # discard ...
        settle(page, 4)
        page.keyboard.press("u")  # ... undone: the same frame is shown again
        settle(page, 3)
        assert current(page) == d
        page.click("#discard")
        settle(page, 4)
        assert rows(folder)[-1] == [d, ""]
        page.keyboard.press("Backspace")
        settle(page, 3)
        assert current(page) == d
        page.keyboard.press("1")
        settle(page, 4)
        page.click("#undo")
        settle(page, 3)
        assert current(page) == d
        page.keyboard.press("2")
        settle(page, 4)
        e = current(page)
        page.screenshot(path=str(tmp_path / "label.png"))
        assert rows(folder) == USER_ROWS + [[a, "ants"], [b, "bees"], [c, "bees"], [d, "bees"]]
        page.close()
    assert len({a, b, c, d, e}) == 5
    # a restart continues where it stopped: only unlabelled frames first, the count done
    with Label(folder) as srv:
        ports.append(srv.port)
        page, more = open_page(browser, srv.url)
        requested += more
        assert page.evaluate("document.getElementById('done').textContent") == "4"
        assert current(page) == e
        assert "4 already labelled" in page.inner_text("#status")
        page.keyboard.press("0")
        settle(page, 5)
        page.click("#undo")  # an undo after a restart takes back this session's answer
        settle(page, 4)
        page.keyboard.press("1")
        settle(page, 5)
        page.close()
    assert rows(folder) == USER_ROWS + [[a, "ants"], [b, "bees"], [c, "bees"], [d, "bees"], [e, "ants"]]
    assert "labelled: 5 of" in srv.err
    assert requested and {r.split("/")[2] for r in requested} == {f"127.0.0.1:{p}" for p in ports}, requested
    assert all(r.startswith("http://") for r in requested), requested  # nothing fetched from elsewhere
    assert not [p for p in folder.glob(".labels.*")]  # no temporary left behind


def test_api_refuses_what_is_not_an_answer_and_serves_only_collected_files(collected, tmp_path):
    import json
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(collected, folder)
    with Label(folder, "--classes", "ants,bees") as srv:
        first = json.loads(http(f"{srv.url}/api/items")[2])["items"][0]["file"]
        post = lambda body: http(f"{srv.url}/api/label", json.dumps(body).encode(),  # noqa: E731
                                 {"Content-Type": "application/json"})
        assert post({"file": first, "label": "wasp"})[0] == 400
        assert post({"file": "frames/../../etc/passwd", "label": "ants"})[0] == 404
        assert post({"nope": 1})[0] == 400
        assert http(f"{srv.url}/api/undo", b"{}")[0] == 409
        assert http(f"{srv.url}/frames/../collected.jsonl")[0] == 404
        assert http(f"{srv.url}/{first}")[0] == 200
        assert post({"file": first, "label": "bees"})[0] == 200
    assert rows(folder) == [[first, "bees"]]
    # with a token (as on the device, served to the LAN), every endpoint asks for it
    token = "s3cret-label-token"
    with Label(folder, "--token", token) as srv:
        assert http(f"{srv.url}/")[0] == 401 and http(f"{srv.url}/api/items")[0] == 401
        assert http(f"{srv.url}/{first}")[0] == 401
        assert http(f"{srv.url}/api/items", headers={"Authorization": f"Bearer {token}"})[0] == 200
    # a non-loopback address needs a token, as for edgeclf run --serve
    proc = edgeclf_cli("label", str(folder), "--serve", f"0.0.0.0:{free_port()}", check=False, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "EDGECLF_TOKEN"})
    assert proc.returncode == 2 and "needs a token" in proc.stderr
