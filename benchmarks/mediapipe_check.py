"""Does MediaPipe Tasks' ImageClassifier (the reference TFLite metadata client) load our .tflite files
and name their classes?

Run in a SEPARATE environment (mediapipe 1.2.2 pulls absl-py 2.x and opencv-contrib-python, which clash
with tfmot's absl-py~=1.2 pin):

    python -m venv /tmp/mpvenv && /tmp/mpvenv/bin/pip install mediapipe==1.2.2
    /tmp/mpvenv/bin/python benchmarks/mediapipe_check.py EXPORT_DIR [EXPORT_DIR ...] --images IMAGE... [--out MD]

For each model_*.tflite of each EXPORT_DIR: load it with nothing but the model file (labels from the
labels.txt packed in it, normalisation from its TFLITE_METADATA), classify the images, and check that the
category names are the export's classes. Exits 1 when a default model (uint8 input) fails to load or names
other classes. With --out, writes the record (Markdown).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path


def check(model: Path, classes: list[str], images: list[str]) -> tuple[bool, str]:
    import mediapipe as mp
    from mediapipe.tasks import python as mp_python
    from mediapipe.tasks.python import vision

    try:
        opts = vision.ImageClassifierOptions(base_options=mp_python.BaseOptions(model_asset_path=str(model)),
                                             max_results=len(classes))
        clf = vision.ImageClassifier.create_from_options(opts)
    except Exception as exc:
        return False, f"refused: {str(exc).splitlines()[0]}"
    results, named = [], True
    for img in images:
        cats = clf.classify(mp.Image.create_from_file(img)).classifications[0].categories
        named &= sorted(c.category_name for c in cats) == sorted(classes)
        top = cats[0]
        results.append(f"{Path(img).parent.name}/{Path(img).name[:12]} -> {top.category_name} {top.score:.2f}")
    return named, ("loaded, classes named" if named else "loaded, classes NOT named") + "; " + "; ".join(results)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("exports", nargs="+", type=Path)
    ap.add_argument("--images", nargs="+", required=True)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    import mediapipe as mp

    lines, failed = [], False
    for export in a.exports:
        bundle = json.loads((export / "edgeclf.json").read_text())
        for art in bundle["artifacts"]:
            if art["format"] != "tflite":
                continue
            ok, text = check(export / art["file"], bundle["classes"], a.images)
            io = art["input"]["dtype"]
            expected = io in ("uint8", "float32")  # MediaPipe takes uint8 or float32 input, not int8
            if expected and not ok:
                failed = True
            recipe = (art.get("recipe") or {})
            label = f", {len(recipe.get('float_layers', []))} layers float" if recipe.get("float_layers") else ""
            lines.append(f"| {export.parent.name}/{export.name}/{art['file']} | {art['precision']}{label} | {io} | {text} |")
    for ln in lines:
        print(ln)
    if a.out:
        header = [
            "# MediaPipe Tasks' ImageClassifier reads edgeclf's TFLite files", "",
            f"mediapipe {mp.__version__} in a separate venv (Python {platform.python_version()}), "
            f"{time.strftime('%Y-%m-%d')}. Command: `{' '.join(['python', 'benchmarks/mediapipe_check.py'] + sys.argv[1:])}`",
            "",
            "Each model is given to `ImageClassifier.create_from_options` alone (no labels file, no options beyond "
            "`max_results`): the labels come from the labels.txt packed in the model (TENSOR_AXIS_LABELS), the "
            "normalisation from its metadata (mean 0, std 1: raw pixels; normalisation is inside the graph). "
            "MediaPipe resizes with its own method, so scores differ slightly from edgeclf's.", "",
            "| model | precision | input | result |", "|---|---|---|---|"]
        a.out.write_text("\n".join(header + lines) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
