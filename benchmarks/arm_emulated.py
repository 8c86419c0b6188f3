"""The exported models on emulated 64-bit ARM CPUs against this machine: the answers, not the speed.

    sudo .venv/bin/python benchmarks/arm_emulated.py \
        --case "test:/tmp/edgeclf-test-run-.../export-...:../shared/data/hymenoptera_data:0:all:device" \
        --case "flowers:runs/train/flowers/export:../shared/data/flower_photos:250:tflite-fp32,tflite-int8,onnx-int8:host" \
        --cpus cortex-a72,cortex-a76,max --out benchmarks/results/arm_emulated

For each case (name:export:data:max images, 0 for all:artifacts, 'all' or a comma list:decode, 'device' for
``--decode-on device``) and each CPU model: start the device (``scripts/arm-device.sh``), run one
``edgeclf bench`` of the export here and on it, and record top-1, agreement with the float
model, the images lost/gained against this machine, the decoded bytes against this machine's, and how long
each step took. Then, for every int8 ONNX file, ONNX Runtime at each graph optimization level here and on the
device: whether the answers part in the file or in the fused integer kernels. Writes OUT.json and OUT.md.
Latency under emulation is never a board's: it is not reported.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ORT_LEVELS = r'''
import sys, numpy as np, onnxruntime as ort
model, images, out, levels = sys.argv[1:5]
x = np.load(images)
res = {}
for name in levels.split(","):
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, name)
    so.intra_op_num_threads = 2
    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    feed = x.astype(np.float32) if i.type == "tensor(float)" else x
    res[name] = np.concatenate([s.run(None, {i.name: feed[k:k + 32]})[0] for k in range(0, len(x), 32)])
np.savez(out, **res)
'''


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def subset_export(export: Path, keep: list[str] | None, work: Path) -> Path:
    """The export folder with only the artifacts named (a copy of edgeclf.json listing them, the files linked)."""
    if not keep:
        return export
    out = work / f"export-{export.parent.name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    meta = json.loads((export / "edgeclf.json").read_text())
    names = {a["file"]: a for a in meta["artifacts"]}
    chosen = [a for a in meta["artifacts"] if f"{a['format']}-{a['precision']}" in keep]
    meta["artifacts"] = chosen
    (out / "edgeclf.json").write_text(json.dumps(meta, indent=1))
    for f in ["labels.txt", *[a["file"] for a in chosen]]:
        if (export / f).exists():
            shutil.copy(export / f, out / f)  # bench sends files, not links
    assert names
    return out


ALL_LEVELS = "ORT_DISABLE_ALL,ORT_ENABLE_BASIC,ORT_ENABLE_EXTENDED,ORT_ENABLE_ALL"
TWO_LEVELS = "ORT_ENABLE_BASIC,ORT_ENABLE_ALL"  # unfused QDQ operators; fused integer kernels (the default)


def ort_levels(export: Path, data: Path, max_images: int, device_root: Path, cpu: str, work: Path,
               levels: str) -> dict:
    """ONNX Runtime at each optimization level, here and on the device: answers changed between the two."""
    from edgeclf.bench.valset import stratified_subset
    from edgeclf.contract import load_bundle
    from edgeclf.data.dataset import scan
    from edgeclf.imageio import load_resized

    bundle = load_bundle(export)
    int8 = [a for a in bundle.artifacts if a.format == "onnx" and a.precision == "int8"]
    if not int8:
        return {}
    ds = scan(data)
    labels = np.array([bundle.classes.index(ds.classes[s.label]) for s in ds.val])
    keep = stratified_subset(labels, max_images or None)
    h, w = bundle.input.height, bundle.input.width
    x = np.stack([load_resized(ds.val[i].path, h, w, bundle.input.resize) for i in keep]).astype(np.uint8)
    inside = device_root / "tmp" / "edgeclf-ort-levels"
    inside.mkdir(parents=True, exist_ok=True)
    np.save(inside / "x.npy", x)
    model = bundle.path_of(int8[0])
    shutil.copy(model, inside / model.name)
    here = work / "here.npz"
    sh([sys.executable, "-c", ORT_LEVELS, str(model), str(inside / "x.npy"), str(here), levels])
    t = time.perf_counter()
    sh([shutil.which("chroot"), str(device_root), "/usr/bin/python3", "-c", ORT_LEVELS,
        f"/tmp/edgeclf-ort-levels/{model.name}", "/tmp/edgeclf-ort-levels/x.npy", "/tmp/edgeclf-ort-levels/there.npz", levels],
       env={"PATH": "/usr/bin:/bin", "QEMU_CPU": cpu, "LANG": "C.UTF-8"})
    a, b = np.load(here), np.load(inside / "there.npz")
    y = labels[keep]
    out = {"file": model.name, "images": int(len(x)), "seconds_on_device": round(time.perf_counter() - t, 1),
           "levels": {}}
    for level in a.files:
        pa, pb = a[level].argmax(1), b[level].argmax(1)
        out["levels"][level] = {"top1_here": float((pa == y).mean()), "top1_device": float((pb == y).mean()),
                                "answers_changed": int((pa != pb).sum()),
                                "max_abs_output_diff": float(np.abs(a[level] - b[level]).max())}
    shutil.rmtree(inside)
    return out


def main() -> int:
    from edgeclf.bench import armdevice, armlayers

    ap = argparse.ArgumentParser()
    ap.add_argument("--case", action="append", required=True,
                    help="name:export:data:max_images:artifacts:decode (decode: host or device)")
    ap.add_argument("--cpus", default="cortex-a72,cortex-a76,max")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/arm_emulated")
    ap.add_argument("--merge", action="store_true", help="keep the other cases of an existing OUT.json")
    ap.add_argument("--no-ort-levels", action="store_true", help="skip ONNX Runtime's optimization levels")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgeclf-arm-bench-"))
    layers = {p.name.split("-")[0]: json.loads((p / ".edgeclf-done").read_text())
              for p in armlayers.cache_root().glob("*-*") if (p / ".edgeclf-done").is_file()}
    record = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "host": {"machine": platform.machine(),
              "cpu": armdevice._host_cpu(), "cores": os.cpu_count()}, "layers": layers, "cases": {}}
    if args.merge and args.out.with_suffix(".json").is_file():
        record["cases"] = json.loads(args.out.with_suffix(".json").read_text())["cases"]
    for case in args.case:
        name, export, data, max_images, arts, decode = case.split(":")
        export, data, max_images = Path(export), Path(data), int(max_images)
        keep = None if arts == "all" else arts.split(",")
        bench_export = subset_export(export, keep, work)
        record["cases"][name] = {"export": str(export), "data": str(data), "max_images": max_images or None,
                                 "artifacts": arts, "decode_on": decode, "devices": {}}
        for cpu in args.cpus.split(","):
            dev = f"edgeclf-bench-{cpu}"
            t = time.perf_counter()
            sh(["bash", str(REPO / "scripts/arm-device.sh"), "start", "--cpu", cpu, "--name", dev])
            started = time.perf_counter() - t
            out = work / f"{name}-{cpu}"
            t = time.perf_counter()
            cmd = [sys.executable, "-m", "edgeclf", "bench", str(bench_export), "--data", str(data), "--out", str(out),
                   "--runs", "3", "--warmup", "1", "--log", "", "--decode-on", decode, "--remote", dev]
            if max_images:
                cmd += ["--max-images", str(max_images)]
            sh(cmd, env={**os.environ, "COLUMNS": "200"})
            bench_s = time.perf_counter() - t
            result = json.loads((out / "bench.json").read_text())
            device = armdevice.Device.load(armlayers.cache_root() / "devices" / dev)
            levels = {} if args.no_ort_levels else ort_levels(export, data, max_images, Path(device.root), cpu, work,
                                                              ALL_LEVELS if not max_images else TWO_LEVELS)
            sh(["bash", str(REPO / "scripts/arm-device.sh"), "stop", "--name", dev])
            rows = [{k: r.get(k) for k in ("device", "format", "backend", "top1", "agreement", "export_top1",
                                           "vs_first_changed", "vs_first_lost", "vs_first_gained",
                                           "device_decode_top1", "device_decode_changed", "val_images", "val_total")}
                    for r in result["rows"]]
            fp = result["devices"][dev]
            record["cases"][name]["devices"][cpu] = {
                "start_seconds": round(started, 1), "bench_seconds": round(bench_s, 1), "rows": rows,
                "fingerprint": {k: fp.get(k) for k in ("cpu", "machine", "features", "int8_dot", "emulation",
                                                       "versions")},
                "decoded": fp.get("decoded_on_device"), "ort_levels": levels, "notes": result["notes"]}
            print(f"{name} {cpu}: bench {bench_s:.0f} s", flush=True)
            args.out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    args.out.with_suffix(".md").write_text(render(record))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def render(record: dict) -> str:
    h = record["host"]
    lines = ["# Exported models on emulated 64-bit ARM CPUs", "",
             f"Measured {record['created']} by `benchmarks/arm_emulated.py` on {h['cpu']} ({h['machine']}, "
             f"{h['cores']} cores): each emulated device is QEMU user mode (`scripts/arm-device.sh`) running the "
             f"real aarch64 wheels; the host runs the x86_64 wheels of the same versions. Answers only: latency "
             f"under emulation is not a board's and is not reported.", ""]
    lay = record.get("layers", {})
    if lay:
        lines += ["One-time setup (cached): " + ", ".join(
            f"{k} {v['seconds']:.0f} s" for k, v in lay.items() if v.get("seconds") is not None) + ".", ""]
    for name, case in record["cases"].items():
        lines += [f"## {name}: `{case['export']}` on `{case['data']}`", ""]
        for cpu, d in case["devices"].items():
            fp = d["fingerprint"]
            rows = d["rows"]
            n = rows[0]["val_images"] if rows else 0
            total = rows[0]["val_total"] if rows else 0
            lines += [f"### {cpu}: {fp['cpu']}, features {' '.join(fp['features'])}, int8 dot product "
                      f"{'yes' if fp['int8_dot'] else 'no'}", "",
                      f"{n} of {total} validation images; device start {d['start_seconds']:.0f} s, bench (this "
                      f"machine and the device{', decoding on the device too' if case['decode_on'] == 'device' else ''}"
                      f") {d['bench_seconds']:.0f} s; ONNX Runtime levels on the device "
                      f"{(d.get('ort_levels') or {}).get('seconds_on_device', 0):.0f} s.", "",
                      "| device | format | backend | top-1 | agreement with float | export top-1 | vs x86: changed "
                      "(lost / gained) | top-1, decoded on the device |", "|---|---|---|---|---|---|---|---|"]
            for r in rows:
                dev = "x86 (this machine)" if r["device"] == "local" else cpu
                vs = f"{r['vs_first_changed']} ({r['vs_first_lost']} / {r['vs_first_gained']})" \
                    if r["vs_first_changed"] is not None else "-"
                dec = f"{r['device_decode_top1']:.2%}" if r["device_decode_top1"] is not None else "-"
                lines.append(f"| {dev} | {r['format']} | {r['backend']} | {r['top1']:.2%} | "
                             f"{r['agreement']:.2%} | {r['export_top1']:.2%} | {vs} | {dec} |")
            for label, c in (d.get("decoded") or {}).items():
                lines += ["", f"Decoding on the device ({label}): {c['identical_images']} of {c['images']} images "
                              f"byte-identical to this machine's (max |difference| {c['max_abs_diff']}), "
                              f"{c['seconds']:.0f} s."]
            lv = d.get("ort_levels")
            if lv:
                lines += ["", f"ONNX Runtime on `{lv['file']}` at each graph optimization level ({lv['images']} images):",
                          "", "| level | top-1 x86 | top-1 device | answers changed |", "|---|---|---|---|"]
                for level, v in lv["levels"].items():
                    lines.append(f"| {level} | {v['top1_here']:.2%} | {v['top1_device']:.2%} | "
                                 f"{v['answers_changed']} |")
            lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
