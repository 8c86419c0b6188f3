"""The run page's sections, each read from files alone (the run folder, export folders, bench folders), so
``edgeclf report RUN`` rebuilds the same page anywhere those files are. Each returns (id, title, body HTML)."""
from __future__ import annotations

from pathlib import Path

from edgeclf import fsutil, rundir
from edgeclf.page import thumbs
from edgeclf.page.html import esc, figure, image, paragraph, table

MAX_THUMBS = 120  # per gallery: the page stays light on a big data set (about 4 KB a thumbnail)


def training(run_dir: Path, rep: dict | None) -> tuple[str, str, str]:
    body = []
    if rep:
        extra = f", top-5 {rep['top5']:.2%}" if "top5" in rep else ""
        body.append(paragraph(
            f"{rep.get('model')} at {rep.get('imgsz')} px: validation top-1 {rep['top1']:.2%}{extra}, macro-F1 "
            f"{rep['macro_f1']:.3f} on {rep['images']} images (best epoch {rep.get('best_epoch')} of "
            f"{rep.get('epochs_run')}, {rep.get('train_seconds', 0):.0f} s of training on {rep.get('train_images')} "
            f"images)."))
        cal = rep.get("calibration") or {}
        if cal.get("fitted_on"):
            body.append(paragraph(
                f"Scores calibrated: temperature {cal['temperature']:.3g} fitted on the {cal.get('images')} "
                f"validation images; expected calibration error {cal['ece_before']:.3f} before, "
                f"{cal['ece_after']:.3f} after (cross-fitted). Every exported file carries it."))
        elif cal.get("note"):
            body.append(paragraph(f"Scores not calibrated ({cal['note']}).", "muted"))
    else:
        body.append(paragraph("training has not finished: no report.json yet", "muted"))
    body.append(image(thumbs.png(run_dir / "results.png"), "loss, accuracy and learning rate per epoch"))
    return "training", "Training", "".join(body)


def per_class(run_dir: Path, rep: dict | None) -> tuple[str, str, str]:
    if not rep:
        return "per-class", "Per class", paragraph("no report.json yet", "muted")
    cells = [[c, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", m["support"]]
             for c, m in rep["per_class"].items()]
    body = table(["class", "precision", "recall", "F1", "support"], cells, "per-class")
    body += image(thumbs.png(run_dir / "confusion_matrix.png"), "confusion matrix")
    body += image(thumbs.png(run_dir / "confusion_matrix_normalized.png"), "confusion matrix, normalised")
    return "per-class", "Per class and confusion matrix", body


def data(run_dir: Path) -> tuple[str, str, str]:
    d = fsutil.read_json_dict(run_dir / rundir.DATA_REPORT)
    if not d:
        return "data", "Data", paragraph("no data_report.json", "muted")
    splits = list(d.get("counts", {}))
    classes = d.get("classes", [])
    cells = [[c, *[d["counts"][s].get(c, 0) for s in splits]] for c in classes]
    body = [paragraph(f"{d.get('total', 0)} files used from {d.get('root')} ({d.get('layout')} layout)."),
            table(["class", *splits], cells, "counts")]
    skipped = d.get("skipped") or []
    body.append(f"<h3>Files left out ({len(skipped)})</h3>")
    if skipped:
        body.append(table(["file", "why"], [[s.get("file"), s.get("reason")] for s in skipped], "skipped", (1,)))
    for key, title in (("label_conflicts", "Identical files under different classes (label conflicts)"),
                       ("split_leaks", "Identical files in two splits (leaks)"),
                       ("duplicates", "Identical files within a class")):
        groups = d.get(key) or []
        body.append(f"<h3>{esc(title)} ({len(groups)})</h3>")
        if groups:
            body.append(table(["files"], [[" = ".join(g)] for g in groups], key.replace("_", "-"), (0,)))
    return "data", "Data", "".join(body)


def mistakes(run_dir: Path, rep: dict | None, root: Path | None) -> tuple[str, str, str]:
    """The validation images the model gets wrong, most confident first, grouped by true class."""
    rows = rundir.read_predictions(run_dir)
    if not rows:
        return "mistakes", "Mistakes", paragraph("no val_predictions.csv in this run (trained by an older edgeclf)",
                                                 "muted")
    wrong = sorted((r for r in rows if r["true"] != r["predicted"]), key=lambda r: -r["score"])
    shown = wrong[:MAX_THUMBS]
    body = [paragraph(f"{len(wrong)} of {len(rows)} validation images are answered wrong"
                      + (f"; the {len(shown)} most confident are shown" if len(shown) < len(wrong) else "")
                      + ". The most confident mistakes come first: a photo the model is sure of and still gets "
                        "wrong is often mislabelled. The full list is val_predictions.csv.")]
    cache: dict = {}
    classes = list(rep["per_class"]) if rep else sorted({r["true"] for r in rows})
    for c in classes:
        mine = [r for r in shown if r["true"] == c]
        if not mine:
            continue
        body.append(f'<h3>true class {esc(c)}: {len(mine)} wrong</h3><div class="gallery">')
        for r in mine:
            uri = thumbs.photo(root / r["file"], cache) if root else None
            caption = (f'<b>{esc(r["file"])}</b><br>true {esc(r["true"])} ({r["true_score"]:.2f})<br>'
                       f'<span class="bad">predicted {esc(r["predicted"])} {r["score"]:.2f}</span>')
            body.append(figure(uri, caption, {"file": r["file"], "true": r["true"], "pred": r["predicted"],
                                              "score": f'{r["score"]:.4f}'}, "mistake"))
        body.append("</div>")
    return "mistakes", "Mistakes", "".join(body)


def _recipe(a: dict) -> str:
    chosen = [s for s in a.get("search") or [] if s.get("outcome") == "chosen"]
    if chosen:
        return chosen[0].get("label", "")
    from edgeclf.contract import Recipe

    recipe = Recipe.from_dict(a.get("recipe"))
    return recipe.label() if recipe else "-"


def _pct(x) -> str:
    return f"{x:.2%}" if isinstance(x, (int, float)) else "-"


def _gain(drop) -> str:
    """A drop in points shown as the change (+ is a gain); 0 is +0.00."""
    return f"{0.0 - drop:+.2f}" if isinstance(drop, (int, float)) else "-"


def exports(folders: list[Path]) -> tuple[str, str, str]:
    """Each export folder's formats table with the int8 recipes and the search trace."""
    body = []
    for folder in folders:
        d = fsutil.read_json_dict(folder / "edgeclf.json")
        if not d:
            continue
        ref = (d.get("source") or {}).get("reference") or {}
        body.append(f'<h3 class="export" data-dir="{esc(folder)}">{esc(folder)}</h3>')
        body.append(paragraph(f"float reference (fp32 TFLite) top-1 {_pct(ref.get('val_top1'))} on "
                              f"{ref.get('val_images', '?')} validation images; budget "
                              f"{(d.get('source') or {}).get('max_drop_pt', '-')} pt."))
        cells = []
        for a in d.get("artifacts", []):
            x = a.get("extra") or {}
            cells.append([f"{a['format']}-{a['precision']}", a["file"], f"{a.get('bytes', 0) / 1e6:.2f} MB",
                          _pct(a.get("val_top1")), _pct(x.get("agreement")),
                          _gain(x.get("drop_pt")),
                          f"{x.get('val_lost', '-')}/{x.get('val_gained', '-')}",
                          _recipe(a) if a.get("precision") == "int8" else "-"])
        body.append(table(["format", "file", "size", "top-1", "agreement", "Δ pt", "lost/gained", "int8 recipe"],
                          cells, "formats", (7,)))
        for a in d.get("artifacts", []):
            trace = a.get("search") or []
            if not trace:
                continue
            body.append(f"<h3>search trace: {esc(a['format'])}-{esc(a['precision'])} ({len(trace)} candidates)</h3>")
            body.append(table(
                ["candidate", "tier", "outcome", "selection top-1", "Δ pt", "agreement", "lost/gained", "p50 ms",
                 "note"],
                [[s.get("label"), s.get("tier"), s.get("outcome"), _pct(s.get("selection_top1")),
                  _gain(s.get("selection_drop_pt")), _pct(s.get("selection_agreement")),
                  f"{s.get('selection_lost', '-')}/{s.get('selection_gained', '-')}",
                  s.get("p50_ms", "-"), s.get("note") or ""] for s in trace], "search", (0, 8)))
    if not body:
        body.append(paragraph("not exported yet: edgeclf export RUN --int8", "muted"))
    return "exports", "Exported models", "".join(body)


def disagreements(folders: list[Path]) -> tuple[str, str, str]:
    """Per int8 model, the validation images where its answer differs from the float reference's."""
    body, cache = [], {}
    for folder in folders:
        p = fsutil.read_json_dict(folder / "val_predictions.json")
        if not p or "float" not in p.get("models", {}):
            continue
        classes, images, labels = p["classes"], p["images"], p["labels"]
        ref = p["models"]["float"]
        for name, m in p["models"].items():
            if "int8" not in name:
                continue
            differ = [i for i, (a, b) in enumerate(zip(m["pred"], ref["pred"])) if a != b]
            lost = sum(1 for i in differ if ref["pred"][i] == labels[i])
            gained = sum(1 for i in differ if m["pred"][i] == labels[i])
            body.append(f'<h3>{esc(name)} against float ({esc(folder.name)}): {len(differ)} of {len(images)} '
                        f"answers differ ({lost} lost, {gained} gained)</h3>")
            if not differ:
                continue
            differ.sort(key=lambda i: -abs(ref["score"][i] - m["score"][i]))
            body.append('<div class="gallery">')
            for i in differ[:MAX_THUMBS]:
                f, t = images[i], classes[labels[i]]
                fl, q = classes[ref["pred"][i]], classes[m["pred"][i]]
                caption = (f"<b>{esc(Path(f).name)}</b><br>true {esc(t)}<br>"
                           f'<span class="{"good" if fl == t else "bad"}">float {esc(fl)} '
                           f'{ref["score"][i]:.2f}</span><br>'
                           f'<span class="{"good" if q == t else "bad"}">int8 {esc(q)} {m["score"][i]:.2f}</span>')
                body.append(figure(thumbs.photo(f, cache), caption,
                                   {"model": name, "export": str(folder), "file": f, "true": t, "float": fl,
                                    "int8": q}, "disagreement"))
            body.append("</div>")
    if not body:
        body.append(paragraph("no int8 export with validation predictions yet: edgeclf export RUN --int8", "muted"))
    return "disagreements", "int8 against float", "".join(body)


def bench(folders: list[Path]) -> tuple[str, str, str]:
    """Each bench folder's table per device, its notes and its plot."""
    body = []
    for folder in folders:
        d = fsutil.read_json_dict(folder / "bench.json")
        if not d:
            continue
        s, m = d.get("settings") or {}, d.get("machine") or {}
        body.append(f'<h3 class="bench" data-dir="{esc(folder)}">{esc(folder)} ({esc(s.get("created", ""))})</h3>')
        body.append(paragraph(f"this machine: {m.get('cpu', '?')}, {m.get('machine', '')}; "
                              f"{s.get('runs')} timed runs per model, batch 1"))
        for t in d.get("tables") or []:
            body.append(f'<h3>device {esc(t["device"])}</h3>')
            body.append(table(t["header"], t["cells"], "bench-table", (len(t["header"]) - 1,)))
        notes = d.get("notes") or []
        if notes:
            body.append("<ul>" + "".join(f'<li class="note">{esc(n)}</li>' for n in notes) + "</ul>")
        body.append(image(thumbs.png(folder / "bench.png"), "accuracy against latency, and size"))
    if not body:
        body.append(paragraph("not benched yet: edgeclf bench EXPORT --data DATA", "muted"))
    return "bench", "Bench", "".join(body)
