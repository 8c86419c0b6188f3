"""The backbone comparison: MobileNetV2, EfficientNetB0, InceptionResNetV2 and the plain CNN baseline,
trained, exported (every format, int8 included) and measured by ONE `edgeclf bench` in one table.

For each backbone, in a process of its own (TensorFlow's memory is returned between models):
  1. `edgeclf.train.trainer.train(TrainConfig(...))` on hymenoptera (the shared photos);
  2. `edgeclf.convert.exporter.export_model(ExportOptions(..., int8=True))`;
then `edgeclf bench EXPORT... --data DATA --out WORK/bench` in a fresh process (no TensorFlow).

The baseline is the plain CNN trained from scratch: transfer learning must beat it. Only MobileNetV2 has
ImageNet weights offline (../shared/weights beside the checkout); EfficientNetB0 and InceptionResNetV2 run with
`--weights none` (random backbone, head trained on its features): their rows measure size, speed and memory
and the exporter's faithfulness, not what those backbones reach with ImageNet weights. Sizes and epochs are
chosen to fit a 2-core CPU and are recorded with the results.

    flock /tmp/edgeclf-cpu.lock python benchmarks/bench_backbones.py [--work /tmp/edgeclf-backbones] [--reuse]

Writes benchmarks/results/backbones.md, backbones.json and backbones.png.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("EDGECLF_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data" / "hymenoptera_data"
EDGECLF = str(Path(sys.executable).parent / "edgeclf")

# name -> training settings (TrainConfig fields). Frozen-backbone training on cached features for the
# ImageNet / random backbones; the plain CNN trains every layer from scratch.
BACKBONES = {
    "mobilenet_v2": {"model": "mobilenet_v2", "imgsz": 224, "weights": "imagenet", "epochs": 10,
                     "fine_tune_epochs": 0},
    "efficientnet_b0": {"model": "efficientnet_b0", "imgsz": 224, "weights": "none", "epochs": 10,
                        "fine_tune_epochs": 0},
    "inception_resnet_v2": {"model": "inception_resnet_v2", "imgsz": 150, "weights": "none", "epochs": 10,
                            "fine_tune_epochs": 0},
    "simple_cnn": {"model": "simple_cnn", "imgsz": 128, "weights": "none", "epochs": 30},
}
CALIB_IMAGES = 100
WEIGHT_NOTES = {
    "mobilenet_v2": "ImageNet weights (shared offline file)",
    "efficientnet_b0": "random weights (--weights none): ImageNet weights not available offline",
    "inception_resnet_v2": "random weights (--weights none): ImageNet weights not available offline",
    "simple_cnn": "trained from scratch (the baseline)",
}


def one(name: str, work: Path) -> None:
    """Train and export one backbone (this process imports TensorFlow)."""
    from rich.console import Console

    from edgeclf.config import TrainConfig
    from edgeclf.convert.exporter import ExportOptions, export_model
    from edgeclf.train.trainer import train

    console = Console(file=sys.stderr, width=120)
    settings = BACKBONES[name]
    project = work / "runs"
    shutil.rmtree(project / name, ignore_errors=True)
    t = time.perf_counter()
    info = train(TrainConfig(data=str(DATA), project=str(project), name=name, **settings))
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    result = export_model(ExportOptions(target=info.dir, int8=True, calib_images=CALIB_IMAGES, max_drop=100.0),
                          console=console)
    export_s = time.perf_counter() - t
    report = json.loads((info.dir / "report.json").read_text())
    record = {"name": name, "settings": settings, "run": str(info.dir), "export": str(result.out_dir),
              "train_seconds": round(train_s, 1), "export_seconds": round(export_s, 1),
              "keras_val_top1": report.get("top1"), "export_exit_code": result.exit_code,
              "export_failures": result.failures, "calib_images": CALIB_IMAGES}
    (work / f"{name}.json").write_text(json.dumps(record, indent=2))


def machine() -> dict:
    from edgeclf.bench.core import machine_info

    return machine_info([])


def markdown(records: list[dict], bench: dict, bench_cmd: str, total_s: float) -> str:
    m = bench["machine"]
    rows = bench["rows"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    lines = [
        "# Backbone comparison", "",
        f"Measured by `benchmarks/bench_backbones.py` on {bench['settings']['created']} "
        f"({total_s / 60:.1f} min in all).", "",
        f"Machine: {m['cpu']}, {m['cores']} cores; {m['os']}; Python {m['python']}; {versions}.", "",
        f"Data: hymenoptera (ants/bees), {bench['exports'][0]['val_images']} validation images. Each backbone "
        f"trained with `edgeclf.train.trainer.train`, exported with `export_model(..., int8=True, "
        f"calib_images={CALIB_IMAGES})`, then one `{bench_cmd}`: {len(rows)} rows (artifact x backend) "
        f"measured in {bench['settings']['seconds']:.0f} s.", "",
        "| backbone | weights | input | training | train s | export s | Keras val top-1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        s = r["settings"]
        how = f"{s['epochs']} epochs scratch" if s["model"] == "simple_cnn" else \
            f"{s['epochs']} epochs head on frozen backbone, {s.get('fine_tune_epochs', 0)} fine-tune"
        lines.append(f"| {r['name']} | {WEIGHT_NOTES[r['name']]} | {s['imgsz']} | {how} | {r['train_seconds']:.0f} | "
                     f"{r['export_seconds']:.0f} | {r['keras_val_top1']:.2%} |")
    lines += ["", f"Batch 1, {bench['settings']['runs']} runs after {bench['settings']['warmup']} warm-up, "
              f"{bench['settings']['threads'][0]} threads; p50/p90/p99 in ms; RAM = peak RSS of a process that "
              "loads and runs only that model; Δ = top-1 minus the same export's fp32 model, in points.", "",
              "| backbone | format | backend | status | size MB | top-1 | Δ pt | agree | p50 | p90 | p99 | FPS | RAM MiB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda k, fmt: format(r[k], fmt) if r.get(k) is not None else "-"
        status = r["status"] if r["status"] != "fail" else f"fail ({r['note'][:60]})"
        delta = f"{0.0 - r['drop_pt']:+.2f}" if r.get("drop_pt") is not None else "-"
        lines.append(f"| {r['model']} | {r['format']} | {r['backend']} | {status} | {r['size_mb']:.2f} | "
                     f"{f('top1', '.2%')} | {delta} | {f('agreement', '.2%')} | {f('p50_ms', '.2f')} | "
                     f"{f('p90_ms', '.2f')} | {f('p99_ms', '.2f')} | {f('fps', '.1f')} | {f('rss_peak_mib', '.0f')} |")
    by = {(r["backbone"], r["format"], r["backend"]): r for r in rows}
    mnv2, cnn = by.get(("mobilenet_v2", "tflite-int8", "litert")), by.get(("simple_cnn", "tflite-int8", "litert"))
    lines += ["", "## Reading it", ""]
    if mnv2 and cnn and mnv2.get("top1") is not None and cnn.get("top1") is not None:
        lines.append(f"- Transfer learning against the baseline (int8 TFLite): MobileNetV2 with ImageNet weights "
                     f"{mnv2['top1']:.2%} vs the plain CNN from scratch {cnn['top1']:.2%} "
                     f"({(mnv2['top1'] - cnn['top1']) * 100:+.1f} pt).")
    lines += ["- EfficientNetB0 and InceptionResNetV2 ran with random weights (their ImageNet files are not "
              "available offline): their accuracy says nothing about those backbones; their size, latency and "
              "memory do, and their Δ/agreement check that export is faithful. On a machine with internet, "
              "`--weights imagenet` downloads the real weights.",
              "- InceptionResNetV2 was trained and measured at 150 px (its default is 299) to fit a 2-core CPU; "
              "latency grows roughly with the pixel count.",
              "- This machine is noisy (±30 % latency run to run): compare rows of one run, not across runs.",
              "", "![accuracy against latency, and size](backbones.png)", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeclf-backbones"))
    ap.add_argument("--reuse", action="store_true", help="keep backbones already trained and exported in --work")
    ap.add_argument("--only", default=None, help="comma list of backbones (default: all four)")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: train + export one backbone
    ap.add_argument("--render", action="store_true",
                    help="only rewrite backbones.md from the recorded backbones.json (no measuring)")
    a = ap.parse_args()
    if a.render:
        d = json.loads((RESULTS / "backbones.json").read_text())
        (RESULTS / "backbones.md").write_text(markdown(d["backbones"], d["bench"], d["bench_command"],
                                                       d["total_seconds"]))
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if (SHARED / "weights").is_dir():
        os.environ.setdefault("EDGECLF_WEIGHTS_DIR", str(SHARED / "weights"))
    a.work.mkdir(parents=True, exist_ok=True)
    if a.one:
        one(a.one, a.work)
        return

    t0 = time.perf_counter()
    names = a.only.split(",") if a.only else list(BACKBONES)
    records = []
    for name in names:
        done = a.work / f"{name}.json"
        if not (a.reuse and done.is_file()):
            print(f"== train + export {name}", file=sys.stderr, flush=True)
            subprocess.run([sys.executable, __file__, "--work", str(a.work), "--one", name], check=True)
        records.append(json.loads(done.read_text()))
    out = a.work / "bench"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [EDGECLF, "bench", *[r["export"] for r in records], "--data", str(DATA), "--out", str(out),
           "--runs", str(a.runs), "--log", str(a.work / "bench_log.jsonl")]
    print("== " + " ".join(cmd), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise SystemExit(f"edgeclf bench exited {proc.returncode}")
    bench = json.loads((out / "bench.json").read_text())
    bench_cmd = "edgeclf bench " + " ".join(Path(r["export"]).parent.name + "/export" for r in records) + \
        f" --data hymenoptera_data --runs {a.runs}"
    total = time.perf_counter() - t0
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "backbones.md").write_text(markdown(records, bench, bench_cmd, total))
    (RESULTS / "backbones.json").write_text(json.dumps({"backbones": records, "bench": bench, "bench_command": bench_cmd,
                                                        "total_seconds": round(total, 1)}, indent=2) + "\n")
    if (out / "bench.png").is_file():
        shutil.copy(out / "bench.png", RESULTS / "backbones.png")
    print(f"wrote {RESULTS / 'backbones.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
