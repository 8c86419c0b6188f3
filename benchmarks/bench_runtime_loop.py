"""How much `edgeclf run` costs beyond inference, and how much memory the runtime needs.

In one run, on the same int8 MobileNetV2 1.0 224 model (built from the shared ImageNet weights by
tests/runtime_models.py, cached) and the same photos (hymenoptera train + val):

1. the bare backend: LiteRT set_tensor/invoke/get_tensor on inputs decoded, resized and quantized
   beforehand -- the invoke rate no loop can beat;
2. `edgeclf run MODEL --source FOLDER --headless --output preds.csv` as a user runs it (a subprocess),
   whose throughput is the frames of its summary over its loop's wall time (decode, resize, quantize,
   inference, top-k and CSV row included);

alternating bare / loop for a few rounds (this machine is noisy), and the peak RSS of the `edgeclf run`
process against a process that imports TensorFlow and runs the same model with tf.lite.

    flock /tmp/edgeclf-cpu.lock python benchmarks/bench_runtime_loop.py [--rounds 3] [--threads 2]

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


def measure(model: Path, folder: Path, threads: int, rounds: int, tmp: str) -> dict:
    from edgeclf.imageio import ImageDecodeError, is_candidate, load_resized
    from edgeclf.runtime import open_backend

    backend = open_backend(model, "litert", artifact="tflite-int8", threads=threads)
    files = sorted((p for p in folder.rglob("*") if is_candidate(p)), key=lambda p: p.relative_to(folder).as_posix())
    tensors = []
    for p in files:
        try:
            tensors.append(backend.prepare(load_resized(p, backend.height, backend.width)[None]))
        except ImageDecodeError:
            pass
    for x in tensors[:10]:  # warm-up
        backend.infer(x)
    bare, loop = [], []
    for r in range(rounds):  # alternate, so that the machine's drifts hit both alike
        bare.append(bare_rate(backend, tensors))
        stdout, rss = rss_of(EDGECLF + ["run", str(model), "--source", str(folder), "--headless", "--output",
                                        str(Path(tmp) / "preds.csv"), "--threads", str(threads)])
        m = re.search(r"summary: (\d+) frames.*?; ([\d.]+) FPS", stdout)
        frames, fps = int(m.group(1)), float(m.group(2))
        assert frames == len(tensors), (frames, len(tensors))
        loop.append((fps, rss))
        print(f"threads {threads} round {r + 1}: bare {bare[-1]:.1f} img/s, edgeclf run {fps:.1f} img/s "
              f"(ratio {fps / bare[-1]:.3f}), peak RSS {rss:.0f} MiB", file=sys.stderr)
    path = backend.model.path
    backend.close()
    ratios = [f / b for (f, _), b in zip(loop, bare)]
    return {"threads": threads, "images": len(tensors), "bare_img_s": bare, "run_img_s": [f for f, _ in loop],
            "ratio": ratios, "ratio_median": statistics.median(ratios),
            "ratio_of_medians": statistics.median([f for f, _ in loop]) / statistics.median(bare),
            "peak_rss_mib": max(r for _, r in loop), "model_path": str(path)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
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
              "peak_rss_mib": {"edgeclf_run": max(r["peak_rss_mib"] for r in runs),
                               "tensorflow_lite_interpreter": tf_rss, "import_tensorflow_only": tf_import_rss},
              "date": time.strftime("%Y-%m-%d %H:%M")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "runtime_loop.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["machine"]
    tables = []
    for run in runs:
        rows = "\n".join(f"| {i + 1} | {b:.1f} | {f:.1f} | {f / b:.3f} |"
                         for i, (b, f) in enumerate(zip(run["bare_img_s"], run["run_img_s"])))
        tables.append(f"""### {run['threads']} inference thread{'s' * (run['threads'] != 1)}

| round | bare img/s | edgeclf run img/s | ratio |
|---|---|---|---|
{rows}

Median of the per-round ratios: **{run['ratio_median']:.3f}**; ratio of the medians: {run['ratio_of_medians']:.3f}
(target ≥ 0.95). Peak RSS of `edgeclf run`: {run['peak_rss_mib']:.0f} MiB.
""")
    md = f"""# `edgeclf run` loop overhead and memory

Measured by `benchmarks/bench_runtime_loop.py` on {result['date']}
(`flock /tmp/edgeclf-cpu.lock python benchmarks/bench_runtime_loop.py`).

Machine: {m['cpu']}, {m['cores']} cores; Python {m['python']}, numpy {m['numpy']}, OpenCV {m['opencv']},
ai-edge-litert {m['ai_edge_litert']}, onnxruntime {m['onnxruntime']}; {m['platform']}.
This machine is shared and noisy (±30 % run to run, FACTS.md): read the spread, not one number.

Model: {result['model']}, built from the shared ImageNet weights. Images: {runs[0]['images']} hymenoptera
photos (train + val, JPEG, mostly 500x375), one folder tree.

- **bare**: LiteRT `set_tensor` / `invoke` / `get_tensor` on inputs decoded, resized and quantized beforehand.
- **edgeclf run**: `edgeclf run MODEL --source FOLDER --headless --output preds.csv --threads N` in its own
  process; frames over the loop's wall time, as its summary prints (decode, resize, quantize, inference,
  top-k, CSV row: all included).

{chr(10).join(tables)}
Peak RSS (MiB): `edgeclf run` {result['peak_rss_mib']['edgeclf_run']:.0f};
a process that imports TensorFlow and runs the same model with `tf.lite.Interpreter` {tf_rss:.0f};
`import tensorflow` alone {tf_import_rss:.0f}.
"""
    (RESULTS / "runtime_loop.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
