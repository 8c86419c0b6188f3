"""Does MediaPipe Tasks' ImageClassifier (the reference TFLite metadata client) load our .tflite files?

Run in a SEPARATE environment (mediapipe 1.2.2 pulls absl-py 2.x and opencv-contrib-python, which clash with tfmot's absl-py~=1.2 pin):

    python -m venv /tmp/mpvenv && /tmp/mpvenv/bin/pip install mediapipe==1.2.2
    /tmp/mpvenv/bin/python benchmarks/mediapipe_check.py EXPORT_DIR IMAGE...

For each model_*.tflite in EXPORT_DIR: load with metadata (labels from the embedded labels.txt,
normalisation from TFLITE_METADATA), classify the images, print top category names and scores.
"""
from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    import mediapipe as mp
    from mediapipe.tasks import python as mp_python
    from mediapipe.tasks.python import vision

    export, images = Path(sys.argv[1]), sys.argv[2:]
    for model in sorted(export.glob("model_*.tflite")):
        try:
            opts = vision.ImageClassifierOptions(base_options=mp_python.BaseOptions(model_asset_path=str(model)),
                                                 max_results=2)
            clf = vision.ImageClassifier.create_from_options(opts)
        except Exception as exc:
            print(f"{model.name}: LOAD FAILED: {str(exc).splitlines()[0][:200]}")
            continue
        results = []
        for img in images:
            res = clf.classify(mp.Image.create_from_file(img))
            cats = res.classifications[0].categories
            results.append(f"{Path(img).parent.name}/{Path(img).name[:12]} -> "
                           + ", ".join(f"{c.category_name}:{c.score:.2f}" for c in cats))
        print(f"{model.name}: loaded; " + " | ".join(results))


if __name__ == "__main__":
    main()
