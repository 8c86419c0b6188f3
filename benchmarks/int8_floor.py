"""How faithful can post-training int8 ONNX get? Every candidate the search could build for one run, scored on
the selection images (what the search judges) *and* on validation (what export reports), so that one can see
whether a different choice would have kept an image the chosen file loses, and at what cost. Writes
benchmarks/results/int8_floor.md (and .json).

    flock /tmp/edgeclf-cpu.lock python benchmarks/int8_floor.py RUN_DIR [--name NAME] [--render]

``--render`` rewrites the markdown from the recorded .json (the measured figures, not a new run); a section
"Reading" written by hand after the header is kept.

Candidates, all built by edgeclf's own ONNX quantizer (:class:`edgeclf.convert.onnx_quant.Quantizer`):

- every recipe of the ladder's families (three operator formats; MinMax, Percentile, Entropy ranges; 7-bit
  weights; per-tensor weights), and each family's first recipe bias-corrected, without and with GPTQ weight
  rounding (:mod:`edgeclf.convert.rounding`), and the fastest one GPTQ-rounded alone;
- float fallback as the search builds it (NNCF's ranking, 1, 2, 4 ... groups in float) from the uncorrected
  recipe, and each of those candidates bias-corrected as well (the search itself falls back from the
  uncorrected recipe only);
- the bias correction measured on 2x and 4x as many images (random views of the calibration images);
- 16-bit activations (weights still 8-bit): what is left when activations are all but exact.

Validation is looked at here only to describe the candidates; the search never sees it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
SHOWN_CHANGES = 6  # changed validation answers listed per candidate in the markdown (all are in the .json)
sys.path.insert(0, str(ROOT / "benchmarks"))

from quantization import machine  # noqa: E402


def build_context(run: Path, work: Path):
    """The export's context for ``run`` (as ``edgeclf export RUN --int8 --formats onnx-int8`` builds it)."""
    from edgeclf.config import ExportOptions
    from edgeclf.contract import Bundle, InputSpec
    from edgeclf.convert.exporter import ExportContext, _source_info, load_keras
    from edgeclf.convert.source import resolve_source
    from edgeclf.temperature import fold_into_keras

    opts = ExportOptions(target=run, int8=True, formats="onnx-int8", out=work)
    source = resolve_source(run)
    model = load_keras(source.model_path)
    temperature = source.temperature or 1.0
    if temperature != 1.0:
        fold_into_keras(model, temperature)
    bundle = Bundle(classes=list(source.classes), input=InputSpec(height=source.imgsz, width=source.imgsz,
                                                                  resize=source.resize),
                    source=_source_info(source, opts, temperature))
    work.mkdir(parents=True, exist_ok=True)
    return ExportContext(source, opts, bundle, work, model, lambda msg: print("warning:", msg))


def walk(run: Path, work: Path, quick: bool = False) -> dict:
    from edgeclf.convert import biascorr, onnx_export, verify
    from edgeclf.convert.calibration import load_images, random_views
    from edgeclf.convert.formats import FORMATS
    from edgeclf.convert.onnx_quant import INPUT_NAME, Quantizer
    from edgeclf.convert.search import FALLBACK_TIER, Candidate, fallback, kl_divergence

    ctx = build_context(run, work)
    fmt = FORMATS["onnx-int8"]
    h = w = ctx.bundle.input.height
    fp32 = onnx_export.convert_fp32(ctx.keras_model(), h, w, ctx.options.opset)
    q = Quantizer(fp32, ctx.calibration(), work, ctx.options, {layer.name for layer in ctx.keras_model().layers})
    judge = ctx.judge(fmt)
    val = ctx.source.val
    images = load_images(val, h, w, ctx.bundle.input.resize)
    labels = np.array([s.label for s in val])
    ref = judge.run(fp32.SerializeToString(), images)
    ref_pred = ref.argmax(axis=1)
    rows = []

    def score(c: Candidate, group: str):
        t0 = time.perf_counter()
        trial, data = judge.measure(c)
        if data is None and c.recipe not in judge.probs_of:
            print(f"{trial.label}: {trial.outcome} {trial.note}", flush=True)
            return
        p = judge.run(data if data is not None else c.build(), images)
        pred = p.argmax(axis=1)
        row = {"group": group, "label": trial.label, "selection_lost": trial.selection_lost,
               "selection_gained": trial.selection_gained, "selection_kl": trial.selection_kl,
               "p50_ms": trial.p50_ms, "bytes": trial.bytes,
               "val_lost": int(((ref_pred == labels) & (pred != labels)).sum()),
               "val_gained": int(((ref_pred != labels) & (pred == labels)).sum()),
               "val_kl": kl_divergence(ref, p),
               "val_changed": verify.changed_answers(ref, p, labels, ctx.bundle.classes,
                                                     [Path(v.path).name for v in val]),
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(f"{row['label'][:70]:70s} sel {row['selection_lost']}/{row['selection_gained']} KL "
              f"{row['selection_kl']:.4f} | val {row['val_lost']}/{row['val_gained']} KL {row['val_kl']:.4f} "
              f"p50 {row['p50_ms']:.2f} ms", flush=True)

    try:
        families = q.families(judge)
        for fam in families:
            for recipe in fam.recipes:
                judge.place(recipe, fam.tier + 1)
        if quick:  # the fastest recipe only: as left, bias-corrected, GPTQ-rounded, both
            probe = families[0].recipes[0]
            for r, kind in ((probe, "recipe"), (replace(probe, bias_correction=True), "bias-corrected"),
                            (replace(probe, weight_rounding="gptq"), "GPTQ-rounded"),
                            (replace(probe, weight_rounding="gptq", bias_correction=True),
                             "GPTQ-rounded, bias-corrected")):
                score(Candidate(r, lambda r=r: q.quantize(r), tier=0), kind)
            families = []
        for fam in families:
            for recipe in fam.corrected:
                fixed = replace(recipe, bias_correction=True)
                score(Candidate(fixed, lambda r=fixed: q.quantize(r), tier=fam.tier),
                      "GPTQ-rounded, bias-corrected" if recipe.weight_rounding == "gptq" else "bias-corrected")
            for recipe in fam.recipes:
                score(Candidate(recipe, lambda r=recipe: q.quantize(r), tier=fam.tier + 1), "recipe")
        if quick:
            return _result(run, val, ref_pred, labels, judge, rows)
        probe = families[0].recipes[0]
        rounded = replace(probe, weight_rounding="gptq")
        score(Candidate(rounded, lambda: q.quantize(rounded), tier=2), "GPTQ-rounded")
        fixed = replace(probe, bias_correction=True)
        for k in (2, 4):  # the correction measured on more images: the calibration images and views of them
            more = np.concatenate([q.calibration.images, random_views(q.calibration.images, k - 1, seed=7)])
            r = replace(fixed, calibration_images=len(more))
            score(Candidate(r, lambda m=more: biascorr.onnx(q.quantize(probe), q.model, m, INPUT_NAME, None),
                            tier=2), f"bias correction on {k}x the images")
        base = probe

        def recipe_for(chosen):
            return replace(base, float_layers=tuple(dict.fromkeys(q.layer_label(n) for g in chosen for n in g)))

        for c in fallback(judge, base, q.groups(base), lambda nodes: q.quantize(base, nodes), recipe_for):
            c.tier += FALLBACK_TIER
            score(c, "float fallback")
            fixed_c = replace(c.recipe, bias_correction=True)
            score(Candidate(fixed_c, lambda b=c.build: biascorr.onnx(b(), q.model, q.calibration.images,
                                                                     INPUT_NAME, None), tier=c.tier),
                  "float fallback, bias-corrected")
        wide = q.wide_recipe()
        score(Candidate(wide, lambda: q.quantize(wide), tier=1000), "16-bit activations")
    finally:
        q.close()
    return _result(run, val, ref_pred, labels, judge, rows)


def _result(run, val, ref_pred, labels, judge, rows) -> dict:
    return {"run": str(run), "val_images": len(val), "float_val_top1": float((ref_pred == labels).mean()),
            "selection_images": judge.judged, "rows": rows}


def markdown(record: dict) -> str:
    """The whole record: a header, then one section per run (a hand-written Reading is kept by ``main``)."""
    mach = record["machine"]
    lines = ["# How faithful can post-training int8 ONNX get?", "",
             f"Measured by `benchmarks/int8_floor.py` (one command per run, below), last on {record['date']}.",
             f"Machine: {mach['cpu']}, {mach['cores']} cores, ISA {', '.join(mach['isa'])}; onnxruntime "
             f"{mach['versions']['onnxruntime']}. Latencies: the search's own timing (batch 1, p50), noisy on this "
             "shared machine: read them as rough ratios.", "",
             "KL: mean KL divergence of a candidate's scores from float's. Changed: each validation answer the "
             "candidate changed, with the float model's margin rank (0 %: the image it is least sure of) and its "
             "top two scores.", ""]
    for name, result in record["runs"].items():
        lines += [f"## {name}", "",
                  f"`python benchmarks/int8_floor.py {result['run']} --name {name}"
                  f"{' --quick' if result.get('quick') else ''}`: "
                  + ("the fastest recipe as ONNX Runtime leaves it, bias-corrected, GPTQ-rounded and both"
                     if result.get("quick") else "every ONNX int8 candidate edgeclf can build for this run")
                  + f", scored on the {result['selection_images']} selection images (what the search judges) and "
                  f"on the {result['val_images']} validation images (float top-1 "
                  f"{100 * result['float_val_top1']:.2f} %).", "",
                  "| candidate | kind | sel. lost / gained | sel. KL | val lost / gained | val KL | p50 | "
                  "changed on validation |", "|---|---|---|---|---|---|---|---|"]
        for r in result["rows"]:
            shown = r["val_changed"][:SHOWN_CHANGES]
            changed = ", ".join(f"{'lost' if c.get('lost') else 'gained' if c.get('gained') else 'changed'} "
                                f"{100 * c['margin_rank']:.1f}% "
                                f"({c['float_scores'][0]:.2f}/{c['float_scores'][1]:.2f})" for c in shown)
            if len(r["val_changed"]) > len(shown):
                changed += f" and {len(r['val_changed']) - len(shown)} more"
            lines.append(f"| {r['label']} | {r['group']} | {r['selection_lost']} / {r['selection_gained']} | "
                         f"{r['selection_kl']:.4f} | {r['val_lost']} / {r['val_gained']} | {r['val_kl']:.4f} | "
                         f"{r['p50_ms']:.2f} ms | {changed or '-'} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, nargs="?")
    ap.add_argument("--name", default=None)
    ap.add_argument("--quick", action="store_true",
                    help="only the fastest recipe: as left, bias-corrected, GPTQ-rounded, both")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgeclf-int8-floor"))
    ap.add_argument("--out", type=Path, default=OUT / "int8_floor.md")
    ap.add_argument("--render", action="store_true", help="rewrite the markdown from the .json only")
    args = ap.parse_args()
    record_path = args.out.with_suffix(".json")
    record = json.loads(record_path.read_text()) if record_path.exists() else {"runs": {}}
    if not args.render:
        if args.run is None:
            ap.error("RUN is needed unless --render")
        name = args.name or args.run.name
        result = walk(args.run, args.work / name, args.quick)
        result["quick"] = args.quick
        record.update(machine=machine(), date=time.strftime("%Y-%m-%d"))
        record["runs"][name] = result
        record_path.write_text(json.dumps(record, indent=1) + "\n")
    text = markdown(record)
    if args.out.exists() and "\n## Reading" in args.out.read_text():
        old = args.out.read_text()
        reading = old[old.index("\n## Reading"):]
        for stop in ("\n## ", "\n| candidate"):  # the Reading ends where a run's section or a table begins
            if stop in reading[1:]:
                reading = reading[:reading.index(stop, 1)]
        head, rest = text.split("\n## ", 1)
        text = head.rstrip("\n") + "\n" + reading.rstrip("\n") + "\n\n## " + rest
    args.out.write_text(text)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
