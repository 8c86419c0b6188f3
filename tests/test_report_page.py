"""report.html, the run's page, rendered by a real browser (headless Chromium) and read through its DOM.

The session's run (conftest.small_run) and its int8 export (conftest.small_export) are copied, benched, and
the page rebuilt with `edgeclf report`; every gallery is checked against numbers recomputed here: the
mistakes against report.json's confusion matrix, the int8 disagreements against the exported files run
through the edgeclf runtime. Chromium comes from Debian (`chromium`, installed by .ci/run); without it these
tests skip, unless EDGECLF_REQUIRE_BROWSER=1 (CI) makes that a failure.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from web_helpers import chromium
from click.testing import CliRunner

from edgeclf.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from conftest import edgeclf_cli  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
SECTIONS = ("training", "per-class", "data", "mistakes", "exports", "disagreements", "bench")
CHROMIUM_OWN_HOSTS = ("google.com", "googleapis.com", "gvt1.com", "gstatic.com")  # its own services, not the page's


def _render(page: Path, out: Path) -> tuple[str, set[str], Path]:
    """Chromium's DOM of ``page`` after loading, the http(s) URLs it requested, and a screenshot."""
    browser = chromium()
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--disable-background-networking", f"--user-data-dir={out / 'profile'}"]
    net = out / "net.json"
    dom = subprocess.run([*common, f"--log-net-log={net}", "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = out / "page.png"
    proc = subprocess.run([*common, "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    urls = set(re.findall(r'"url":"(https?://[^"]+)"', net.read_text(errors="replace")))
    mine = {u for u in urls if not re.match(r"https?://([^/]*\.)?(%s)(/|:|$)" % "|".join(
        re.escape(h) for h in CHROMIUM_OWN_HOSTS), u)}
    return dom.stdout, mine, shot


class _Dom(HTMLParser):
    """Element ids, figures with their data-* attributes, resource attributes and table rows."""

    def __init__(self):
        super().__init__()
        self.ids, self.figures, self.resources, self.tables = set(), [], [], []
        self._section = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "section":
            self._section = a.get("id")
        if tag == "figure":
            self.figures.append({"class": a.get("class"), "section": self._section,
                                 **{k[5:]: v for k, v in a.items() if k.startswith("data-")}})
        for key in ("src", "href", "srcset", "poster", "data", "action"):
            if key in a:
                self.resources.append((tag, key, a[key] or ""))
        if tag == "table":
            self.tables.append({"class": a.get("class"), "section": self._section, "rows": 0})
        if tag == "tr" and self.tables:
            self.tables[-1]["rows"] += 1


@pytest.fixture(scope="module")
def page(small_run, small_export, hymenoptera, tmp_path_factory):
    """A copy of the session's run, its export and a fresh bench noted for it, the page rebuilt by
    `edgeclf report`, rendered by Chromium."""
    base = tmp_path_factory.mktemp("page")
    run = base / "run"
    shutil.copytree(small_run, run, ignore=shutil.ignore_patterns("report.html", "report_sources.json"))
    bench = base / "bench"
    edgeclf_cli("bench", str(small_export), "--data", str(hymenoptera), "--out", str(bench), "--runs", "3",
                "--warmup", "1", "--backends", "litert", "--log", "")
    (run / "report_sources.json").write_text(json.dumps({"exports": [str(small_export)], "benches": [str(bench)]}))
    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"report: {run / 'report.html'}"
    dom, requests, shot = _render(run / "report.html", base)
    parsed = _Dom()
    parsed.feed(dom)
    return {"run": run, "bench": bench, "dom": parsed, "requests": requests, "shot": shot,
            "html": (run / "report.html").read_text()}


def test_every_section_is_there_and_nothing_leaves_the_page(page):
    dom = page["dom"]
    assert set(SECTIONS) <= dom.ids
    # every resource the page names is embedded (data:) or an anchor on the page itself
    bad = [r for r in dom.resources if not (r[2].startswith("data:") or r[2].startswith("#"))]
    assert not bad, bad[:5]
    assert "url(" not in page["html"] and "@import" not in page["html"] and "<script" not in page["html"]
    assert not page["requests"], page["requests"]  # what Chromium actually fetched for the page
    # the screenshot is a rendered page, not a blank one
    import cv2

    img = cv2.imread(str(page["shot"]))
    assert img is not None and img.shape[:2] == (2400, 1280) and float(img.std()) > 20
    # a light page: thumbnails are small JPEGs (the test run's page is well under 2 MB)
    assert len(page["html"]) < 2_000_000


def test_the_request_check_sees_a_page_that_fetches(tmp_path):
    """The control: a page that names an external image and stylesheet is caught by the same check."""
    probe = tmp_path / "probe.html"
    probe.write_text('<html><body><img src="http://edgeclf-probe.invalid/x.png">'
                     '<link rel="stylesheet" href="https://cdn.edgeclf-probe.invalid/a.css"></body></html>')
    _, requests, _ = _render(probe, tmp_path)
    assert {"http://edgeclf-probe.invalid/x.png", "https://cdn.edgeclf-probe.invalid/a.css"} <= requests


def test_mistakes_gallery_is_exactly_the_wrong_images(page):
    from edgeclf.page.sections import MAX_THUMBS

    rep = json.loads((page["run"] / "report.json").read_text())
    classes = list(rep["per_class"])
    cm = np.array(rep["confusion_matrix"])
    wrong = int(cm.sum() - np.trace(cm))
    assert rep["wrong"] == wrong > 0
    shown = [f for f in page["dom"].figures if f["class"] == "mistake"]
    assert all(f["section"] == "mistakes" for f in shown)
    assert len(shown) == min(wrong, MAX_THUMBS) == len({f["file"] for f in shown})
    # each figure's true and predicted class: together they are the confusion matrix's off-diagonal cells
    pairs = Counter((f["true"], f["pred"]) for f in shown)
    assert all(t != p for t, p in pairs)
    assert pairs == {(classes[i], classes[j]): int(cm[i, j]) for i in range(len(classes))
                     for j in range(len(classes)) if i != j and cm[i, j]}
    # each names a real validation image of its true class, and the most confident mistakes come first
    split = json.loads((page["run"] / "split.json").read_text())
    val = {rel: classes[label] for rel, label, s in split["samples"] if s == "val"}
    assert all(val[f["file"]] == f["true"] for f in shown)
    for c in classes:
        scores = [float(f["score"]) for f in shown if f["true"] == c]
        assert scores == sorted(scores, reverse=True)
        assert all(s > 1 / len(classes) - 1e-6 for s in scores)  # the winning class's score


def test_disagreement_gallery_is_where_int8_and_float_answer_differently(page, small_export):
    """Recomputed here: the exported fp32 and int8 TFLite files through the edgeclf runtime on the run's
    validation images."""
    from edgeclf.contract import load_bundle
    from edgeclf.convert.calibration import load_images
    from edgeclf.rundir import load_run
    from edgeclf.runtime import ModelRef, open_backend

    bundle = load_bundle(small_export)
    val = load_run(page["run"]).dataset().val
    images = load_images(val, bundle.input.height, bundle.input.width, bundle.input.resize)
    p32, p8 = (open_backend(ModelRef.from_bundle(bundle, n), threads=2).predict(images)
               for n in ("tflite-fp32", "tflite-int8"))
    differ = {val[i].path for i in np.flatnonzero(p32.argmax(axis=1) != p8.argmax(axis=1))}
    shown = [f for f in page["dom"].figures if f["class"] == "disagreement" and f["model"] == "tflite-int8"]
    assert {f["file"] for f in shown} == differ and len(shown) == len(differ)
    # export recorded the same changed answers, each with how sure the float model was of it
    int8 = next(a for a in bundle.artifacts if a.name == "tflite-int8")
    recorded = int8.extra["val_changed"]
    assert sorted(Path(c["image"]).name for c in recorded) == sorted(Path(p).name for p in differ)
    assert all(0 <= c["margin_rank"] <= 1 and c["float_scores"][0] >= c["float_scores"][1] for c in recorded)
    for f in shown:
        assert f["float"] != f["int8"] and f["section"] == "disagreements"
    # every int8 model of the export has its gallery heading, its count matching what export recorded
    for art in bundle.artifacts:
        if art.precision == "int8":
            lost, gained = art.extra["val_lost"], art.extra["val_gained"]
            assert f"{art.name} against float ({small_export.name}): " in page["html"]
            assert f"({lost} lost, {gained} gained)" in page["html"]


def test_export_and_bench_tables_are_on_the_page(page, small_export):
    from edgeclf.contract import load_bundle

    bundle = load_bundle(small_export)
    tables = page["dom"].tables
    formats = [t for t in tables if t["class"] == "formats"]
    assert len(formats) == 1 and formats[0]["rows"] == 1 + len(bundle.artifacts)
    for art in bundle.artifacts:
        assert f"<td>{art.file}</td>" in page["html"]
        if art.search:
            assert f"search trace: {art.name} ({len(art.search)} candidates)" in page["html"]
    bench_rows = json.loads((page["bench"] / "bench.json").read_text())["rows"]
    bench = [t for t in tables if t["class"] == "bench-table"]
    assert len(bench) == 1 and bench[0]["rows"] == 1 + len(bench_rows) and bench[0]["section"] == "bench"


def test_train_export_and_bench_name_the_page(small_run, small_export, hymenoptera, tmp_path):
    """Each command ends by naming the page it brought up to date; bench adds its folder to the run's page."""
    log = (small_export.parent / f"{small_export.name}.log").read_text()
    assert f"report: {small_run / 'report.html'}" in log
    train_log = (small_run.parent / "train.log").read_text()
    assert f"report: {small_run / 'report.html'}" in train_log
    out = tmp_path / "bench"
    proc = edgeclf_cli("bench", str(small_export), "--data", str(hymenoptera), "--out", str(out), "--runs", "2",
                       "--warmup", "1", "--backends", "litert", "--log", "", "--max-images", "20")
    assert f"report: {small_run / 'report.html'}" in proc.stdout
    sources = json.loads((small_run / "report_sources.json").read_text())
    assert str(out.resolve()) == sources["benches"][-1]
    assert f'data-dir="{out.resolve()}"' in (small_run / "report.html").read_text()


def test_report_of_a_folder_that_is_not_a_run_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "not an edgeclf run folder" in result.output
