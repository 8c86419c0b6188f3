"""What can judge an int8 candidate without images the model never saw? For each run, a spread of int8
candidates (good, worse, broken) is built with export's own quantizers and measured against the float model
on four image sets:

- *val*: the validation split (what export verifies on; the truth this study predicts);
- *holdout*: the images the run held out of training (today's judge);
- *train*: training images, not calibration images (learned by the model: top-1 agreement is ~100 %);
- *views*: the same training images, each cropped, flipped and its light changed at random (``VIEWS`` per
  image): inputs the model never saw exactly.

Per set: top-1 agreement with float, images lost / gained, and two graded measures that need no label:
the mean KL divergence of the candidate's scores from float's, and the mean drop of the float top class's
log-margin. Writes benchmarks/results/judge_study.md (and .json); a hand-written "## Reading" section of
an earlier record is kept.

    flock /tmp/edgeclf-cpu.lock python benchmarks/judge_study.py RUN_DIR [RUN_DIR ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
TRAIN_IMAGES = 300
VIEWS = 2
EPS = 1e-7


def views(images: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Export's own random views (:func:`edgeclf.convert.calibration.random_views`)."""
    from edgeclf.convert.calibration import random_views

    return random_views(images, n, seed)


def graded(p: np.ndarray, q: np.ndarray) -> tuple[float, float]:
    """Mean KL(p || q) in nats, and the mean drop of float's top class's log-margin over the runner-up."""
    from edgeclf.convert.judge import kl_divergence

    kl = kl_divergence(p, q)
    p, q = np.clip(p.astype(np.float64), EPS, 1), np.clip(q.astype(np.float64), EPS, 1)
    top = p.argmax(1)
    rows = np.arange(len(p))

    def margin(x):
        other = x.copy()
        other[rows, top] = 0
        return np.log(x[rows, top]) - np.log(other.max(1))

    return kl, float((margin(p) - margin(q)).mean())


def measure(p: np.ndarray, q: np.ndarray, y: np.ndarray | None) -> dict:
    fp, qp = p.argmax(1), q.argmax(1)
    kl, dm = graded(p, q)
    d = {"n": len(p), "agreement": round(float((fp == qp).mean()), 4), "changed": int((fp != qp).sum()),
         "kl": round(kl, 5), "margin_drop": round(dm, 4), "float_top1": None}
    if y is not None:
        d.update(float_top1=round(float((fp == y).mean()), 4), lost=int(((fp == y) & (qp != y)).sum()),
                 gained=int(((fp != y) & (qp == y)).sum()))
        d["drop_pt"] = round(100 * (d["lost"] - d["gained"]) / len(y), 2)
    return d


def candidates(ctx, fmt: str):
    """(label, build) of the candidates of one format: export's own recipes, plus deliberately broken ones."""
    from edgeclf.contract import Recipe
    from edgeclf.convert import tflite
    from edgeclf.convert.onnx_quant import QUANTIZER as ORT

    if fmt == "tflite":
        q = tflite.TFLiteQuantizer(ctx)
        base = Recipe(tflite.QUANTIZER, calibration_images=len(q.calib))
        yield "minmax bias-corrected", lambda: q.quantize(replace(base, bias_correction=True))
        yield "minmax", lambda: q.quantize(base)
        if q.bigger is not None:
            yield "minmax, 2x calibration", lambda: q.quantize(replace(base, calibration_images=len(q.bigger)))

        def per_tensor():
            import tensorflow as tf
            from tensorflow.lite.python import convert as tfl_convert

            return bytes(tfl_convert.mlir_quantize(q.calibrated(len(q.calib)), disable_per_channel=True,
                                                   fully_quantize=False, input_data_type=tf.uint8,
                                                   output_data_type=tf.uint8))

        yield "per-tensor weights (broken)", per_tensor
        return
    from edgeclf.convert.onnx_export import convert_fp32
    from edgeclf.convert.onnx_quant import Quantizer

    h = ctx.bundle.input.height
    quantizer = Quantizer(convert_fp32(ctx.keras_model(), h, h), ctx.calibration(), ctx.out_dir, ctx.options,
                          {layer.name for layer in ctx.keras_model().layers})
    base = Recipe(ORT, quant_format="QDQ", calibration="minmax", calibration_images=len(ctx.calibration()),
                  weight_bits=8, per_channel=True, activation_type="uint8")
    for label, r in [("QDQ U8S8 minmax bias-corrected", replace(base, bias_correction=True)),
                     ("QDQ U8S8 minmax", base), ("QDQ U8S8 7-bit weights", replace(base, weight_bits=7)),
                     ("QDQ U8S8 percentile", replace(base, calibration="percentile")),
                     ("QDQ U8S8 entropy", replace(base, calibration="entropy")),
                     ("QDQ S8S8 minmax", replace(base, activation_type="int8")),
                     ("QDQ U8S8 per-tensor weights", replace(base, per_channel=False))]:
        yield label, lambda r=r: quantizer.quantize(r)


def run_one(run: Path, work: Path) -> dict:
    from edgeclf.config import ExportOptions
    from edgeclf.contract import Artifact, Bundle, InputSpec
    from edgeclf.convert.calibration import load_images, stratified_sample
    from edgeclf.convert.exporter import ExportContext, load_keras
    from edgeclf.convert.source import resolve_source
    from edgeclf.runtime.backends import open_backend
    from edgeclf.runtime.model import ModelRef

    source = resolve_source(run)
    model = load_keras(source.model_path)
    work.mkdir(parents=True, exist_ok=True)
    opts = ExportOptions(target=run, out=work, int8=True, search="none")  # the training split: calibration only
    bundle = Bundle(list(source.classes), InputSpec(source.imgsz, source.imgsz, source.resize))
    ctx = ExportContext(source, opts, bundle, work, model, print)
    calib_paths = {s.path for s in ctx._training_split()[0]}
    rest = [s for s in source.train if s.path not in calib_paths]
    # a small data set calibrates on its whole training split: then the judge's training images are those
    train = stratified_sample(rest if len(rest) >= 50 else source.train, TRAIN_IMAGES, 7)
    size, resize = source.imgsz, source.resize
    sets = {"val": (load_images(source.val, size, size, resize), np.array([s.label for s in source.val])),
            "holdout": (load_images(source.holdout, size, size, resize), np.array([s.label for s in source.holdout])),
            "train": (load_images(train, size, size, resize), np.array([s.label for s in train]))}
    sets["views"] = (views(sets["train"][0], VIEWS), np.repeat(sets["train"][1], VIEWS))

    def probs_of(data: bytes, fmt: str) -> dict:
        suffix = ".tflite" if fmt == "tflite" else ".onnx"
        with tempfile.NamedTemporaryFile(suffix=suffix, dir=work) as fh:
            fh.write(data)
            fh.flush()
            art = Artifact(file=Path(fh.name).name, format=fmt, precision="int8")
            backend = open_backend(ModelRef(Path(fh.name), bundle, art, "study"))
            try:
                return {k: np.concatenate([backend.predict(x[i:i + 32]) for i in range(0, len(x), 32)])
                        for k, (x, _) in sets.items()}
            finally:
                backend.close()

    from edgeclf.convert import tflite

    reference = probs_of(tflite.convert(model, "fp32"), "tflite")
    rows = []
    for fmt in ("tflite", "onnx"):
        for label, build in candidates(ctx, fmt):
            t = time.perf_counter()
            try:
                q = probs_of(build(), fmt)
            except Exception as exc:  # a broken recipe may not even build: say so
                rows.append({"format": fmt, "candidate": label, "error": str(exc).splitlines()[0][:120]})
                continue
            row = {"format": fmt, "candidate": label, "seconds": round(time.perf_counter() - t, 1)}
            for k, (_, y) in sets.items():
                row[k] = measure(reference[k], q[k], y)
            rows.append(row)
            print(f"{run.name} {fmt} {label}: " + "; ".join(
                f"{k} {row[k]['changed']}/{row[k]['n']} kl {row[k]['kl']:.5f}" for k in sets), flush=True)
    return {"run": os.path.relpath(run, ROOT), "name": run.name, "imgsz": size,
            "float": {k: measure(reference[k], reference[k], y) for k, (_, y) in sets.items()}, "rows": rows}


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(a) > 2 else float("nan")


def markdown(results: list[dict], command: str) -> str:
    lines = ["# Judging int8 candidates without unseen images", "",
             f"Measured by `benchmarks/judge_study.py` on {time.strftime('%Y-%m-%d')} (`{command}`). "
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"Python {platform.python_version()}.", "",
             __doc__.split("\n\n")[1].strip(), "",
             "Columns per set: changed predictions / images (lost, gained where labelled), then KL x 1000 and the "
             "mean log-margin drop. *float top-1* is the float model's own top-1 on that set.", ""]
    for res in results:
        fl = res["float"]
        lines += [f"## {res['name']} ({res['imgsz']} px)", "",
                  "float top-1: " + ", ".join(f"{k} {v['float_top1']:.2%} ({v['n']})" for k, v in fl.items()), "",
                  "| format | candidate | val changed (lost/gained) | val drop | holdout changed | train changed | "
                  "views changed | train KL x1e3 | views KL x1e3 | train margin drop |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        ok = [r for r in res["rows"] if "val" in r]
        for r in res["rows"]:
            if "error" in r:
                lines.append(f"| {r['format']} | {r['candidate']} | build failed: {r['error']} | | | | | | | |")
                continue
            v, h, t, w = r["val"], r["holdout"], r["train"], r["views"]
            lines.append(f"| {r['format']} | {r['candidate']} | {v['changed']} ({v['lost']}/{v['gained']}) | "
                         f"{v['drop_pt']:+.2f} | {h['changed']}/{h['n']} | {t['changed']}/{t['n']} | "
                         f"{w['changed']}/{w['n']} | {1000 * t['kl']:.2f} | {1000 * w['kl']:.2f} | "
                         f"{t['margin_drop']:+.3f} |")
        if len(ok) > 2:
            truth = [r["val"]["changed"] for r in ok]
            corr = {name: spearman([f(r) for r in ok], truth) for name, f in [
                ("holdout changed", lambda r: r["holdout"]["changed"]), ("train changed", lambda r: r["train"]["changed"]),
                ("views changed", lambda r: r["views"]["changed"]), ("train KL", lambda r: r["train"]["kl"]),
                ("views KL", lambda r: r["views"]["kl"]), ("holdout KL", lambda r: r["holdout"]["kl"])]}
            lines += ["", "Rank correlation (Spearman) with the validation answers changed, over these candidates: "
                      + ", ".join(f"{k} {v:+.2f}" for k, v in corr.items()) + "."]
        lines.append("")
    return "\n".join(lines) + "\n"


def keep_reading(text: str, out: Path) -> str:
    """``text`` with the "## Reading" section of the record at ``out`` (hand-written) put after its header."""
    old = out.read_text() if out.is_file() else ""
    if "## Reading" not in old:
        return text
    reading = old[old.index("## Reading"):]
    reading = reading[:reading.index("\n## ", 1) + 1] if "\n## " in reading[1:] else reading
    first = text.index("\n## ")
    return text[:first + 1] + reading.rstrip() + "\n\n" + text[first + 1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgeclf-judge-study")
    ap.add_argument("--out", type=Path, default=OUT / "judge_study.md")
    a = ap.parse_args()
    command = "python benchmarks/judge_study.py " + " ".join(os.path.relpath(r.resolve(), ROOT) for r in a.runs)
    results = []
    for run in a.runs:  # written after each run: a late failure keeps the earlier ones
        results.append(run_one(run.resolve(), a.work / run.name))
        a.out.with_suffix(".json").write_text(json.dumps({"command": command, "results": results}, indent=1))
        a.out.write_text(keep_reading(markdown(results, command), a.out))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
