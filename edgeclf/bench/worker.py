"""One bench measurement in a process of its own: load one model, time it, measure its memory.

    python -m edgeclf.bench.worker SPEC.json

SPEC.json (written by :mod:`edgeclf.bench.agent`, on this machine or on a remote device)::

    {"export_dir": "...", "artifact": "tflite-int8", "backend": "litert", "threads": 2,
     "runs": 100, "warmup": 10, "images": "/tmp/.../val_96x96_bilinear.npy", "latency_images": 8,
     "accuracy": true, "probs_out": "/tmp/.../probs_3.npy", "result": "/tmp/.../result_3.json"}

Order matters for the memory figure: import the runtime (``import_ms``; ``baseline`` = peak RSS so far)
-> load the model and classify one real image (``load_ms``; ``cold_start_ms`` = load plus that first
inference) -> warm-up and timed batch-1 invokes (``times_ms``, every one: the statistics are computed by
the caller, :mod:`edgeclf.stats`) -> ``peak`` RSS, i.e. a process that loads and runs only this
model. Only then the accuracy pass over the whole validation array (memory-mapped, batches of 32), which
would otherwise count the images and batch-32 activations as the model's memory.

The result (JSON) goes to ``result``; a model the backend cannot load or run gives ``{"status": "failed",
"reason": ...}``; a crash (OpenCV DNN on some QDQ graphs) leaves no result and the parent says so.
Imports the runtime only: never TensorFlow.
"""
from __future__ import annotations

import importlib
import json
import resource
import sys
import time
from pathlib import Path

from edgeclf.runtime.backends import BACKENDS
from edgeclf.status import Status

# The module each backend's runtime lives in: imported before the baseline is taken.
RUNTIME_MODULES = {name: b.modules for name, b in BACKENDS.items()}
ACCURACY_BATCH = 32


def peak_rss_kib() -> int:
    """Peak resident set size of this process so far, KiB.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process's own memory. Not
    ``ru_maxrss``: getrusage keeps it across fork and execve, so a child started by a big parent would
    report the parent's peak (measured here: 311 MiB for an empty interpreter under a 300 MiB parent).
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss // 1024) if sys.platform == "darwin" else int(rss)  # macOS reports bytes


def predict_all(backend, images):
    import numpy as np

    return np.concatenate([backend.predict(np.ascontiguousarray(images[i:i + ACCURACY_BATCH]))
                           for i in range(0, len(images), ACCURACY_BATCH)]).astype(np.float32)


def measure(spec: dict) -> dict:
    t_import = time.perf_counter()
    for name in RUNTIME_MODULES.get(spec["backend"], ()):
        try:
            importlib.import_module(name)
            break
        except ImportError:
            continue
    import cv2  # noqa: F401  every edgeclf runtime process has OpenCV (decode, resize, the int8 input LUT)
    import numpy as np

    import_ms = (time.perf_counter() - t_import) * 1000

    from edgeclf.contract import load_bundle
    from edgeclf.runtime import ModelRef, open_backend

    baseline = peak_rss_kib()
    bundle = load_bundle(spec["export_dir"])
    ref = ModelRef.from_bundle(bundle, spec["artifact"])
    images = np.load(spec["images"], mmap_mode="r")

    t0 = time.perf_counter()
    backend = open_backend(ref, backend=spec["backend"], threads=spec["threads"])
    load_ms = (time.perf_counter() - t0) * 1000
    backend.predict(np.ascontiguousarray(images[:1]))  # the first real image: a cold start ends here
    cold_start_ms = (time.perf_counter() - t0) * 1000

    # Batch-1 latency of the bare invoke (backend.infer) on real, already prepared validation images.
    k = max(1, min(int(spec.get("latency_images", 8)), len(images)))
    tensors = [backend.prepare(np.ascontiguousarray(images[i:i + 1])) for i in range(k)]
    for i in range(int(spec["warmup"])):
        backend.infer(tensors[i % k])
    times = []
    for i in range(int(spec["runs"])):
        tensor = tensors[i % k]
        t = time.perf_counter_ns()
        backend.infer(tensor)
        times.append((time.perf_counter_ns() - t) / 1e6)
    peak = peak_rss_kib()
    result = {"status": Status.OK.value, "engine": backend.engine, "threads": backend.threads, "import_ms": import_ms,
              "load_ms": load_ms, "cold_start_ms": cold_start_ms, "rss_baseline_kib": baseline,
              "rss_peak_kib": peak, "times_ms": times}

    if spec.get("accuracy"):
        t = time.perf_counter()
        np.save(spec["probs_out"], predict_all(backend, images))
        result["accuracy_seconds"] = time.perf_counter() - t
        if spec.get("device_images"):  # the same photos as decoded and resized by this device's OpenCV
            np.save(spec["device_probs_out"], predict_all(backend, np.load(spec["device_images"], mmap_mode="r")))
    backend.close()
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    try:
        result = measure(spec)
    except Exception as exc:  # one model failing is a row's status, not the bench's end
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = lines[0] if lines else type(exc).__name__
        from edgeclf.errors import EdgeclfError

        if not isinstance(exc, EdgeclfError):
            reason = f"{type(exc).__name__}: {reason}"
        result = {"status": Status.FAILED.value, "reason": reason[:300]}
    Path(spec["result"]).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
