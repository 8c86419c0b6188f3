"""Where an int8 model's answers part between this machine's kernels and an ARM CPU's: layer by layer.

    python benchmarks/arm_layer_diff.py EXPORT_DIR --data DATA --device NAME [--images 64] [--out FILE.json]

Runs the export's int8 models (LiteRT and ONNX Runtime) on the same decoded validation images here and
inside an emulated ARM device of ``scripts/arm-device.sh`` (chroot into its root, its QEMU CPU model), with
every intermediate tensor kept (LiteRT ``experimental_preserve_all_tensors``; ONNX Runtime: each node's
output made a graph output), and reports per tensor, in execution order, how many values differ and by how
many quantization steps, and how the final answers differ. Needs root (chroot) and a running device.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RUN = r'''
import json, sys
import numpy as np
kind, model, images, out = sys.argv[1:5]
x = np.load(images)
res = {}
if kind == "tflite":
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.interpreter import OpResolverType
    # without XNNPACK: inside its delegate the intermediate tensors are not kept (the final answer with it is
    # what bench measures; this is where the built-in kernels part)
    it = Interpreter(model_path=model, experimental_preserve_all_tensors=True, num_threads=1,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    per = {}
    for i in range(len(x)):
        it.set_tensor(inp["index"], x[i:i + 1].astype(inp["dtype"]) if inp["dtype"] == np.uint8 else
                     (x[i:i + 1].astype(np.int16) - 128).astype(inp["dtype"]))
        it.invoke()
        for d in it.get_tensor_details():
            if d["dtype"] not in (np.int8, np.uint8, np.int16):
                continue
            try:
                t = it.get_tensor(d["index"])
            except ValueError:
                continue
            per.setdefault(d["index"], []).append(t.copy())
    order = sorted(per)
    np.savez(out, **{f"{k:05d}|{names[k]}": np.stack(per[k]) for k in order})
else:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    outs = [o.name for o in s.get_outputs()]
    acc = {o: [] for o in outs}
    for i in range(len(x)):
        feed = x[i:i + 1]
        if s.get_inputs()[0].type == "tensor(float)":
            feed = feed.astype(np.float32)
        for o, v in zip(outs, s.run(outs, {name: feed})):
            acc[o].append(v)
    np.savez(out, **{f"{k:05d}|{o}": np.stack(acc[o]) for k, o in enumerate(outs)})
'''


def expose_onnx(src: Path, dst: Path) -> None:
    """A copy of ``src`` whose every node output (int8/uint8/float) is also a graph output, in node order."""
    import onnx
    from onnx import shape_inference

    m = shape_inference.infer_shapes(onnx.load(str(src)))
    types = {vi.name: vi for vi in list(m.graph.value_info) + list(m.graph.output)}
    have = {o.name for o in m.graph.output}
    for node in m.graph.node:
        for out in node.output:
            if out in types and out not in have:
                m.graph.output.append(types[out])
                have.add(out)
    onnx.save(m, str(dst))


def run_both(kind: str, model: Path, images: Path, device_root: Path, cpu: str, work: Path) -> tuple[dict, dict]:
    here = work / f"{kind}_here.npz"
    subprocess.run([sys.executable, "-c", RUN, kind, str(model), str(images), str(here)], check=True)
    inside = device_root / "tmp" / "edgeclf-layer-diff"
    inside.mkdir(parents=True, exist_ok=True)
    for f in (model, images):
        shutil.copy(f, inside / f.name)
    env = {"PATH": "/usr/bin:/bin", "QEMU_CPU": cpu, "LANG": "C.UTF-8"}
    subprocess.run([shutil.which("chroot"), str(device_root), "/usr/bin/python3", "-c", RUN, kind,
                    f"/tmp/edgeclf-layer-diff/{model.name}", f"/tmp/edgeclf-layer-diff/{images.name}",
                    f"/tmp/edgeclf-layer-diff/{kind}_there.npz"], check=True, env=env)
    there = inside / f"{kind}_there.npz"
    a, b = dict(np.load(here)), dict(np.load(there))
    shutil.rmtree(inside)
    return a, b


def compare(a: dict, b: dict) -> list[dict]:
    rows = []
    for key in sorted(a):
        if key not in b or a[key].shape != b[key].shape:
            continue
        x, y = a[key], b[key]
        if x.dtype.kind == "f":
            d = np.abs(x.astype(np.float64) - y)
            rows.append({"tensor": key.split("|", 1)[1], "dtype": str(x.dtype), "values": int(x.size),
                         "differ": float((d > 0).mean()), "max_diff": float(d.max()), "float": True})
        else:
            d = np.abs(x.astype(np.int32) - y.astype(np.int32))
            rows.append({"tensor": key.split("|", 1)[1], "dtype": str(x.dtype), "values": int(x.size),
                         "differ": float((d > 0).mean()), "max_diff": int(d.max()),
                         "diff_hist": {str(k): int((d == k).sum()) for k in range(1, min(int(d.max()), 4) + 1)}})
    return rows


def main() -> int:
    from edgeclf.bench import armdevice, armlayers
    from edgeclf.bench.valset import stratified_subset
    from edgeclf.contract import load_bundle
    from edgeclf.data.dataset import scan
    from edgeclf.imageio import load_resized

    ap = argparse.ArgumentParser()
    ap.add_argument("export", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = armdevice.Device.load(armlayers.cache_root() / "devices" / args.device)
    bundle = load_bundle(args.export)
    ds = scan(args.data)
    labels = np.array([s.label for s in ds.val])
    keep = stratified_subset(labels, args.images)
    h = bundle.input.height
    x = np.stack([load_resized(ds.val[i].path, h, h, bundle.input.resize) for i in keep]).astype(np.uint8)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "edgeclf-layer-diff-host"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    np.save(work / "images.npy", x)
    report = {"device": args.device, "cpu": device.cpu, "images": len(x), "models": {}}
    for art in bundle.artifacts:
        if art.precision != "int8":
            continue
        path = bundle.path_of(art)
        kind = "onnx" if art.format == "onnx" else "tflite"
        if kind == "onnx":
            exposed = work / f"exposed_{path.name}"
            expose_onnx(path, exposed)
            path = exposed
        a, b = run_both(kind, path, work / "images.npy", Path(device.root), device.cpu, work)
        rows = compare(a, b)
        first = next((r for r in rows if r["differ"] > 0), None)
        last_key = sorted(a)[-1]
        pa, pb = a[last_key].reshape(len(x), -1).argmax(1), b[last_key].reshape(len(x), -1).argmax(1)
        report["models"][art.name] = {"tensors": len(rows), "differing_tensors": sum(r["differ"] > 0 for r in rows),
                                      "first_differing": first, "answers_changed": int((pa != pb).sum()),
                                      "layers": rows}
        print(f"{art.name}: {sum(r['differ'] > 0 for r in rows)} of {len(rows)} tensors differ; first: "
              f"{first['tensor'] if first else None} ({first['differ']:.2%} of values, max {first['max_diff']})"
              if first else f"{art.name}: identical", f"; answers changed: {int((pa != pb).sum())}/{len(x)}")
        for r in rows[:12]:
            print(f"   {r['tensor'][:70]:70s} {r['dtype']:6s} differ {r['differ']:.3%} max {r['max_diff']}")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
