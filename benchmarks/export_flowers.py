"""Export benchmark: MobileNetV2 1.0 at 224 trained on flower_photos -> every format, verified on flowers val.

    python benchmarks/export_flowers.py RUN_DIR [--out DIR] [--calib-images 300]

RUN_DIR is an `edgeclf train` run on ../shared/data/flower_photos (mobilenet_v2, 224). Writes
benchmarks/results/export_flowers.md: machine, per format size / val top-1 / agreement / drop, and the
ONNX int8 recipe comparison (7-bit reduce_range, the default, vs full-range weights).
Run it alone (flock /tmp/edgeclf-cpu.lock): it uses both cores for a few minutes.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
RESULTS = Path(__file__).resolve().parent / "results" / "export_flowers.md"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    from rich.console import Console

    from edgeclf.convert.exporter import ExportOptions, export_model

    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--out", default=None)
    ap.add_argument("--calib-images", type=int, default=300)
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args()
    console = Console(width=110)
    t0 = time.time()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="export_flowers_"))
    res = export_model(ExportOptions(target=args.run_dir, out=out, int8=True, calib_images=args.calib_images),
                       console=console)
    total = time.time() - t0
    # ONNX int8 recipe comparison: 7-bit (reduce_range) vs 8-bit weights, each forced
    t1 = time.time()
    variants = {rr: export_model(ExportOptions(target=args.run_dir, out=out / f"rr_{rr}", int8=True,
                                               formats="onnx-int8", calib_images=args.calib_images,
                                               onnx_reduce_range=rr, max_drop=100), console=console).rows[0]
                for rr in (True, False)}
    full_s = time.time() - t1
    b = res.bundle
    ref = b.source["reference"]
    by = {a.name: a for a in b.artifacts}
    fp32 = {"tflite": by["tflite-fp32"].bytes, "onnx": by["onnx-fp32"].bytes}
    lines = [
        "# Export benchmark: MobileNetV2 1.0 / 224 on flower_photos",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}; " + ", ".join(f"{k} {v}" for k, v in b.source["versions"].items()),
        "",
        f"Run: `{args.run_dir}` (Keras val top-1 from training: {b.source.get('keras_val_top1')}). "
        f"Command: `edgeclf export RUN --int8 --calib-images {args.calib_images}` (all defaults: TFLite int8 IO, "
        f"ONNX QDQ per-channel, 7- or 8-bit weights chosen on the calibration images). Total export + verification: {total:.0f} s.",
        "",
        f"Validation: {ref['val_images']} images through the edgeclf runtime; float reference = fp32 TFLite, "
        f"top-1 {ref['val_top1']:.2%}, max |p - Keras| {ref['keras_max_abs_diff']:.1e} on "
        f"{ref['keras_check_images']} images. Drop = points below the float reference.",
        "",
        "| format | file | size | × smaller than fp32 | val top-1 | agreement | drop (pt) | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res.rows:
        a = by.get(r["name"])
        ratio = f"{fp32[a.format] / a.bytes:.2f}" if a else "-"
        lines.append(f"| {r['name']} | {r['file']} | {r['bytes'] / 1e6:.2f} MB | {ratio} | "
                     f"{r['top1']:.2%} | {r['agreement']:.2%} | {r['drop_pt']:+.2f} | {r['status']} |")
    lines += [
        "",
        "ONNX int8 recipe (same calibration images, QDQ, per-channel, MinMax, after quant_pre_process):",
        "",
        "| weights | val top-1 | agreement | drop (pt) |",
        "|---|---|---|---|",
        f"| default: chose reduce_range={by['onnx-int8'].extra.get('reduce_range')} (agreement with fp32 on the "
        f"calibration images: {by['onnx-int8'].extra.get('reduce_range_agreement_on_calibration')}) | "
        f"{by['onnx-int8'].val_top1:.2%} | {by['onnx-int8'].extra['agreement']:.2%} | "
        f"{by['onnx-int8'].extra['drop_pt']:+.2f} |",
    ] + [f"| forced {'7-bit `--onnx-reduce-range`' if rr else '8-bit `--onnx-full-range`'} | {r['top1']:.2%} | "
         f"{r['agreement']:.2%} | {r['drop_pt']:+.2f} |" for rr, r in variants.items()] + [
        "",
        f"(forced variants: {full_s:.0f} s.) On x86 without VNNI, ONNX Runtime's U8S8 kernels add pairs of "
        "u8×s8 products in int16 and can saturate with 8-bit weights; 7-bit weights avoid that but lose "
        "resolution; which wins depends on the model, hence the choice on calibration images.",
        "",
        f"Exit code: {res.exit_code}. Warnings: {'; '.join(res.warnings) or 'none'}.",
        "",
    ]
    Path(args.results).write_text("\n".join(lines))
    console.print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
