"""Run folders for the export tests that `edgeclf train` is not needed for.

The main test model comes from the real trainer (tests/test_export.py). This builds the others: a
backbone with random weights (``weights="none"``: InceptionResNetV2, EfficientNetB0 export smoke tests,
no training), or with the head fitted on frozen features (``epochs > 0``), saved as `edgeclf train`
saves a run: args.yaml, split.json, weights/best.keras.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# ../shared beside the checkout, as in conftest.py (EDGECLF_SHARED overrides it)
SHARED = Path(os.environ.get("EDGECLF_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DATA = SHARED / "data" / "hymenoptera_data"
WEIGHTS_DIR = Path(os.environ.get("EDGECLF_WEIGHTS_DIR", SHARED / "weights"))


def build_run(run_dir: Path, model: str = "mobilenet_v2_035", imgsz: int = 96, weights: str | None = None,
              epochs: int = 8) -> Path:
    """A run folder as `edgeclf train` writes it: args.yaml, split.json, weights/best.keras."""
    import keras

    from edgeclf.config import TrainConfig
    from edgeclf.data.dataset import scan
    from edgeclf.imageio import load_resized
    from edgeclf.models.build import build_classifier

    run_dir = Path(run_dir)
    (run_dir / "weights").mkdir(parents=True, exist_ok=True)
    ds = scan(DATA)
    if weights is None and model.startswith("mobilenet_v2_035"):
        weights = str(WEIGHTS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")
    keras.utils.set_random_seed(0)
    net = build_classifier(model, imgsz, len(ds.classes), weights=weights or "none")
    if epochs:
        # Fit only the head, on features computed once (the backbone stays frozen).
        feat_model = keras.Model(net.input, net.get_layer("head_pool").output)
        x = np.stack([load_resized(s.path, imgsz, imgsz) for s in ds.train]).astype("float32")
        y = np.array([s.label for s in ds.train])
        feats = feat_model.predict(x, batch_size=64, verbose=0)
        head = keras.Sequential([keras.Input(feats.shape[1:]), keras.layers.Dense(len(ds.classes), activation="softmax")])
        head.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        head.fit(feats, y, epochs=epochs * 10, batch_size=32, verbose=0)
        net.get_layer("head_logits").set_weights(head.layers[-1].get_weights())
    net.save(run_dir / "weights" / "best.keras")
    TrainConfig(data=str(DATA), model=model, imgsz=imgsz, weights="imagenet" if epochs else "none",
                project=str(run_dir.parent), name=run_dir.name).save(run_dir / "args.yaml")
    ds.save(run_dir / "split.json")
    return run_dir


if __name__ == "__main__":
    import sys

    print(build_run(Path(sys.argv[1])))
