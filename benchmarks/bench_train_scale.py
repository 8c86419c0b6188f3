"""Training at scale: peak memory and wall time of `edgeclf train` on 1x, 4x and 16x the flowers photos.

The feature cache lives on disk and is read in batches, so the peak RSS of `edgeclf train` should not
grow with the data set, and its time should grow about linearly. This measures both.

For N copies, the script writes N distinct copies of every flowers photo (the original, then randomly
cropped, flipped, rotated, colour-jittered and re-encoded versions: byte-different, so the scan keeps
them all) to a temporary folder, then runs `edgeclf train` on it in a child process with a fresh cache
folder, and records the child's peak RSS (``ru_maxrss`` from ``wait4``: the kernel's own high-water
mark, file-backed pages included) and its wall time. One N per invocation, so that long runs
do not hold a shared machine for hours; the results accumulate in benchmarks/results/train_scale.json
and ``--report`` writes train_scale.md from them.

The model is MobileNetV2 0.35 at 96 px, 3 frozen + 2 fine-tuning epochs with the default 2 cached views:
small enough for the 16x run (58 720 photos, 153 000 feature passes) to finish in minutes on 2 cores,
and the per-image cache (two cuts, three views of each training photo) still grows to half a gigabyte.

    python benchmarks/bench_train_scale.py --copies 1
    python benchmarks/bench_train_scale.py --copies 4
    python benchmarks/bench_train_scale.py --copies 16 --again     # --again: a second run, cache reused
    python benchmarks/bench_train_scale.py --report
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared"
FLOWERS = SHARED / "data" / "flower_photos"
RESULTS = HERE / "results" / "train_scale.json"
TRAIN_ARGS = ["--model", "mobilenet_v2_035", "--imgsz", "96", "--epochs", "3", "--fine-tune-epochs", "2"]


def machine() -> dict:
    """This machine as the records show it, from the fingerprint `edgeclf bench` reports."""
    from edgeclf.bench.fingerprint import fingerprint

    fp = fingerprint()
    return {"cpu": fp["cpu"], "cores": fp["cores"], "ram_gib": round((fp.get("memory_mib") or 0) / 1024, 1),
            "os": fp["os"], "python": fp["python"]}


def _augmented_copy(src: Path, dst: Path, copy: int) -> None:
    """Copy 0: the original bytes. Copy k: a random crop (80-100 %), flip, small rotation, brightness and
    contrast change, re-encoded at a random JPEG quality (seeded by the file and k)."""
    import cv2
    import numpy as np

    if copy == 0:
        shutil.copyfile(src, dst)
        return
    rng = np.random.default_rng([copy, zlib.crc32(src.name.encode())])
    img = cv2.imdecode(np.fromfile(src, np.uint8), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    s = rng.uniform(0.8, 1.0)
    ch, cw = int(h * s), int(w * s)
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    img = img[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    m = cv2.getRotationMatrix2D((cw / 2, ch / 2), rng.uniform(-10, 10), 1.0)
    img = cv2.warpAffine(img, m, (cw, ch), borderMode=cv2.BORDER_REFLECT)
    img = np.clip(img.astype(np.float32) * rng.uniform(0.8, 1.2) + rng.uniform(-20, 20), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(80, 96))])
    dst.write_bytes(buf.tobytes())


def make_data(copies: int, root: Path) -> int:
    """``copies`` copies of flowers (train/ and val/ alike) under ``root``; returns the photo count."""
    jobs = []
    for split in ("train", "val"):
        for cls in sorted(p for p in (FLOWERS / split).iterdir() if p.is_dir()):
            out = root / split / cls.name
            out.mkdir(parents=True, exist_ok=True)
            for src in sorted(cls.iterdir()):
                if src.suffix.lower() in (".jpg", ".jpeg", ".png"):
                    jobs += [(src, out / f"{src.stem}_c{k}{src.suffix}", k) for k in range(copies)]
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(lambda j: _augmented_copy(*j), jobs))
    return len(jobs)


def measure(copies: int, again: bool, keep: Path | None) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"edgeclf-scale-{copies}x-", dir=keep))
    try:
        t = time.time()
        photos = make_data(copies, work / "data")
        print(f"{copies}x: wrote {photos} photos in {time.time() - t:.0f}s", file=sys.stderr)
        env = {**os.environ, "EDGECLF_CACHE_DIR": str(work / "cache")}
        env.setdefault("EDGECLF_WEIGHTS_DIR", str(SHARED / "weights"))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        runs = []
        for name in (["first", "again"] if again else ["first"]):
            log = work / f"{name}.log"
            t = time.time()
            with open(log, "w") as fh:
                proc = subprocess.Popen([sys.executable, "-m", "edgeclf", "train", str(work / "data"), *TRAIN_ARGS,
                                         "--project", str(work / "runs"), "--name", name],
                                        env=env, stdout=fh, stderr=subprocess.STDOUT)
                _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS (KiB on Linux)
                proc.returncode = os.waitstatus_to_exitcode(status)
            wall = time.time() - t
            if proc.returncode != 0:
                raise SystemExit(f"edgeclf train failed:\n{log.read_text()[-3000:]}")
            report = json.loads((work / "runs" / name / "report.json").read_text())
            cache = report.get("feature_cache", {})
            runs.append({"run": name, "wall_s": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024),
                         "val_top1": report["top1"], "train_seconds": report["train_seconds"],
                         "rows_computed": cache.get("rows_computed"), "rows_reused": cache.get("rows_reused"),
                         "cache_seconds": cache.get("seconds_computing")})
            print(f"{copies}x {name}: {runs[-1]}", file=sys.stderr)
        cache_mib = sum(p.stat().st_size for p in (work / "cache").rglob("*") if p.is_file()) / 2**20
        return {"copies": copies, "photos": photos, "train_images": report["images"], "cache_mib": round(cache_mib),
                "runs": runs, "machine": machine(), "date": time.strftime("%Y-%m-%d"), "args": TRAIN_ARGS}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_report() -> None:
    data = json.loads(RESULTS.read_text())
    points = sorted(data["points"].values(), key=lambda p: p["copies"])
    if not points:
        return
    m = points[0]["machine"]
    first = {p["copies"]: p["runs"][0] for p in points}
    base = first[min(first)]
    lines = [f"# Training at scale: peak memory and time vs data set size ({points[-1]['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB, {m['os']}, Python {m['python']}. "
             f"Shared with other jobs (runs under a common CPU lock).", "",
             f"`edgeclf train DATA {' '.join(TRAIN_ARGS)}` on N distinct augmented copies of flower_photos "
             f"(benchmarks/bench_train_scale.py), each run with an empty feature cache. Peak RSS is the "
             f"kernel's high-water mark of the `edgeclf train` process (ru_maxrss from wait4).", "",
             "| copies | photos | feature cache on disk | peak RSS | RSS vs 1x | wall time | time vs 1x | val top-1 |",
             "|---|---|---|---|---|---|---|---|"]
    for p in points:
        r = p["runs"][0]
        lines.append(f"| {p['copies']}x | {p['photos']} | {p['cache_mib']} MiB | {r['peak_rss_mib']} MiB | "
                     f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}x | {r['wall_s']:.0f} s | "
                     f"{r['wall_s'] / base['wall_s']:.2f}x | {r['val_top1']:.2%} |")
    again = [(p["copies"], p["runs"][1]) for p in points if len(p["runs"]) > 1]
    if again:
        lines += ["", "A second run on the same data (same settings, the cache folder kept): no feature computed.", "",
                  "| copies | rows reused | rows computed | wall time | first run |", "|---|---|---|---|---|"]
        for copies, r in again:
            lines.append(f"| {copies}x | {r['rows_reused']} | {r['rows_computed']} | {r['wall_s']:.0f} s | "
                         f"{first[copies]['wall_s']:.0f} s |")
    (HERE / "results" / "train_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, help="measure N copies of flowers and record the result")
    ap.add_argument("--again", action="store_true", help="also a second run reusing the cache")
    ap.add_argument("--tmp", type=Path, default=None, help="where to write the copies (default: the system's)")
    ap.add_argument("--report", action="store_true", help="write train_scale.md from the recorded results")
    args = ap.parse_args()
    if args.copies:
        point = measure(args.copies, args.again, args.tmp)
        data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"points": {}}
        data["points"][str(args.copies)] = point
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    if args.report or not args.copies:
        write_report()


if __name__ == "__main__":
    main()
