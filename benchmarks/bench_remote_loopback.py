"""`edgeclf bench --remote` against this machine over real SSH: the remote path must measure what the local
path measures (same models, same images, same runtime versions: the same accuracy to the image, the
same latency within this machine's noise).

1. `edgeclf train` MobileNetV2 1.0 at 224 px on hymenoptera (5 epochs, head only, cached features) and
   `edgeclf export --int8` (every format), in --work (reused with --reuse);
2. a real OpenSSH server on 127.0.0.1 and a "device" venv with only `edgeclf[runtime]` (no TensorFlow),
   the runtimes pinned to this environment's versions (tests/ssh_helpers.py, as the tests do);
3. `edgeclf bench EXPORT --data DATA --remote USER@127.0.0.1:PORT --remote-python DEVICE_PYTHON`
   (100 runs after 10 warm-up, every core), local rows first, then the device's, for several rounds:
   this machine is shared and noisy, so one round's local and device latencies differ by more than their
   confidence intervals whenever the load changes between them; the medians over rounds say whether the
   remote path itself costs anything.

    flock /tmp/edgeclf-cpu.lock python benchmarks/bench_remote_loopback.py [--rounds 5] [--work DIR] [--reuse]

Writes benchmarks/results/remote_loopback.md and remote_loopback.json (the bench.json, this machine's
paths replaced by placeholders).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import ssh_helpers  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SHARED = Path(os.environ.get("EDGECLF_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data" / "hymenoptera_data"
EDGECLF = str(Path(sys.executable).parent / "edgeclf")
TRAIN = ["--model", "mobilenet_v2", "--imgsz", "224", "--epochs", "5", "--fine-tune-epochs", "0"]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def scrub(text: str, replacements: dict[str, str]) -> str:
    for old, new in sorted(replacements.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(old, new)
    return text


def median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def compare(benches: list[dict]) -> tuple[list[str], dict]:
    """Local against device, row by row, over rounds: accuracy fields equal? p50 and cold start medians."""
    devices = benches[0]["settings"]["devices"]
    local, device = devices[0], devices[1]
    by: dict[tuple, dict[str, list]] = {}
    for bench in benches:
        for r in bench["rows"]:
            by.setdefault((r["format"], r["backend"], r["threads"]), {}).setdefault(r["device"], []).append(r)
    lines = ["| format | backend | top-1 here | top-1 device | identical accuracy figures, every round | "
             "p50 here ms: median (min–max over rounds) | p50 device ms: median (min–max) | device / here: "
             "median of rounds | cold start here / device ms (medians) |",
             "|---|---|---|---|---|---|---|---|---|"]
    same, ratios = 0, []
    for (fmt, backend, _), pair in by.items():
        a, b = pair[local], pair[device]
        equal = all(x[k] == y[k] for x, y in zip(a, b)
                    for k in ("top1", "macro_f1", "agreement", "per_class", "mcnemar_p"))
        same += equal
        here, there = [x["p50_ms"] for x in a], [y["p50_ms"] for y in b]
        ratio = median([y / x for x, y in zip(here, there)])
        ratios.append(ratio)
        lines.append(f"| {fmt} | {backend} | {a[0]['top1']:.2%} | {b[0]['top1']:.2%} | {'yes' if equal else '**no**'} | "
                     f"{median(here):.2f} ({min(here):.2f}–{max(here):.2f}) | "
                     f"{median(there):.2f} ({min(there):.2f}–{max(there):.2f}) | {ratio:.2f} | "
                     f"{median([x['cold_start_ms'] for x in a]):.0f} / {median([y['cold_start_ms'] for y in b]):.0f} |")
    summary = {"rounds": len(benches), "rows": len(by), "identical_accuracy": same,
               "p50_ratio_median": median(ratios), "p50_ratio_min": min(ratios), "p50_ratio_max": max(ratios)}
    return lines, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgeclf-remote-loopback")
    ap.add_argument("--reuse", action="store_true", help="keep a trained run and export found in --work")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    t0 = time.perf_counter()
    export = a.work / "run" / "export"
    if not (a.reuse and (export / "edgeclf.json").is_file()):
        shutil.rmtree(a.work, ignore_errors=True)
        a.work.mkdir(parents=True)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        run([EDGECLF, "train", str(DATA), *TRAIN, "--project", str(a.work), "--name", "run"], env=env)
        run([EDGECLF, "export", str(a.work / "run"), "--int8"], env=env)
    sshd = ssh_helpers.start_sshd(a.work / "sshd")
    try:
        python = ssh_helpers.remote_venv(a.work)
        outs, seconds = [], []
        for k in range(a.rounds):
            out = a.work / f"bench{k + 1}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [EDGECLF, "bench", str(export), "--data", str(DATA), "--out", str(out), "--runs", str(a.runs),
                   "--log", "", "--remote", sshd.remote, "--remote-python", str(python),
                   "--ssh-config", str(sshd.config)]
            t = time.perf_counter()
            proc = run(cmd, env={**os.environ, "COLUMNS": "200"})
            seconds.append(time.perf_counter() - t)
            outs.append(out)
    finally:
        sshd.stop()
    print(proc.stdout)
    out = outs[0]
    device_name = f"{sshd.user}@127.0.0.1:PORT"
    replacements = {str(a.work): "WORK", str(DATA): "hymenoptera_data", str(python): "DEVICE_VENV/bin/python",
                    str(sshd.config): "SSH_CONFIG", str(Path(tempfile.gettempdir())): "TMP",
                    sshd.remote: device_name, "(bench.png)": "(remote_loopback.png)"}
    benches = [json.loads(scrub((o / "bench.json").read_text(), replacements)) for o in outs]
    bench = benches[0]
    lines, summary = compare(benches)
    device = bench["devices"][device_name]
    md = [
        "# `edgeclf bench --remote` on loopback: the remote path against the local one", "",
        f"Measured by `benchmarks/bench_remote_loopback.py` on {bench['settings']['created']} "
        f"({time.perf_counter() - t0:.0f} s in all; {a.rounds} rounds of the bench, "
        f"{median(seconds):.0f} s each).", "",
        f"Command: `edgeclf bench WORK/run/export --data hymenoptera_data --runs {a.runs} --remote "
        f"{device_name} --remote-python DEVICE_VENV/bin/python --ssh-config SSH_CONFIG`", "",
        "The \"device\" is this machine reached through a real OpenSSH server on 127.0.0.1, its Python a venv "
        "with only `edgeclf[runtime]` (no TensorFlow), the runtimes pinned to the versions of the local "
        "environment. The model: MobileNetV2 1.0 at 224 px trained by `edgeclf train` on hymenoptera "
        f"(`{' '.join(TRAIN)}`) and `edgeclf export --int8`; {bench['exports'][0]['val_images']} validation "
        f"images, decoded here and sent ({device['bytes_sent'] / 1e6:.1f} MB with the models); the device's "
        f"temporary folder was {'removed' if device['workdir_removed'] else '**not removed**'}.", "",
        f"**Result**: {summary['identical_accuracy']} of {summary['rows']} artifact/backend rows have identical "
        f"accuracy figures on both sides in every round (top-1, macro-F1, agreement, per-class table, McNemar p). "
        f"Latency: per row, the median over {a.rounds} rounds of (device p50 / local p50) lies between "
        f"{summary['p50_ratio_min']:.2f} and {summary['p50_ratio_max']:.2f} (median over rows "
        f"{summary['p50_ratio_median']:.2f}): the same machine, measured one side after the other on 2 cores "
        "that other jobs share (within one round the two sides' confidence intervals may not overlap when the "
        "load changes between them; the spread over rounds shows how much that is).", "",
    ] + lines + ["", "## The bench's own report (round 1)", ""]
    report_md = scrub((out / "bench.md").read_text(), replacements)
    md += [report_md.split("\n", 1)[1].lstrip()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "remote_loopback.md").write_text("\n".join(md))
    bench["comparison"] = summary
    bench["rounds_p50_ms"] = [{f"{r['device']} {r['format']} {r['backend']}": r["p50_ms"] for r in b["rows"]}
                              for b in benches]
    (RESULTS / "remote_loopback.json").write_text(json.dumps(bench, indent=2) + "\n")
    if (out / "bench.png").is_file():
        shutil.copy(out / "bench.png", RESULTS / "remote_loopback.png")
    print(f"wrote {RESULTS / 'remote_loopback.md'}: {summary}")


if __name__ == "__main__":
    main()
