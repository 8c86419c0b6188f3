"""The int8 accuracy budget, measured: for each run, `edgeclf export --int8` with the search (default) and
with `--search none` (the single recipe of earlier versions), one `edgeclf bench` over both exports and a
uint8-vs-int8-input export, on the same machine, in one run. Writes benchmarks/results/quantization.md
(and .json).

    flock /tmp/edgeclf-cpu.lock python benchmarks/quantization.py RUN_DIR [RUN_DIR ...] [--work DIR]

Each RUN_DIR is an `edgeclf train` run (e.g. the main job's flowers run, hymenoptera MobileNetV2 224 and
MobileNetV2 0.35 at 96 px). Every step is the CLI a user runs, in a process of its own.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgeclf.contract import Recipe

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"


SELECTION_FROM = {"holdout": "held out of training", "views": "random views of training images"}


def edgeclf(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgeclf", *args], capture_output=True, text=True)
    return proc, time.perf_counter() - t


def machine() -> dict:
    cpu = platform.processor()
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "amx_int8") if f" {f}" in flags]
    from importlib.metadata import version

    return {"cpu": cpu or platform.machine(), "cores": os.cpu_count(), "isa": isa, "python": platform.python_version(),
            "versions": {p: version(p) for p in ("tensorflow", "ai-edge-litert", "onnxruntime", "onnx")}}


def bench_rows(bench_dir: Path) -> list[dict]:
    return json.loads((bench_dir / "bench.json").read_text())["rows"]


def shown(path: Path) -> str:
    """``path`` as the record shows it: relative to the checkout (no absolute path of this machine)."""
    return os.path.relpath(path, ROOT)


def qat_run(run: Path, work: Path) -> dict:
    """`--qat` for a model the post-training ladder cannot bring within budget: both int8 models (the ONNX one
    is the QAT TFLite model carried over), benched beside their fp32 models."""
    out = work / run.name / "qat"
    shutil.rmtree(out, ignore_errors=True)
    proc, seconds = edgeclf("export", str(run), "--int8", "--qat", "--formats",
                            "tflite-fp32,tflite-int8,onnx-fp32,onnx-int8", "--out", str(out))
    print(f"{run.name}: export --qat exit {proc.returncode} in {seconds:.0f} s", flush=True)
    if proc.returncode not in (0, 3):
        raise SystemExit(proc.stdout + proc.stderr)
    bundle = json.loads((out / "edgeclf.json").read_text())
    data = json.loads((run / "split.json").read_text())["root"]
    bproc, _ = edgeclf("bench", str(out), "--data", data, "--out", str(out.parent / "qat-bench"), "--runs", "200",
                       "--warmup", "20", "--log", "")
    if bproc.returncode != 0:
        raise SystemExit(bproc.stdout + bproc.stderr)
    rows = bench_rows(out.parent / "qat-bench")
    p50 = {r["format"]: r["p50_ms"] for r in rows if r["backend"] in ("litert", "onnxruntime")}
    models = []
    for art in bundle["artifacts"]:
        if art["precision"] != "int8":
            continue
        fmt = f"{art['format']}-int8"
        models.append({"format": fmt, "recipe": art["recipe"], "val_top1": art["val_top1"],
                       "drop_pt": art["extra"]["drop_pt"], "agreement": art["extra"]["agreement"],
                       "p50_ms": p50.get(fmt), "fp32_p50_ms": p50.get(f"{art['format']}-fp32")})
    return {"name": run.name, "seconds": round(seconds, 1), "models": models,
            "reference_top1": bundle["source"]["reference"]["val_top1"]}


def changed_answers(export: Path, data: str) -> dict:
    """For each int8 file of ``export``: the validation images whose top-1 differs from the fp32 TFLite model's,
    with the float model's margin there (log of its top score over its runner-up) and that margin's rank among
    all validation images (0: the least certain), and how many of the int8 file's answers are exact ties."""
    import numpy as np

    from edgeclf.imageio import load_resized
    from edgeclf.runtime.backends import open_backend

    split = json.loads((export / "val_split.json").read_text())
    size = json.loads((export / "edgeclf.json").read_text())["input"]["height"]
    files, labels = split["files"], np.array(split["labels"])
    images = np.stack([load_resized(Path(data) / f, size, size) for f in files])

    def scores(artifact: str) -> np.ndarray:
        backend = open_backend(export, artifact=artifact)
        try:
            return np.concatenate([backend.predict(images[i:i + 32]) for i in range(0, len(images), 32)])
        finally:
            backend.close()

    ref = scores("tflite-fp32").astype(np.float64)
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = np.log(np.clip(top2[:, 1], 1e-9, 1)) - np.log(np.clip(top2[:, 0], 1e-9, 1))
    rank = margin.argsort().argsort() / max(1, len(margin) - 1)
    out = {}
    for artifact in ("tflite-int8", "onnx-int8"):
        q = scores(artifact)
        qs = np.sort(q, axis=1)
        changed = np.flatnonzero(q.argmax(1) != ref.argmax(1))
        out[artifact] = {
            "images": len(files), "ties": int((qs[:, -1] == qs[:, -2]).sum()),
            "changed": [{"file": files[i], "label": int(labels[i]), "float_top": float(top2[i, 1]),
                         "float_margin": round(float(margin[i]), 4), "margin_rank": round(float(rank[i]), 4),
                         "lost": bool(ref[i].argmax() == labels[i]), "gained": bool(q[i].argmax() == labels[i]),
                         "tie": bool(qs[i, -1] == qs[i, -2])} for i in changed]}
    return out


def one_run(run: Path, work: Path) -> dict:
    name = run.name
    w = work / name
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(parents=True)
    result: dict = {"run": shown(run), "name": name}
    report = json.loads((run / "report.json").read_text())
    data = json.loads((run / "split.json").read_text())["root"]
    result["keras_val_top1"] = report["top1"]
    for tag, extra in (("none", ["--search", "none"]), ("search", []), ("io_int8", ["--formats", "tflite-int8",
                                                                                     "--io", "int8"])):
        proc, seconds = edgeclf("export", str(run), "--int8", "--out", str(w / tag), *extra)
        result[f"export_{tag}"] = {"seconds": round(seconds, 1), "exit": proc.returncode,
                                   "stdout": proc.stdout[-20000:], "stderr": proc.stderr[-4000:]}
        print(f"{name}: export {tag} exit {proc.returncode} in {seconds:.0f} s", flush=True)
        if proc.returncode not in (0, 3):
            raise SystemExit(proc.stdout + proc.stderr)
        result[f"bundle_{tag}"] = json.loads((w / tag / "edgeclf.json").read_text())
    proc, seconds = edgeclf("bench", str(w / "search"), str(w / "none"), str(w / "io_int8"), "--data", data,
                            "--out", str(w / "bench"), "--runs", "200", "--warmup", "20", "--log", "")
    print(f"{name}: bench exit {proc.returncode} in {seconds:.0f} s", flush=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stdout + proc.stderr)
    result["bench"] = bench_rows(w / "bench")
    result["bench_seconds"] = round(seconds, 1)
    result["changed"] = changed_answers(w / "search", data)
    return result


def _row(rows: list[dict], export_dir: str, fmt: str, backend: str) -> dict | None:
    return next((r for r in rows if r["export_dir"].endswith(export_dir) and r["format"] == fmt
                 and r["backend"] == backend), None)


def _p(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "-"


def markdown(results: list[dict], mach: dict, command: str, qat: list[dict] = ()) -> str:
    lines = [
        "# The int8 accuracy budget, measured",
        "",
        f"Measured by `benchmarks/quantization.py` on {time.strftime('%Y-%m-%d')} (`{command}`).",
        f"Machine: {mach['cpu']}, {mach['cores']} cores, ISA {', '.join(mach['isa']) or '-'}; Python "
        f"{mach['python']}; " + ", ".join(f"{k} {v}" for k, v in mach["versions"].items()) + ".",
        "Latencies: `edgeclf bench`, batch 1, all cores, p50 of 200 runs after 20 warm-up, every model of a run "
        "measured in the same bench (this machine is shared: read ratios within a run, not absolute times).",
        "",
        "Budget: `--max-drop 0.5` (the default): each int8 model within 0.5 pt of top-1 of the fp32 model. The search "
        "judges candidates on selection images: random views of up to 300 training images that are not calibration "
        "images, two of each, more (up to six) for a small training split so that about 600 are judged (runs "
        "trained with `--holdout`: the images held out); the validation column is what "
        "export then verifies, on images the search never saw.",
        "",
    ]
    for r in results:
        rows = r["bench"]
        sel = next((a["extra"] for a in r["bundle_search"]["artifacts"] if "selection_images" in a["extra"]), {})
        lines += [f"## {r['name']} ({r['bundle_search']['source'].get('backbone')} "
                  f"{r['bundle_search']['input']['height']} px), Keras val top-1 {r['keras_val_top1']:.2%}", "",
                  f"Selection: {sel.get('selection_images', '-')} images judged "
                  f"({SELECTION_FROM.get(sel.get('selection_from'), 'training images')}"
                  f"{', ' + str(sel['selection_unstable']) + ' unstable left out' if sel.get('selection_unstable') else ''}).",
                  ""]
        lines += ["| artifact | recipe chosen | selection drop | val drop | val lost / gained, McNemar p | val top-1 | p50 "
                  "| vs fp32 p50 | size |",
                  "|---|---|---|---|---|---|---|---|---|"]
        by = {a["file"]: a for a in r["bundle_search"]["artifacts"]}
        for fmt, backend, fp32 in (("tflite-int8", "litert", "tflite-fp32"), ("onnx-int8", "onnxruntime", "onnx-fp32")):
            a = next((x for x in by.values() if f"{x['format']}-{x['precision']}" == fmt), None)
            q, f = _row(rows, "search", fmt, backend), _row(rows, "search", fp32, backend)
            if a is None or q is None or f is None:
                continue
            chosen = next((t for t in a["search"] if t["outcome"] in ("chosen",) or t["outcome"].startswith("kept")), {})
            lines.append(f"| {fmt} | {chosen.get('label', '-')} ({chosen.get('outcome', '-')}) | "
                         f"{chosen.get('selection_drop_pt', 0):+.2f} | {a['extra']['drop_pt']:+.2f} | "
                         f"{a['extra'].get('val_lost', '-')} / {a['extra'].get('val_gained', '-')}, "
                         f"{_p(a['extra'].get('mcnemar_p'))} | "
                         f"{a['val_top1']:.2%} | {q['p50_ms']:.2f} ms | {q['p50_ms'] / f['p50_ms']:.2f}x "
                         f"({f['p50_ms']:.2f} ms) | {a['bytes'] / 1e6:.2f} MB |")
        for fmt, c in r.get("changed", {}).items():
            ch = c["changed"]
            if not ch:
                lines += ["", f"{fmt}: no validation answer changed."]
                continue
            ranks = ", ".join(f"{x['margin_rank']:.1%}" + (" lost" if x["lost"] else " gained" if x["gained"] else "")
                              + (" (a tie)" if x["tie"] else "") for x in sorted(ch, key=lambda x: x["margin_rank"]))
            lines += ["", f"{fmt}: {len(ch)} of {c['images']} validation answers changed; where the float model is "
                          f"that uncertain (its margin's rank among the validation images, 0 % the least certain): "
                          f"{ranks}. Exact ties between the int8 file's two top scores: {c['ties']}."]
        none = {f"{x['format']}-{x['precision']}": x for x in r["bundle_none"]["artifacts"]}
        lines += ["", "`--search none` (the earlier single recipe) on the same run, for comparison:", "",
                  "| artifact | recipe | val drop | p50 |", "|---|---|---|---|"]
        for fmt, backend in (("tflite-int8", "litert"), ("onnx-int8", "onnxruntime")):
            a, q = none.get(fmt), _row(rows, "none", fmt, backend)
            if a and q:
                label = (a.get("recipe") or {}).get("quant_format") or "converter"
                lines.append(f"| {fmt} | {label} | {a['extra']['drop_pt']:+.2f} | {q['p50_ms']:.2f} ms |")
        t_none, t_search = r["export_none"]["seconds"], r["export_search"]["seconds"]
        lines += ["", f"Export time: {t_search:.0f} s with the search, {t_none:.0f} s with `--search none` "
                      f"({t_search / t_none:.2f}x).", ""]
        u8 = _row(rows, "search", "tflite-int8", "litert")
        i8 = _row(rows, "io_int8", "tflite-int8", "litert")
        io_art = next(x for x in r["bundle_io_int8"]["artifacts"] if x["precision"] == "int8")
        if u8 and i8:
            lines += [f"uint8 input (default, camera pixels as they are) vs int8 input: val top-1 "
                      f"{by['model_int8.tflite']['val_top1']:.2%} vs {io_art['val_top1']:.2%}, p50 {u8['p50_ms']:.2f} "
                      f"vs {i8['p50_ms']:.2f} ms.", ""]
        for fmt in ("tflite-int8", "onnx-int8"):
            a = next((x for x in by.values() if f"{x['format']}-{x['precision']}" == fmt), None)
            if not a:
                continue
            lines += [f"Search trace, {fmt} ({len(a['search'])} candidates):", "",
                      "| candidate | selection drop | lost / gained | agreement | p50 here | size | time | outcome |",
                      "|---|---|---|---|---|---|---|---|"]
            for t in a["search"]:
                drop = f"{t['selection_drop_pt']:+.2f}" if t["selection_drop_pt"] is not None else "-"
                agree = f"{t['selection_agreement']:.1%}" if t["selection_agreement"] is not None else "-"
                p50 = f"{t['p50_ms']:.2f} ms" if t["p50_ms"] is not None else "-"
                lg = (f"{t['selection_lost']} / {t['selection_gained']}" if t.get("selection_lost") is not None
                      else "-")
                outcome = t["outcome"] + (f" ({t['note']})" if t.get("note") else "")
                lines.append(f"| {t['label']} | {drop} | {lg} | {agree} | {p50} | {t['bytes'] / 1e6:.2f} MB | "
                             f"{t['seconds']:.0f} s | {outcome} |")
            lines.append("")
            q, f = _row(rows, "search", fmt, "litert" if fmt.startswith("tflite") else "onnxruntime"), \
                _row(rows, "search", fmt.replace("int8", "fp32"), "litert" if fmt.startswith("tflite") else "onnxruntime")
            if q and f and q["p50_ms"] >= f["p50_ms"]:
                tried = sorted({t["label"].split(" minmax")[0] if fmt.startswith("onnx") else t["label"]
                                for t in a["search"]})
                lines += [f"{fmt} is not faster than fp32 here ({q['p50_ms']:.2f} against {f['p50_ms']:.2f} ms): "
                          f"the whole network takes well under a millisecond, and what was tried was "
                          f"{'; '.join(tried)} (the search timed each on this machine"
                          f"{'; LiteRT has one int8 kernel path here, XNNPACK' if fmt.startswith('tflite') else ''}).",
                          ""]
    if qat:
        lines += ["## `--qat` where post-training int8 is over budget", "",
                  "Quantization-aware fine-tuning (tensorflow-model-optimization under tf_keras, 2 epochs) on the same "
                  "run: the int8 TFLite model, and the same model carried over to ONNX (QDQ, uint8 activations; the "
                  "first candidate of the ONNX search), verified on validation the same way and benched beside "
                  "the fp32 models:", "",
                  "| run | artifact | recipe | val top-1 (fp32) | int8 val top-1 | drop | agreement | p50 | vs fp32 p50 "
                  "| export time |", "|---|---|---|---|---|---|---|---|---|---|"]
        for q in qat:
            for m in q["models"]:
                ratio = (f"{m['p50_ms'] / m['fp32_p50_ms']:.2f}x ({m['fp32_p50_ms']:.2f} ms)"
                         if m["p50_ms"] and m["fp32_p50_ms"] else "-")
                p50 = f"{m['p50_ms']:.2f} ms" if m["p50_ms"] else "-"
                lines.append(f"| {q['name']} | {m['format']} | {Recipe.from_dict(m['recipe']).label()} | "
                             f"{q['reference_top1']:.2%} | {m['val_top1']:.2%} | {m['drop_pt']:+.2f} | "
                             f"{m['agreement']:.2%} | {p50} | {ratio} | {q['seconds']:.0f} s |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeclf-quantization"))
    ap.add_argument("--out", type=Path, default=OUT / "quantization.md")
    ap.add_argument("--qat", nargs="*", type=Path, default=[], help="runs to export with --qat as well")
    ap.add_argument("--render", type=Path, default=None,
                    help="write the markdown again from a JSON record this script wrote (no measuring)")
    a = ap.parse_args()
    if a.render is not None:
        rec = json.loads(a.render.read_text())
        command = "python benchmarks/quantization.py " + " ".join(shown(r) for r in a.runs)
        a.out.write_text(markdown(rec["results"], rec["machine"], command, rec["qat"]))
        print(f"wrote {a.out}")
        return
    results = [one_run(run.resolve(), a.work) for run in a.runs]
    qat = [qat_run(run.resolve(), a.work) for run in a.qat]
    mach = machine()
    command = "python benchmarks/quantization.py " + " ".join(shown(r) for r in a.runs) + (
        " --qat " + " ".join(shown(r) for r in a.qat) if a.qat else "")
    a.out.write_text(markdown(results, mach, command, qat))
    slim = [{k: v for k, v in r.items() if not k.startswith("export_")} | {
        k: {kk: vv for kk, vv in v.items() if kk in ("seconds", "exit")} for k, v in r.items() if k.startswith("export_")}
        for r in results]
    text = json.dumps({"machine": mach, "results": slim, "qat": qat}, indent=1)
    # the bundles name their files by absolute path: recorded relative to the checkout's parent instead
    a.out.with_suffix(".json").write_text(text.replace(json.dumps(str(ROOT.parent) + os.sep)[1:-1], "../"))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
