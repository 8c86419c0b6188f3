"""The eight-candidate flowers sweep: MobileNetV2 1.0 and 0.35 at 96, 128, 160 and 224 px, benched here and on
an emulated Cortex-A72 and Cortex-A76 board (their accuracy; latency only here), with the front, the choice
under a latency budget, and what the sweep cost in wall time and where it went.

    sudo .venv/bin/python benchmarks/sweep_flowers.py [--data ../shared/data/flower_photos] \
        [--max-latency 2.0] [--out benchmarks/results/sweep_flowers] [--resume runs/sweep/flowers]

Root starts the emulated boards (scripts/arm-device.sh); without root, or with --no-arm, the sweep runs here
only. Writes OUT.md (sweep.md of the sweep with this machine's fingerprint and the cost) and OUT.json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CPUS = {"a72": "cortex-a72", "a76": "cortex-a76"}
REMOTE_ARGS = "--max-images 150 --runs 3 --warmup 1 --formats tflite-int8 --backends litert"


def sh(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:5])} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def judge(folder: Path, max_latency: float) -> subprocess.CompletedProcess:
    """The budget judged again on the finished sweep (nothing is redone)."""
    return subprocess.run([sys.executable, "-m", "edgeclf", "sweep", "--resume", str(folder), "--max-latency",
                           str(max_latency)], text=True, capture_output=True, env={**os.environ, "COLUMNS": "200"})


def choice_lines(output: str) -> str:
    keep = ("choice ", "deploy:", "  edgeclf run ", "failed:")
    return "\n".join(ln for ln in output.splitlines() if ln.startswith(keep) or "nothing meets" in ln)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/flower_photos"))
    ap.add_argument("--max-latency", type=float, default=1.0, help="the budget judged at the end, ms")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/sweep_flowers")
    ap.add_argument("--project", default=str(REPO / "runs/sweep"))
    ap.add_argument("--name", default="flowers")
    ap.add_argument("--resume", default=None)
    ap.add_argument("--no-arm", action="store_true")
    ap.add_argument("--judge-only", action="store_true",
                    help="judge the recorded sweep again with --max-latency and write OUT.md (no sweep is run)")
    args = ap.parse_args()
    if args.judge_only:
        record = json.loads(args.out.with_suffix(".json").read_text())
        folder = Path(record["sweep_folder"])
        judged = judge(folder, args.max_latency)
        record.update(judged_exit=judged.returncode, judged_output=judged.stdout[-6000:], max_latency=args.max_latency,
                      sweep=json.loads((folder / "sweep.json").read_text()))
        write(record, folder, args.out)
        return 0
    from edgeclf.bench.fingerprint import fingerprint

    arm = not args.no_arm and os.geteuid() == 0
    devices = {k: f"edgeclf-sweep-{k}" for k in CPUS} if arm else {}
    t0 = time.perf_counter()
    for key, name in devices.items():
        sh(["bash", str(REPO / "scripts/arm-device.sh"), "start", "--cpu", CPUS[key], "--name", name])
    start_s = time.perf_counter() - t0
    try:
        if args.resume:
            cmd = ["sweep", "--resume", args.resume]
        else:
            # a feature cache of its own: the cost measured includes computing every candidate's features
            cache = Path(args.project) / f"cache-{args.name}-{time.strftime('%Y%m%d%H%M%S')}"
            cmd = ["sweep", args.data, "--models", "mobilenet_v2,mobilenet_v2_035", "--imgsz", "96,128,160,224",
                   "--project", args.project, "--name", args.name, "--train-args", f"--cache-dir {cache}"]
            for name in devices.values():
                cmd += ["--remote", name]
            if devices:
                cmd += ["--remote-bench-args", REMOTE_ARGS]
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "edgeclf", *cmd], text=True, capture_output=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "200"})
        sweep_s = time.perf_counter() - t
        print(proc.stdout[-6000:], proc.stderr[-3000:], sep="\n", flush=True)
        folder = Path(args.resume) if args.resume else next(
            line.split(": ", 1)[1].strip() for line in proc.stdout.splitlines() if line.startswith("sweep folder: "))
        folder = Path(folder)
        judged = judge(folder, args.max_latency)
    finally:
        for name in devices.values():
            subprocess.run(["bash", str(REPO / "scripts/arm-device.sh"), "stop", "--name", name], capture_output=True)
    sweep = json.loads((folder / "sweep.json").read_text())
    fp = fingerprint()
    machine = (f"{fp.get('cpu')}, {fp.get('usable_cores')} cores, {', '.join(fp.get('features') or [])}, "
               f"{(fp.get('memory_mib') or 0) / 1024:.0f} GiB; {fp.get('os')}; Python {fp.get('python')}; "
               + ", ".join(f"{k} {v}" for k, v in (fp.get("versions") or {}).items()))
    cost = sweep["cost_seconds"]
    totals = {k: sum((c.get(k) or 0) for c in cost.values()) for k in ("caching", "training", "export", "bench",
                                                                        "remote")}
    record = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine, "command": "edgeclf " + " ".join(cmd),
              "sweep_folder": str(folder), "sweep_wall_s": round(sweep_s, 1), "devices_start_s": round(start_s, 1),
              "scan_s": sweep.get("scan_seconds"), "totals_s": totals, "judged_exit": judged.returncode,
              "judged_output": judged.stdout[-6000:], "max_latency": args.max_latency,
              "remote_bench_args": REMOTE_ARGS if devices else None, "sweep": sweep}
    write(record, folder, args.out)
    return 0


def write(record: dict, folder: Path, out: Path) -> None:
    import shutil

    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    totals, sweep_s = record["totals_s"], record["sweep_wall_s"]
    head = ["# The flowers sweep, measured", "",
            f"Measured by `benchmarks/sweep_flowers.py` on {record['created']}: `{record['command']}`, then "
            f"`edgeclf sweep --resume {folder.name} --max-latency {record['max_latency']:g}`.", "",
            f"Machine: {record['machine']}.", "",
            f"Wall time of the sweep: **{sweep_s / 60:.1f} min** on 2 cores (the scan {record['scan_s']} s; "
            f"caching {totals['caching'] / 60:.1f} min, training {totals['training'] / 60:.1f} min, export "
            f"{totals['export'] / 60:.1f} min, bench here {totals['bench'] / 60:.1f} min, bench on the emulated "
            f"boards {totals['remote'] / 60:.1f} min); starting the boards {record['devices_start_s']:.0f} s.", ""]
    if record.get("remote_bench_args"):
        head += [f"Emulated boards (QEMU user mode): {', '.join(CPUS.values())}, benched with "
                 f"`{record['remote_bench_args']}`: their top-1 is the ARM kernels' answer on those images; their "
                 "latency and RAM in the tables are this machine's (an emulator's timing is not a board's).", ""]
    head += [f"The budget judged again on the finished sweep (`--max-latency {record['max_latency']:g}`, exit "
             f"{record['judged_exit']}):", "", "```", choice_lines(record["judged_output"]), "```", "",
             "The sweep's own report follows.", ""]
    for png in folder.glob("sweep-*.png"):  # beside the record, named after it
        shutil.copyfile(png, out.parent / f"{out.name}-{png.stem[len('sweep-'):]}.png")
    md = (folder / "sweep.md").read_text()
    body = md.replace("# edgeclf sweep", "## edgeclf sweep", 1).replace("\n## ", "\n### ")
    text = "\n".join(head) + "\n" + body.replace("](sweep-", f"]({out.name}-")
    old = out.with_suffix(".md").read_text() if out.with_suffix(".md").is_file() else ""
    if "\n## Reading" in old:  # the hand-written reading of an earlier render stays
        text = text.rstrip() + "\n\n## Reading" + old.split("\n## Reading", 1)[1]
    # paths relative to the checkout, the data sets as ../shared/data beside it
    text = re.sub(r"/\S*?/shared/data/", "../shared/data/", text.replace(f"{REPO}/", ""))
    out.with_suffix(".md").write_text(text)
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    raise SystemExit(main())
