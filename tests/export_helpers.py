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


PLANTED_PRODUCER, PLANTED_CONSUMER = "block_16_project", "Conv_1"


def plant_outlier(run_dir: Path, out_dir: Path, factor: float = 500.0, channel: int = 0) -> Path:
    """A copy of a MobileNetV2 run whose float model is unchanged but whose int8 model is ruined.

    One channel of ``block_16_project_BN`` (the last linear bottleneck, consumed by ``Conv_1`` alone) is
    multiplied by ``factor`` and ``Conv_1``'s weights for that input channel divided by it: the same
    function in float, but an activation range ``factor`` times wider, so per-tensor int8 keeps almost
    nothing of the other channels. Keeping that tensor in float (its producer ``block_16_project`` and
    its consumer ``Conv_1``) is the fix the search must find.
    """
    import shutil

    import keras

    out_dir = Path(out_dir)
    shutil.copytree(run_dir, out_dir, ignore=shutil.ignore_patterns("export*"))
    model = keras.saving.load_model(out_dir / "weights" / "best.keras", compile=False)
    bn = model.get_layer(f"{PLANTED_PRODUCER}_BN")
    gamma, beta, mean, var = [w.copy() for w in bn.get_weights()]
    gamma[channel] *= factor
    beta[channel] *= factor
    bn.set_weights([gamma, beta, mean, var])
    conv = model.get_layer(PLANTED_CONSUMER)
    weights = [w.copy() for w in conv.get_weights()]
    weights[0][:, :, channel, :] /= factor
    conv.set_weights(weights)
    model.save(out_dir / "weights" / "best.keras")
    return out_dir
