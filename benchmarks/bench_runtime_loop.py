"""How much `edgeclf run` costs beyond inference, and how much memory the runtime needs.

In one run, on the same int8 MobileNetV2 1.0 224 model (built from the shared ImageNet weights by
tests/runtime_models.py, cached) and the same photos (hymenoptera train + val):

1. bare: one LiteRT interpreter with N threads, set_tensor/invoke/get_tensor on inputs decoded,
   resized and quantized beforehand -- the backend's invoke rate, the figure the target is set against;
2. bare parallel (N >= 2): the same on N one-thread interpreters in N threads -- what the model gives on
   N cores with no decoding at all, the stricter reference;
3. `edgeclf run MODEL --source FOLDER --headless --output preds.csv --threads N` as a user runs it (a
   subprocess; default mode, and --mode latency), whose throughput is the frames of its summary over its
   loop's wall time (read, decode, resize, quantize, inference, top-k and CSV row included);

interleaved for several rounds (this machine is noisy), and the peak RSS of the `edgeclf run`
process against a process that imports TensorFlow and runs the same model with tf.lite.

    flock /tmp/edgeclf-cpu.lock python benchmarks/bench_runtime_loop.py [--rounds 7] [--threads 2 1]

Writes benchmarks/results/runtime_loop.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import runtime_models  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
EDGECLF = [str(Path(sys.executable).parent / "edgeclf")]  # the console script of this environment


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import cv2
    import onnxruntime
    import ai_edge_litert

    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "numpy": np.__version__, "opencv": cv2.__version__, "onnxruntime": onnxruntime.__version__,
            "ai_edge_litert": getattr(ai_edge_litert, "__version__", "?"), "platform": platform.platform()}


def build_model() -> Path:
    out = Path(tempfile.gettempdir()) / f"edgeclf-bench-mnv2-1.0-224-{runtime_models.fixture_key(1.0, 224)}"
    if not (out / "DONE").is_file():
        print("building the MobileNetV2 1.0 224 int8 model (once) ...", file=sys.stderr)
        subprocess.run([sys.executable, str(ROOT / "tests" / "runtime_models.py"), str(out), "--alpha", "1.0",
                        "--size", "224", "--no-onnx"], check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                       stdout=subprocess.DEVNULL)
    return out / "export"


def photo_folder() -> Path:
    """train + val photos in one folder tree (symlinks), what `edgeclf run` and the bare loop both read."""
    folder = Path(tempfile.gettempdir()) / "edgeclf-bench-photos"
    if not folder.is_dir():
        for split in ("train", "val"):
            for cls in runtime_models.CLASSES:
                src = runtime_models.DATA / split / cls
                dst = folder / split / cls
                dst.mkdir(parents=True, exist_ok=True)
                for p in src.iterdir():
                    (dst / p.name).symlink_to(p)
    return folder


def bare_rate(backend, tensors: list[np.ndarray]) -> float:
    it, i_in, i_out = backend._it, backend._in, backend._out
    t0 = time.perf_counter()
    for x in tensors:
        it.set_tensor(i_in, x)
        it.invoke()
        it.get_tensor(i_out)
    return len(tensors) / (time.perf_counter() - t0)


def bare_parallel_rate(backends, tensors: list[np.ndarray]) -> float:
    """The same bare loop in one thread per one-thread interpreter, tensors shared out: the backend's best."""
    import threading

    lock, nxt = threading.Lock(), [0]

    def work(backend):
        it, i_in, i_out = backend._it, backend._in, backend._out
        while True:
            with lock:
                k = nxt[0]
                nxt[0] += 1
            if k >= len(tensors):
                return
            it.set_tensor(i_in, tensors[k])
            it.invoke()
            it.get_tensor(i_out)

    threads = [threading.Thread(target=work, args=(b,)) for b in backends]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(tensors) / (time.perf_counter() - t0)


RSS_WRAPPER = r"""
import os, resource, subprocess, sys
proc = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
sys.stdout.write(proc.stdout)
sys.stderr.write(proc.stderr)
print("PEAK_RSS_KIB", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(proc.returncode)
"""

TF_PROCESS = r"""
import sys, numpy as np
import tensorflow as tf
it = tf.lite.Interpreter(model_path=sys.argv[1], num_threads=int(sys.argv[2]))
it.allocate_tensors()
i = it.get_input_details()[0]
for _ in range(20):
    it.set_tensor(i["index"], np.zeros(i["shape"], i["dtype"]))
    it.invoke()
print("ok")
"""


def rss_of(cmd: list[str]) -> tuple[str, float]:
    """Run ``cmd`` in its own wrapper process; (stdout, peak RSS of cmd in MiB)."""
    proc = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *cmd], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{cmd[:3]} failed: {proc.stderr[-2000:]}")
    kib = int(re.search(r"PEAK_RSS_KIB (\d+)", proc.stdout).group(1))
    return proc.stdout, kib / 1024


def run_fps(model: Path, folder: Path, threads: int, mode: str, tmp: str, expect: int) -> tuple[float, float]:
    stdout, rss = rss_of(EDGECLF + ["run", str(model), "--source", str(folder), "--headless", "--output",
                                    str(Path(tmp) / "preds.csv"), "--threads", str(threads), "--mode", mode])
    m = re.search(r"summary: (\d+) frames.*?; ([\d.]+) FPS", stdout)
    frames, fps = int(m.group(1)), float(m.group(2))
    assert frames == expect, (frames, expect)
    return fps, rss


def measure(model: Path, folder: Path, threads: int, rounds: int, tmp: str) -> dict:
    from edgeclf.imageio import ImageDecodeError, is_candidate, load_rgb, resize_rgb
    from edgeclf.runtime import open_backend

    backend = open_backend(model, "litert", artifact="tflite-int8", threads=threads)
    singles = [backend.clone(1) for _ in range(threads)] if threads > 1 else []
    files = sorted((p for p in folder.rglob("*") if is_candidate(p)), key=lambda p: p.relative_to(folder).as_posix())
    tensors, sizes = [], []
    for p in files:
        try:
            rgb = load_rgb(p)
        except ImageDecodeError:
            continue
        sizes.append(rgb.shape[:2])
        tensors.append(backend.prepare(resize_rgb(rgb, backend.height, backend.width)[None]))
    for x in tensors[:10]:  # warm-up
        backend.infer(x)
    # auto is what a user gets: throughput mode on a folder with 2+ threads, latency mode with one
    modes = ["auto", "latency"] if threads > 1 else ["auto"]
    rows = []
    for r in range(rounds):  # interleaved, so that the machine's drifts hit every variant alike
        row = {"bare": bare_rate(backend, tensors)}
        if singles:
            row["bare_parallel"] = bare_parallel_rate(singles, tensors)
        for mode in modes:
            row[f"run_{mode}"], row[f"rss_{mode}"] = run_fps(model, folder, threads, mode, tmp, len(tensors))
        rows.append(row)
        print(f"threads {threads} round {r + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()),
              file=sys.stderr)
    path = backend.model.path
    for b in [backend, *singles]:
        b.close()

    def med(key):
        return statistics.median(row[key] for row in rows)

    ratios = {f"run_{m}_vs_bare": [row[f"run_{m}"] / row["bare"] for row in rows] for m in modes}
    if singles:
        ratios.update({f"run_{m}_vs_bare_parallel": [row[f"run_{m}"] / row["bare_parallel"] for row in rows]
                       for m in modes})
    h, w = (int(statistics.median(s[i] for s in sizes)) for i in (0, 1))
    return {"threads": threads, "images": len(tensors), "image_size": f"{w}x{h}", "rounds": rows,
            "medians": {k: med(k) for k in rows[0]},
            "ratio_median": {k: statistics.median(v) for k, v in ratios.items()},
            "ratio_quartiles": {k: [float(np.percentile(v, 25)), float(np.percentile(v, 75))]
                                for k, v in ratios.items()},
            "peak_rss_mib": {m: max(row[f"rss_{m}"] for row in rows) for m in modes}, "model_path": str(path)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    args = ap.parse_args()

    model = build_model()
    folder = photo_folder()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [measure(model, folder, t, args.rounds, tmp) for t in args.threads]
    _, tf_rss = rss_of([sys.executable, "-c", TF_PROCESS, runs[0]["model_path"], str(args.threads[0])])
    _, tf_import_rss = rss_of([sys.executable, "-c", "import tensorflow"])
    result = {"machine": machine(), "model": "model_int8.tflite (MobileNetV2 1.0, 224, tflite-int8)",
              "rounds": args.rounds, "runs": runs,
              "peak_rss_mib": {"edgeclf_run": max(max(r["peak_rss_mib"].values()) for r in runs),
                               "tensorflow_lite_interpreter": tf_rss, "import_tensorflow_only": tf_import_rss},
              "date": time.strftime("%Y-%m-%d %H:%M")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "runtime_loop.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    names = {"bare": "bare", "bare_parallel": "bare, one-thread interpreters in parallel",
             "run_auto": "`edgeclf run` (default: auto)", "run_latency": "`edgeclf run --mode latency`"}
    tables = []
    for run in runs:
        keys = [k for k in run["rounds"][0] if not k.startswith("rss")]
        head = "| round | " + " | ".join(names[k] + " img/s" for k in keys) + " |"
        rows = "\n".join(f"| {i + 1} | " + " | ".join(f"{row[k]:.1f}" for k in keys) + " |"
                         for i, row in enumerate(run["rounds"]))
        rows += "\n| **median** | " + " | ".join(f"**{run['medians'][k]:.1f}**" for k in keys) + " |"
        ratio_lines = "\n".join(
            f"- {names['run_' + k.split('_vs_')[0][4:]]} / {names[k.split('_vs_')[1]]}: median **{v:.3f}** "
            f"(quartiles {run['ratio_quartiles'][k][0]:.3f}-{run['ratio_quartiles'][k][1]:.3f})"
            for k, v in run["ratio_median"].items())
        rss = ", ".join(f"{names['run_' + k]} {v:.0f} MiB" for k, v in run["peak_rss_mib"].items())
        tables.append(f"""### --threads {run['threads']}

{head}
|{'---|' * (len(keys) + 1)}
{rows}

Per-round ratios (target: `edgeclf run` ≥ 0.95 x bare):
{ratio_lines}

Peak RSS: {rss}.
""")
    md = f"""# `edgeclf run` loop overhead and memory

Measured by `benchmarks/bench_runtime_loop.py` on {result['date']}
(`flock /tmp/edgeclf-cpu.lock python benchmarks/bench_runtime_loop.py --rounds {args.rounds}`).

Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, numpy {m['numpy']}, OpenCV {m['opencv']},
ai-edge-litert {m['ai_edge_litert']}, onnxruntime {m['onnxruntime']}; {m['platform']}.
This machine is shared and noisy (latencies vary ±10-30 % run to run): every round measures every variant,
interleaved; read the medians and the quartiles of the per-round ratios, not one number.

Model: {result['model']}, built from the shared ImageNet weights. Images: {runs[0]['images']} hymenoptera
photos (train + val, JPEG, median {runs[0]['image_size']}), one folder tree.

- **bare**: one LiteRT interpreter with N threads, `set_tensor` / `invoke` / `get_tensor` back to back on
  inputs decoded, resized and quantized beforehand: the backend's invoke rate.
- **bare, one-thread interpreters in parallel**: the same on N one-thread interpreters, one Python thread
  each: the most this model gives on N cores with no decoding at all.
- **`edgeclf run`**: `edgeclf run MODEL --source FOLDER --headless --output preds.csv --threads N [--mode M]`
  in its own process; frames over the loop's wall time, as its summary prints (read, decode, resize,
  quantize, inference, top-k, CSV row: all included). On a folder with N ≥ 2, auto is throughput mode:
  N one-thread interpreters, each reading and decoding the images it classifies, results written in order.

{chr(10).join(tables)}
Peak RSS (MiB): `edgeclf run` {result['peak_rss_mib']['edgeclf_run']:.0f} (the most of any variant above);
a process that imports TensorFlow and runs the same model with `tf.lite.Interpreter` {tf_rss:.0f};
`import tensorflow` alone {tf_import_rss:.0f}.
"""
    (RESULTS / "runtime_loop.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
