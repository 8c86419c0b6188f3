"""The field loop's training side, end to end: ``edgeclf train DATA --add DIR --compare RUN`` on hymenoptera with
camera frames of its training photos (tests/test_unit_field.py's camera transform), the session's run as the
deployed model. Every figure report.json gives is recomputed here from the saved models; the page is rendered by
headless Chromium; ``--resume`` of a field run reports the same."""
from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import SMALL_RUN_ARGS, edgeclf_cli
from test_unit_field import _photos, make_field

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def field_run(small_run, hymenoptera, tmp_path_factory) -> dict:
    """60 labelled camera frames (30 per class; a row naming one again, a row naming a missing file), trained on with --add, compared with small_run."""
    base = tmp_path_factory.mktemp("field-loop")
    field = make_field(base / "field", _photos(hymenoptera, 30, offset=40), seed=7)
    with open(field / "labels.csv", "a", newline="") as fh:
        csv.writer(fh).writerows([["frames/0001.jpg", "ants"], ["frames/gone.jpg", "bees"]])  # reported, skipped
    proc = edgeclf_cli("train", str(hymenoptera), *SMALL_RUN_ARGS, "--add", str(field), "--field-val", "0.3",
                       "--compare", str(small_run), "--project", str(base / "runs"), "--name", "field")
    return {"run": base / "runs" / "field", "field": field, "base": base, "out": proc.stdout + proc.stderr}


def _predict(run: Path, samples) -> np.ndarray:
    import keras

    from edgeclf.convert.calibration import load_images

    model = keras.models.load_model(run / "weights" / "best.keras", compile=False)
    return model.predict(load_images(samples, 96, 96, "bilinear").astype(np.float32), verbose=0)


def test_field_images_train_and_report_both_figures(field_run, small_run):
    from edgeclf.data.dataset import Dataset

    run, field = field_run["run"], field_run["field"]
    ds, base = Dataset.load(run / "split.json"), Dataset.load(small_run / "split.json")
    from_field = [s for s in ds.samples if Path(s.path).is_relative_to(field)]
    assert all(s.origin == 1 for s in from_field) and len(from_field) == 60
    assert {s.split for s in from_field} == {"train", "field_val"}  # never val, never holdout
    assert [s.path for s in ds.val] == [s.path for s in base.val]  # the original validation split, as it was
    assert len(ds.field_val) == 18 and len(ds.train) == len(base.train) + 42
    rep = json.loads((run / "report.json").read_text())
    assert rep["images"] == 153 and rep["train_images"] == len(ds.train)
    assert rep["field"]["train_images"] == 42 and rep["field"]["field_val_images"] == 18
    assert rep["field"]["dirs"] == [str(field)]
    fv = rep["field_val"]
    labels = np.array([s.label for s in ds.field_val])
    # the figure is the best model's, on exactly the field validation images
    mine = _predict(run, ds.field_val).argmax(axis=1)
    assert fv["images"] == 18 and fv["correct"] == int((mine == labels).sum())
    assert fv["top1"] == pytest.approx(fv["correct"] / 18)
    # --compare: the previous model on the same images, its own validation top-1, and the deltas
    cmp_ = rep["compare"]
    prev = _predict(small_run, ds.field_val).argmax(axis=1)
    assert cmp_["run"] == str(small_run.resolve()) and cmp_["same_val_images"] is True
    assert cmp_["field_val_correct"] == int((prev == labels).sum())
    assert cmp_["val_top1"] == json.loads((small_run / "report.json").read_text())["top1"]
    assert cmp_["val_top1_delta"] == pytest.approx(rep["top1"] - cmp_["val_top1"])
    assert cmp_["field_val_top1_delta"] == pytest.approx(fv["top1"] - cmp_["field_val_top1"])
    assert cmp_["field_val_trained_on"] == 0
    # every field validation image's answers, this model's and the previous one's
    with open(run / "field_val_predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["file"] for r in rows] == [s.path for s in ds.field_val]
    assert [r["predicted"] for r in rows] == [ds.classes[i] for i in mine]
    assert [r["previous"] for r in rows] == [ds.classes[i] for i in prev]
    # the data report covers the field folder, and the summary says it all
    data = json.loads((run / "data_report.json").read_text())
    assert data["field"][0]["dir"] == str(field) and data["counts"]["field_val"] == {"ants": 9, "bees": 9}
    reasons = [s["reason"] for s in data["field"][0]["skipped"]]
    assert len(reasons) == 2 and "named again" in reasons[0] and "missing" in reasons[1]
    assert all(s in data["skipped"] for s in data["field"][0]["skipped"])
    out = field_run["out"]
    assert "field validation top-1" in out and "the previous model (small)" in out and "Traceback" not in out


def test_the_page_shows_the_field_section(field_run):
    from test_report_page import _Dom, _render

    run = field_run["run"]
    rep = json.loads((run / "report.json").read_text())
    dom, requests, _ = _render(run / "report.html", field_run["base"])
    parsed = _Dom()
    parsed.feed(dom)
    assert "field" in parsed.ids and not requests
    figures = [t for t in parsed.tables if t["class"] == "field-figures"]
    assert len(figures) == 1 and figures[0]["section"] == "field" and figures[0]["rows"] == 3
    html = (run / "report.html").read_text()
    assert f"{rep['field_val']['top1']:.2%}" in html and f"{rep['compare']['field_val_top1']:.2%}" in html
    assert f"{100 * rep['compare']['val_top1_delta']:+.1f} pt" in html
    with open(run / "field_val_predictions.csv") as fh:
        wrong = [r for r in csv.DictReader(fh) if r["true"] != r["predicted"]]
    shown = [f for f in parsed.figures if f["class"] == "field-mistake"]
    assert sorted(f["file"] for f in shown) == sorted(r["file"] for r in wrong)
    assert all(f["section"] == "field" and f["true"] != f["pred"] and f["previous"] for f in shown)
    # every thumbnail is a picture embedded in the page
    assert sum(1 for tag, key, v in parsed.resources if tag == "img" and v.startswith("data:image/jpeg")) >= len(shown)


def test_resume_of_a_field_run_reports_the_same(field_run, tmp_path):
    run = tmp_path / "field"
    shutil.copytree(field_run["run"], run)
    state = json.loads((run / "state.json").read_text())
    state["done"] = False
    (run / "state.json").write_text(json.dumps(state))
    (run / "report.json").unlink()
    other = edgeclf_cli("train", "--resume", str(run), "--add", str(tmp_path), check=False)
    assert other.returncode != 0 and "resumes with its own field folders" in other.stderr
    assert "Traceback" not in other.stderr
    edgeclf_cli("train", "--resume", str(run), "--add", str(field_run["field"]))  # the same folder: fine
    before, after = (json.loads((r / "report.json").read_text()) for r in (field_run["run"], run))
    assert after["field_val"] == before["field_val"]
    assert {k: v for k, v in after["compare"].items() if k != "run"} == \
        {k: v for k, v in before["compare"].items() if k != "run"}
