"""Training: edgeclf's recipe against the plain Keras fit recipe and the from-scratch baseline, one run.

For each data set, in one process and one after another on the same machine:

* ``edgeclf``      MobileNetV2 (ImageNet), two stages, frozen layers run once by LiteRT (the default);
* ``plain keras``  the same model, settings and stages, every image through the whole network every
                   epoch (``--no-cache``: what a Keras transfer-learning tutorial does);
* ``simple_cnn``   the small CNN trained from scratch: the baseline transfer learning must beat.

Recorded: best val top-1, wall time, and time to reach the target accuracy (from results.csv's
``elapsed``), in benchmarks/results/train.md and .json with the machine.

    python benchmarks/bench_train.py                       # hymenoptera, all three
    python benchmarks/bench_train.py --data flowers --skip-plain
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
DATASETS = {"hymenoptera": SHARED / "data" / "hymenoptera_data", "flowers": SHARED / "data" / "flower_photos"}


def machine() -> dict:
    import tensorflow as tf

    from edgeclf.bench.core import machine_info

    return {**machine_info([]), "tensorflow": tf.__version__}


def time_to(results_csv: Path, target: float) -> float | None:
    with open(results_csv) as fh:
        for row in csv.DictReader(fh):
            if float(row["val_acc"]) >= target:
                return float(row["elapsed"])
    return None


def one(data: Path, project: Path, name: str, target: float, **overrides) -> dict:
    from edgeclf.config import TrainConfig
    from edgeclf.train.trainer import train

    cfg = TrainConfig(data=str(data), project=str(project), name=name, **overrides)
    t0 = time.time()
    info = train(cfg)
    wall = time.time() - t0
    report = json.loads((info.dir / "report.json").read_text())
    return {"recipe": name, "model": cfg.model, "imgsz": info.imgsz, "val_top1": report["top1"],
            "macro_f1": report["macro_f1"], "epochs": report["epochs_run"], "wall_s": round(wall, 1),
            "train_s": report["train_seconds"], "time_to_target_s": time_to(info.dir / "results.csv", target),
            "settings": {k: v for k, v in overrides.items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=list(DATASETS), default="hymenoptera")
    ap.add_argument("--target", type=float, default=0.92, help="accuracy for time-to-accuracy")
    ap.add_argument("--skip-plain", action="store_true", help="skip the plain Keras recipe (slow on big data)")
    args = ap.parse_args()
    os.environ.setdefault("EDGECLF_WEIGHTS_DIR", str(SHARED / "weights"))
    data = DATASETS[args.data]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(one(data, Path(tmp), "edgeclf", args.target, model="mobilenet_v2"))
        if not args.skip_plain:
            rows.append(one(data, Path(tmp), "plain_keras", args.target, model="mobilenet_v2", cache=False))
        rows.append(one(data, Path(tmp), "simple_cnn", args.target, model="simple_cnn"))
    result = {"data": args.data, "target": args.target, "machine": machine(), "date": time.strftime("%Y-%m-%d"),
              "runs": rows}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    stem = f"train_{args.data}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Training on {args.data} ({result['date']})", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
             f"{result['machine']['os']}, TensorFlow {result['machine']['tensorflow']}. Settings: the defaults of "
             f"`edgeclf train` unless listed in {stem}.json.", "",
             f"| recipe | model | px | val top-1 | macro-F1 | epochs | training s | to {args.target:.0%} s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ttt = f"{r['time_to_target_s']:.0f}" if r["time_to_target_s"] is not None else "never"
        lines.append(f"| {r['recipe']} | {r['model']} | {r['imgsz']} | {r['val_top1']:.2%} | {r['macro_f1']:.3f} | "
                     f"{r['epochs']} | {r['train_s']:.0f} | {ttt} |")
    base = {r["recipe"]: r for r in rows}
    if "plain_keras" in base and base["edgeclf"]["time_to_target_s"] and base["plain_keras"]["time_to_target_s"]:
        ratio = base["plain_keras"]["time_to_target_s"] / base["edgeclf"]["time_to_target_s"]
        lines += ["", f"Time to {args.target:.0%}: plain Keras / edgeclf = **{ratio:.1f}×** (same run, same machine)."]
    if "plain_keras" in base:
        total = base["plain_keras"]["train_s"] / base["edgeclf"]["train_s"]
        lines += [f"Whole training (both stages, same epochs budget): plain Keras / edgeclf = **{total:.1f}×**."]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
