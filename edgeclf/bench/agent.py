"""The device side of a bench: runs a plan's jobs one after another, each in a worker process of its own.

The same code measures on this machine and on a remote device; only the transport differs.

* Here, :func:`run_job` is called by :mod:`edgeclf.bench.core` for each job.
* On a device (``edgeclf bench --remote``), ``ssh HOST PYTHON -m edgeclf.bench.agent serve`` reads a tar
  stream on stdin (``plan.json``, the export folders, the decoded validation images), unpacks it into a
  new temporary folder, runs the jobs and writes one JSON line per event on stdout::

      {"event": "ready", "workdir": "/tmp/edgeclf-remote-x1y2", "bytes": 5123456}
      {"event": "decode", "host_images": "images/0.npy", "comparison": {"identical_images": 153, ...}}
      {"event": "job", "index": 0, "result": {... the worker's result ...}, "probs": [[...], ...] or null,
       "device_probs": [[...], ...] or null}
      {"event": "thermal", "thermal": {"temps_c": {...}, "throttled": ...}}
      {"event": "done", "workdir": "/tmp/edgeclf-remote-x1y2", "removed": true}

  and removes the folder at the end, also when interrupted (SIGTERM, SIGHUP, a closed connection).
* ``PYTHON -m edgeclf.bench.agent probe`` prints :func:`probe` (version, protocol, backends, fingerprint).

A job (dict, JSON): ``export_dir`` and ``images`` (paths, relative to the folder the plan was unpacked in,
or absolute), ``artifact``, ``backend``, ``threads``, ``runs``, ``warmup``, ``latency_images``,
``accuracy`` (predict the whole validation array too), and with ``--decode-on device`` ``device_images``
(the same photos decoded and resized on the device: a second accuracy pass). The plan's ``decode`` list
names the photos of each image set (sent as files) for the device to decode first; a ``decode`` event says
how its bytes compare with the host's. Imports the runtime only: never TensorFlow.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from edgeclf.status import Status

PROTOCOL = 2  # bumped when a plan, job, worker result or event changes meaning (2: decoding on the device)
PLAN = "plan.json"
WORKDIR_PREFIX = "edgeclf-remote-"


def _failed(reason: str) -> dict:
    return {"status": Status.FAILED.value, "reason": reason}


def _run_worker(spec: dict, tmp: Path, n: int, timeout: float) -> dict:
    """``python -m edgeclf.bench.worker SPEC`` in a process of its own; its result, or why there is none."""
    spec_path = tmp / f"spec_{n}.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    try:
        proc = subprocess.run([sys.executable, "-m", "edgeclf.bench.worker", str(spec_path)], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return _failed(f"timed out after {timeout:.0f} s")
    result_path = Path(spec["result"])
    if result_path.is_file():
        return json.loads(result_path.read_text(encoding="utf-8"))
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        return _failed(f"the runtime crashed ({sig})")
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    return _failed(f"exit {proc.returncode}: {lines[-1][:200] if lines else 'no output'}")


def run_job(job: dict, base: Path, tmp: Path, n: int, timeout: float):
    """Measure one job; returns (the worker's result dict, probabilities or None, probabilities on the
    device-decoded images or None)."""
    import numpy as np

    spec = {**job, "export_dir": str(base / job["export_dir"]), "images": str(base / job["images"]),
            "probs_out": str(tmp / f"probs_{n}.npy"), "result": str(tmp / f"result_{n}.json")}
    if job.get("device_images"):
        spec.update(device_images=str(base / job["device_images"]), device_probs_out=str(tmp / f"dprobs_{n}.npy"))
    result = _run_worker(spec, tmp, n, timeout)
    probs = device_probs = None
    if result.get("status") == Status.OK.value and job.get("accuracy"):
        probs = np.load(spec["probs_out"])
        if job.get("device_images"):
            device_probs = np.load(spec["device_probs_out"])
    return result, probs, device_probs


def decode_here(entry: dict, base: Path) -> dict:
    """Decode and resize the photos of one image set with this device's own OpenCV (the runtime's one decoder
    and resize), save them beside the host's array, and say how the bytes compare with the host's."""
    import hashlib
    import time

    import numpy as np

    from edgeclf.imageio import ImageDecodeError, load_resized

    t = time.perf_counter()
    host = np.load(base / entry["host_images"], mmap_mode="r")
    images, failed = [], []
    for i, name in enumerate(entry["files"]):
        try:
            images.append(load_resized(base / name, entry["height"], entry["width"], entry["resize"]))
        except ImageDecodeError as exc:
            failed.append(str(exc))
            images.append(np.asarray(host[i]))  # keep the index: the host's decoding stands in
    device = np.stack(images).astype(np.uint8)
    np.save(base / entry["out"], device)
    diff = np.abs(device.astype(np.int16) - np.asarray(host, dtype=np.int16))
    per_image = diff.reshape(len(device), -1).max(axis=1)
    return {"images": int(len(device)), "identical_images": int((per_image == 0).sum()),
            "max_abs_diff": int(diff.max()) if diff.size else 0, "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
            "pixels_differing": float((diff > 0).mean()) if diff.size else 0.0,
            "sha256_host": hashlib.sha256(np.ascontiguousarray(host).tobytes()).hexdigest(),
            "sha256_device": hashlib.sha256(device.tobytes()).hexdigest(), "failed": failed[:5],
            "seconds": round(time.perf_counter() - t, 2), "opencv": __import__("cv2").__version__}


def backends_available() -> dict[str, bool]:
    from edgeclf.runtime import BACKENDS

    return {name: bool(cls.available()) for name, cls in BACKENDS.items()}


def probe() -> dict:
    """What the bench's host needs to know before it sends anything."""
    from importlib.metadata import PackageNotFoundError, version

    from edgeclf.bench.fingerprint import fingerprint
    from edgeclf.contract import SCHEMA

    try:
        edgeclf_version = version("edgeclf")
    except PackageNotFoundError:
        edgeclf_version = "unknown"
    return {"edgeclf": edgeclf_version, "protocol": PROTOCOL, "contract_schema": SCHEMA,
            "python": sys.version.split()[0], "executable": sys.executable, "backends": backends_available(),
            "fingerprint": fingerprint()}


def _emit(event: dict) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _unpack(stream, workdir: Path) -> int:
    """Extract a tar stream into ``workdir`` (nothing outside it); returns the bytes read."""
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(workdir, filter="data")
        else:  # Python without extraction filters: check the names ourselves
            for member in tar:
                target = (workdir / member.name).resolve()
                if not (member.isfile() or member.isdir()) or workdir.resolve() not in target.parents:
                    raise ValueError(f"refusing tar member {member.name!r}")
                tar.extract(member, workdir)
        return tar.offset


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def serve(stream=None) -> int:
    """The remote end of ``edgeclf bench --remote``: unpack, run every job, report, clean up."""
    from edgeclf.bench.fingerprint import thermal

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)
    stream = stream or sys.stdin.buffer
    workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
    try:
        size = _unpack(stream, workdir)
        plan = json.loads((workdir / PLAN).read_text(encoding="utf-8"))
        if plan.get("protocol") != PROTOCOL:
            raise SystemExit(f"plan protocol {plan.get('protocol')} but this edgeclf speaks {PROTOCOL}")
        _emit({"event": "ready", "workdir": str(workdir), "bytes": size})
        tmp = workdir / "jobs"
        tmp.mkdir()
        for entry in plan.get("decode", []):
            _emit({"event": "decode", "host_images": entry["host_images"], "label": entry.get("label"),
                   "comparison": decode_here(entry, workdir)})
        for n, job in enumerate(plan["jobs"]):
            result, probs, device_probs = run_job(job, workdir, tmp, n, float(plan.get("job_timeout", 1800)))
            _emit({"event": "job", "index": n, "result": result,
                   "probs": probs.astype(float).tolist() if probs is not None else None,
                   "device_probs": device_probs.astype(float).tolist() if device_probs is not None else None})
        _emit({"event": "thermal", "thermal": thermal()})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _emit({"event": "done", "workdir": str(workdir), "removed": not workdir.exists()})
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["probe"]:
        _emit(probe())
        return 0
    if argv[:1] == ["serve"]:
        try:
            return serve()
        except BrokenPipeError:  # the bench's host went away: the folder is already removed
            return 1
    sys.stderr.write("usage: python -m edgeclf.bench.agent probe|serve\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
