"""The field loop's data side, without TensorFlow: ``--add DIR`` folders (frames + labels.csv) read, checked,
split into training and the field validation set, recorded in split.json, covered by the duplicate report; the
labels file's mistakes reported and skipped, an unknown class an error."""
from __future__ import annotations

import csv
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from field_helpers import camera_view  # the field's camera, shared with the collect side


def make_field(folder: Path, photos: list[tuple[Path, str]], seed: int = 0) -> Path:
    """``folder/frames/NNNN.jpg`` (each photo through the camera transform) and ``folder/labels.csv``, as the
    label page writes them: ``file,label``, ``file`` relative to the folder."""
    import cv2

    (folder / "frames").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (photo, label) in enumerate(photos):
        name = f"frames/{i:04d}.jpg"
        frame = camera_view(cv2.imread(str(photo)), seed + i)
        assert cv2.imwrite(str(folder / name), frame)
        rows.append((name, label))
    write_labels(folder, rows)
    return folder


def write_labels(folder: Path, rows: list[tuple[str, str]]) -> None:
    with open(folder / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label"])
        w.writerows(rows)


def _photos(hymenoptera: Path, per_class: int, offset: int = 0) -> list[tuple[Path, str]]:
    return [(p, c) for c in ("ants", "bees")
            for p in sorted((hymenoptera / "train" / c).glob("*.jpg"))[offset:offset + per_class]]


@pytest.fixture(scope="module")
def field_dir(hymenoptera, tmp_path_factory) -> Path:
    """20 camera frames (10 per class), a discarded frame, a missing file, an exact copy of a training photo."""
    folder = make_field(tmp_path_factory.mktemp("field") / "field", _photos(hymenoptera, 10))
    with open(folder / "labels.csv") as fh:
        rows = list(csv.reader(fh))[1:]
    copy = sorted((hymenoptera / "train" / "bees").glob("*.jpg"))[-1]
    shutil.copy(copy, folder / "frames" / "copy.jpg")  # byte-identical to a training photo of DATA
    shutil.copy(folder / "frames" / "0000.jpg", folder / "frames" / "discarded.jpg")
    rows += [("frames/discarded.jpg", ""), ("frames/gone.jpg", "ants"), ("frames/copy.jpg", "bees")]
    write_labels(folder, rows)
    return folder


def test_field_images_train_and_field_val_never_val(hymenoptera, field_dir, tmp_path):
    from edgeclf.data.dataset import Dataset, scan

    plain = scan(hymenoptera)
    ds = scan(hymenoptera, add=[str(field_dir)], field_val=0.3)
    field = [s for s in ds.samples if s.origin]
    assert len(field) == 21  # 20 frames and the copy; the discarded frame and the missing file skipped
    assert {s.split for s in field} == {"train", "field_val"}
    assert not [s for s in ds.val if s.origin] and ds.val == plain.val  # the validation split untouched
    assert [s for s in ds.train if not s.origin] == plain.train
    # stratified: 3 of each class's 10 frames (the bees' copy counts among 11: round(3.3) = 3)
    assert Counter(ds.classes[s.label] for s in ds.field_val) == {"ants": 3, "bees": 3}
    assert all(s.origin == 1 and Path(s.path).is_relative_to(field_dir) for s in field)
    rep = ds.report
    assert rep.counts["field_val"] == {"ants": 3, "bees": 3}
    assert rep.field[0]["dir"] == str(field_dir) and rep.field[0]["discarded"] == 1
    assert (rep.field[0]["used"], rep.field[0]["train"], rep.field[0]["field_val"]) == (21, 15, 6)
    reasons = {Path(s["file"]).name: s["reason"] for s in rep.skipped}
    assert reasons["gone.jpg"].startswith("missing (line")
    # the copy of a training photo is in the duplicate report, beside the photo it copies
    copy = str(field_dir / "frames" / "copy.jpg")
    groups = rep.duplicates + rep.split_leaks + rep.label_conflicts
    assert any(copy in g and any(n.startswith("train/bees/") for n in g) for g in groups), groups
    # seeded: the same folder splits the same way
    again = scan(hymenoptera, add=[str(field_dir)], field_val=0.3)
    assert [(s.path, s.split) for s in again.samples] == [(s.path, s.split) for s in ds.samples]
    # split.json records every image's origin, and reads back exactly
    ds.save(tmp_path / "split.json")
    d = json.loads((tmp_path / "split.json").read_text())
    assert d["origins"] == [str(hymenoptera.resolve()), str(field_dir)]
    assert len(d["origin"]) == len(d["samples"]) and Counter(d["origin"])[1] == 21
    assert all(len(s) == 3 for s in d["samples"])  # the existing fields, unchanged in shape
    back = Dataset.load(tmp_path / "split.json")
    assert [(s.path, s.label, s.split, s.origin) for s in back.samples] == \
        [(s.path, s.label, s.split, s.origin) for s in ds.samples]
    assert back.origins == d["origins"]
    # --field-val 0: every field image trains
    none = scan(hymenoptera, add=[str(field_dir)], field_val=0.0)
    assert not none.field_val and sum(1 for s in none.train if s.origin) == 21


def test_two_add_folders_and_plain_runs_unchanged(hymenoptera, field_dir, tmp_path):
    from edgeclf.data.dataset import scan

    second = make_field(tmp_path / "second", _photos(hymenoptera, 4, offset=20), seed=100)
    ds = scan(hymenoptera, add=[str(field_dir), str(second)])
    assert Counter(s.origin for s in ds.samples if s.origin) == {1: 21, 2: 8}
    assert ds.origins[1:] == [str(field_dir), str(second)]
    plain = scan(hymenoptera)
    plain.save(tmp_path / "plain.json")
    assert set(json.loads((tmp_path / "plain.json").read_text())) == {"root", "classes", "samples"}


def test_labels_file_mistakes(hymenoptera, tmp_path):
    from edgeclf.data.dataset import scan
    from edgeclf.errors import EdgeclfError

    folder = make_field(tmp_path / "f", _photos(hymenoptera, 2))
    write_labels(folder, [("frames/0000.jpg", "ants"), ("frames/0001.jpg", "wasps"), ("frames/0002.jpg", "bees")])
    with pytest.raises(EdgeclfError) as exc:
        scan(hymenoptera, add=[str(folder)])
    msg = str(exc.value)
    assert "'wasps'" in msg and "frames/0001.jpg" in msg and "cannot add classes" in msg and "\n" not in msg
    # hand-written: a BOM, spaces, blank lines, a row naming nothing, a file named twice, a file that is no image
    (folder / "frames" / "notes.txt").write_text("not a frame")
    (folder / "labels.csv").write_text("\ufefffile , label\n frames/0000.jpg , ants\n\n,bees\nframes/0000.jpg,ants\n"
                                       "frames/notes.txt,bees\nframes/0003.jpg,bees\n", encoding="utf-8")
    ds = scan(hymenoptera, add=[str(folder)], field_val=0)
    assert sorted(Path(s.path).name for s in ds.samples if s.origin) == ["0000.jpg", "0003.jpg"]
    reasons = " | ".join(s["reason"] for s in ds.report.skipped)
    assert "names no file" in reasons and "named again" in reasons and "not an image file" in reasons
    for bad, words in (("name,class\na,b\n", "file,label"), ("", "file,label")):
        (folder / "labels.csv").write_text(bad)
        with pytest.raises(EdgeclfError, match=words):
            scan(hymenoptera, add=[str(folder)])
    (folder / "labels.csv").unlink()
    with pytest.raises(EdgeclfError, match="no labels.csv"):
        scan(hymenoptera, add=[str(folder)])


def test_cli_rejects_bad_field_options_in_one_line(hymenoptera, tmp_path):
    from click.testing import CliRunner

    from edgeclf.cli import main

    folder = make_field(tmp_path / "f", _photos(hymenoptera, 1))
    for args, words in ((["--add", str(tmp_path / "nope")], "no such folder"),
                        (["--add", str(folder), "--field-val", "1"], "--field-val"),
                        (["--add", str(folder), "--split-from", str(tmp_path)], "--split-from"),
                        (["--compare", str(tmp_path / "nope")], "no such run folder")):
        result = CliRunner().invoke(main, ["train", str(hymenoptera), *args, "--project", str(tmp_path / "r")])
        assert result.exit_code != 0 and words in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()  # nothing written before the options are right
    # --compare with a run of other classes: refused before any run folder is made
    from edgeclf.config import TrainConfig

    other = tmp_path / "other"
    (other / "weights").mkdir(parents=True)
    TrainConfig(data=str(tmp_path), imgsz=96).save(other / "args.yaml")
    (other / "split.json").write_text(json.dumps({"root": str(tmp_path), "classes": ["cats", "dogs"], "samples": []}))
    (other / "weights" / "best.keras").write_bytes(b"")
    result = CliRunner().invoke(main, ["train", str(hymenoptera), "--add", str(folder), "--compare", str(other),
                                       "--project", str(tmp_path / "r")])
    assert result.exit_code != 0 and "classes (cats, dogs) are not this data's (ants, bees)" in result.output
    assert not (tmp_path / "r").exists()
