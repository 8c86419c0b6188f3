"""How finely can a few hundred labelled images judge an int8 model? For each run's export, every int8 file
against its fp32 twin, on the run's held-out images (what export's search judges on) and on validation (what
export verifies): images lost (float right, int8 wrong), gained (the other way), changed predictions, the net
drop and the exact McNemar p. Writes benchmarks/results/int8_resolution.md.

    flock /tmp/edgeclf-cpu.lock python benchmarks/int8_resolution.py RUN_DIR [RUN_DIR ...]

Each RUN_DIR is an `edgeclf train` run with a holdout, exported with `edgeclf export RUN_DIR --int8`.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PAIRS = (("tflite-int8", "tflite-fp32"), ("onnx-int8", "onnx-fp32"))


def predict(export: Path, artifact: str, images: np.ndarray) -> np.ndarray:
    from edgeclf.runtime.backends import open_backend

    backend = open_backend(export, artifact=artifact)
    try:
        return np.concatenate([backend.predict(images[k:k + 32]) for k in range(0, len(images), 32)]).argmax(1)
    finally:
        backend.close()


def compare(q: np.ndarray, f: np.ndarray, y: np.ndarray) -> dict:
    from edgeclf.stats import mcnemar_exact

    m = mcnemar_exact(q, f, y)
    return {"n": len(y), "lost": m.only_reference_right, "gained": m.only_model_right, "changed": int((q != f).sum()),
            "net_pt": round(100 * (m.only_reference_right - m.only_model_right) / len(y), 2), "p": m.p_value}


def half_width(r: dict) -> float:
    """Half the 95 % interval of a net drop in points: the lost and gained images are the only ones that move it,
    and their count varies like a Poisson count (normal approximation)."""
    return 100 * 1.96 * float(np.sqrt(r["lost"] + r["gained"])) / r["n"]


def main() -> None:
    from edgeclf.bench.fingerprint import fingerprint, summary
    from edgeclf.contract import load_bundle
    from edgeclf.convert.calibration import load_images
    from edgeclf.rundir import load_run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "int8_resolution.md")
    a = ap.parse_args()
    lines = ["# How finely a few hundred images judge an int8 model", "",
             f"Measured by `benchmarks/int8_resolution.py` on {time.strftime('%Y-%m-%d')} (`python "
             f"benchmarks/int8_resolution.py {' '.join(os.path.relpath(r, ROOT) for r in a.runs)}`).",
             f"Machine: {summary(fingerprint())}.", "",
             "Each int8 file of the run's export against its fp32 twin (same runtime). *lost*: images float "
             "classifies right and int8 wrong; *gained*: the other way; *changed*: predictions that differ; net = "
             "(lost - gained) / images; p: exact McNemar test of the difference. *holdout*: the images `edgeclf "
             "train` held out, which export's search judges on; *val*: the validation split export verifies on; "
             "*pooled*: both.", "",
             "| run | artifact | images | holdout lost / gained / changed | net | val lost / gained / changed | net "
             "| ± (95 %) | p | pooled net |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in a.runs:
        ds = load_run(run).dataset()
        export = run / "export"
        inp = load_bundle(export).input
        sets = {}
        for name, samples in (("holdout", ds.holdout), ("val", ds.val)):
            sets[name] = (load_images(samples, inp.height, inp.width, inp.resize), np.array([s.label for s in samples]))
        for q_name, f_name in PAIRS:
            r = {}
            for name, (x, y) in sets.items():
                r[name] = compare(predict(export, q_name, x), predict(export, f_name, x), y)
            h, v = r["holdout"], r["val"]
            pooled = 100 * (h["lost"] + v["lost"] - h["gained"] - v["gained"]) / (h["n"] + v["n"])
            lines.append(f"| {run.name} | {q_name} | {h['n']} + {v['n']} | {h['lost']} / {h['gained']} / {h['changed']} "
                         f"| {h['net_pt']:+.2f} | {v['lost']} / {v['gained']} / {v['changed']} | {v['net_pt']:+.2f} "
                         f"| {half_width(v):.2f} | {v['p']:.2f} | {pooled:+.2f} |")
            print(lines[-1], flush=True)
    lines += ["", "± is half the 95 % interval of the validation net drop (1.96 sqrt(lost + gained) / images): when it is "
              "wider than the budget, the validation figure alone cannot say whether a file is within it; the pooled "
              "column adds the held-out images the search judged on."]
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
