"""What ``edgeclf bench`` writes: the table on screen, ``bench.csv``, ``bench.json``, ``bench.md``,
``bench.png`` (matplotlib, optional) and one line appended to the benchmarks log.

Definitions (also written into bench.md):

* top-1 / top-5 / macro-F1: on the validation images, through the runtime backend of the row.
* Δ: top-1 minus the float reference's (the fp32 model of the same export), in points; ``drop_pt`` in
  the files is its negative, as in ``edgeclf.json``. agreement: share of images whose top-1 class equals
  the float reference's.
* latency: the bare invoke (``backend.infer``) at batch 1 on prepared real images, after warm-up; FPS is
  1000 / mean.
* RAM: peak resident memory of a process that loads and runs only that model (batch 1), imports and
  interpreter included; ``rss_baseline_mib`` is the same process before the model was loaded.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from edgeclf import fsutil

CSV_COLUMNS = ["model", "format", "backend", "threads", "status", "note", "size_bytes", "size_mb", "top1", "top5",
               "macro_f1", "drop_pt", "agreement", "export_top1", "export_diff_pt", "val_images", "load_ms",
               "mean_ms", "p50_ms", "p90_ms", "p99_ms", "std_ms", "min_ms", "max_ms", "fps", "rss_peak_mib",
               "rss_baseline_mib", "rss_model_mib", "runs", "warmup", "precision", "file", "engine", "imgsz",
               "backbone", "export_dir"]
TABLE_COLUMNS = ["Format", "Status", "Size", "top-1", "Δ", "p50", "p90", "p99", "FPS", "RAM"]
FILES = ("bench.csv", "bench.json", "bench.md", "bench.png")


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _round(v, nd=4):
    return round(v, nd) if isinstance(v, float) else v


def _several(result) -> tuple[bool, bool, bool]:
    """(several exports, several backends, several thread counts): which extra columns the table needs."""
    rows = result.rows
    return (len(result.exports) > 1, any(r["format"].startswith("onnx") for r in rows) or
            len({r["backend"] for r in rows}) > 1, len({r["threads"] for r in rows}) > 1)


def _pct(v) -> str:
    return f"{v * 100:.2f}" if isinstance(v, float) else "-"


def _ms(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else "-"


def _status(row: dict, width: int | None = 48) -> str:
    if row["status"] == "fail":
        note = row["note"]
        if width and len(note) > width:
            note = note[: width - 1] + "…"
        return f"fail ({note})"
    return row["status"]


def table_rows(result, width: int | None = 48) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the summary table (screen and bench.md share it)."""
    models, backends, threads = _several(result)
    header = (["Model"] if models else []) + ["Format"] + (["Backend"] if backends else []) + \
        (["Threads"] if threads else []) + TABLE_COLUMNS[1:]
    cells = []
    for r in result.rows:
        delta = 0.0 - r["drop_pt"] if r.get("drop_pt") is not None else None
        line = ([r["model"]] if models else []) + [r["format"]] + ([r["backend"]] if backends else []) + \
            ([str(r["threads"])] if threads else [])
        line += [_status(r, width), f"{r['size_bytes'] / 1e6:.2f} MB" if r["size_bytes"] else "-",
                 f"{r['top1']:.2%}" if r.get("top1") is not None else "-",
                 f"{delta:+.2f}" if delta is not None else "-",
                 _ms(r.get("p50_ms")), _ms(r.get("p90_ms")), _ms(r.get("p99_ms")),
                 f"{r['fps']:.1f}" if r.get("fps") else "-",
                 f"{r['rss_peak_mib']:.0f} MiB" if r.get("rss_peak_mib") else "-"]
        cells.append(line)
    return header, cells


def _summary_title(result) -> str:
    s = result.settings
    images = sorted({len(e.val_paths) for e in result.exports})
    return (f"val: {'/'.join(map(str, images))} images; latency: batch 1, {s['runs']} runs after {s['warmup']} "
            f"warm-up; p50/p90/p99 in ms; RAM: peak RSS of a process running only that model")


def print_table(result, console) -> None:
    from rich.table import Table

    header, cells = table_rows(result)
    table = Table(title=_summary_title(result))
    for col in header:
        table.add_column(col, justify="left" if col in ("Model", "Format", "Backend", "Status") else "right")
    colours = {"ok": "green", "fail": "red", "below --min-top1": "yellow"}
    status_at = header.index("Status")
    for r, line in zip(result.rows, cells):
        c = colours.get(r["status"], "white")
        line = list(line)
        line[status_at] = f"[{c}]{line[status_at]}[/{c}]"
        table.add_row(*line)
    console.print(table)
    for note in export_agreement(result):
        console.print(note, markup=False)
    for f in [r for r in result.rows if r["status"] == "fail"]:
        console.print(f"failed: {f['model']} {f['format']} ({f['backend']}): {f['note']}", markup=False)
    for n in result.notes:
        console.print(n, markup=False)
    console.print(f"wrote {', '.join(str(p) for p in result.files.values())}", markup=False)


def export_agreement(result) -> list[str]:
    """How the top-1 measured here compares with the val_top1 that export recorded in edgeclf.json."""
    lines = []
    for e in result.exports:
        rows = [r for r in result.rows if r["_export"] is e and r.get("export_diff_pt") is not None]
        if not rows:
            continue
        same = [r for r in rows if r.get("export_val_images") in (None, r["val_images"])]
        worst = max(abs(r["export_diff_pt"]) for r in rows)
        pairs = len({(r["format"], r["backend"]) for r in rows})
        what = "the same number of" if len(same) == len(rows) else "a different number of"
        lines.append(f"{e.label}: top-1 vs edgeclf.json (export, {what} val images): max |difference| "
                     f"{worst:.2f} pt over {pairs} artifact/backend pairs")
    return lines


def to_csv(result) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in result.rows:
        d = {k: _round(v, 6) for k, v in _public(r).items()}
        d["size_mb"] = round(r["size_bytes"] / 1e6, 3)
        w.writerow(d)
    return buf.getvalue()


def to_json(result) -> dict:
    exports = []
    for e in result.exports:
        ref = {k: v for k, v in e.reference.items() if not k.startswith("_")}
        exports.append({"dir": str(e.dir), "model": e.label, "backbone": e.bundle.source.get("backbone"),
                        "input": {"height": e.bundle.input.height, "width": e.bundle.input.width,
                                  "resize": e.bundle.input.resize},
                        "classes": e.bundle.classes, "val_images": len(e.val_paths), "val_split": e.split_source,
                        "reference": ref})
    rows = []
    for r in result.rows:
        d = {k: _round(v, 6) for k, v in _public(r).items()}
        d["size_mb"] = round(r["size_bytes"] / 1e6, 3)
        rows.append(d)
    return {"schema": 1, "settings": result.settings, "machine": result.machine, "exports": exports, "rows": rows,
            "definitions": __doc__.split("Definitions (also written into bench.md):", 1)[1].strip()}


def _md_table(header: list[str], cells: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in line) + " |" for line in cells]
    return "\n".join(lines)


def to_markdown(result) -> str:
    s, m = result.settings, result.machine
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    header, cells = table_rows(result, width=None)
    detail_header = ["Model", "Format", "Backend", "Threads", "Engine", "top-5", "macro-F1", "agreement",
                     "export top-1", "Δ export pt", "load ms", "mean ms", "std ms", "RAM before model MiB"]
    detail = []
    for r in result.rows:
        detail.append([r["model"], r["format"], r["backend"], str(r["threads"]), r.get("engine") or "-",
                       f"{r['top5']:.2%}" if r.get("top5") is not None else "-",
                       f"{r['macro_f1']:.4f}" if r.get("macro_f1") is not None else "-",
                       f"{r['agreement']:.2%}" if r.get("agreement") is not None else "-",
                       f"{r['export_top1']:.2%}" if r.get("export_top1") is not None else "-",
                       f"{r['export_diff_pt']:+.2f}" if r.get("export_diff_pt") is not None else "-",
                       _ms(r.get("load_ms")), _ms(r.get("mean_ms")), _ms(r.get("std_ms")),
                       f"{r['rss_baseline_mib']:.0f}" if r.get("rss_baseline_mib") else "-"])
    parts = [
        "# edgeclf bench", "",
        f"Measured {s['created']} in {s['seconds']} s" + (f" by `{s['command']}`" if s.get("command") else "") + ".",
        "",
        f"- **Data**: {s['data']}; " + "; ".join(f"{e.label}: {len(e.val_paths)} validation images from "
                                                   f"{e.split_source}" for e in result.exports),
        f"- **Latency**: batch 1, {s['runs']} timed runs after {s['warmup']} warm-up, threads "
        f"{', '.join(map(str, s['threads']))}; backends: {s['backends']}",
        f"- **Machine**: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable); {m['os']}; "
        f"Python {m['python']}; {versions}",
        "",
        _md_table(header, cells), "",
    ]
    for e in result.exports:
        if e.reference:
            parts.append(f"Float reference of {e.label}: {e.reference['format']} ({e.reference['backend']}), "
                         f"top-1 {e.reference['top1']:.2%}.")
    parts += [f"{line}." for line in export_agreement(result)]
    if s.get("min_top1") is not None:
        parts.append(f"Accuracy floor (--min-top1): {s['min_top1']:.2%}.")
    parts += ["", "## Details", "", _md_table(detail_header, detail), ""]
    fails = [r for r in result.rows if r["status"] == "fail"]
    if fails:
        parts += ["## Failures", ""] + [f"- {r['model']} {r['format']} ({r['backend']}): {r['note']}" for r in fails] \
            + [""]
    if result.notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    if (result.out_dir / "bench.png").is_file():
        parts += ["![accuracy against latency, and size](bench.png)", ""]
    parts += ["## Definitions", "", __doc__.split("Definitions (also written into bench.md):", 1)[1].strip(), ""]
    return "\n".join(parts)


def plot(result, path: Path) -> bool:
    """Accuracy against p50 latency (one point per artifact and backend) and size bars. False without
    matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first_threads = result.settings["threads"][0]
    points = [r for r in result.rows if r.get("top1") is not None and r.get("p50_ms") and r["threads"] == first_threads]
    several = len(result.exports) > 1
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    cmap = plt.get_cmap("tab10")
    colour = {e.label: cmap(i % 10) for i, e in enumerate(result.exports)}
    markers = {"fp32": "o", "fp16": "s", "dynamic": "D", "int8": "^"}
    for r in points:
        hollow = r["backend"] == "opencv"  # the second backend of a float ONNX model: hollow marker
        ax.scatter(r["p50_ms"], r["top1"] * 100, s=60, marker=markers.get(r["precision"], "o"),
                   color="none" if hollow else colour[r["model"]], edgecolor=colour[r["model"]] if hollow else "black",
                   linewidth=1.2 if hollow else 0.5)
        if not several:  # one export: name every point; several: colours and markers say it (legend)
            name = r["format"] + (f" ({r['backend']})" if hollow else "")
            ax.annotate(name, (r["p50_ms"], r["top1"] * 100), textcoords="offset points", xytext=(4, 4), fontsize=7)
    lat = [r["p50_ms"] for r in points]
    if lat and max(lat) / max(min(lat), 1e-6) > 20:
        from matplotlib.ticker import ScalarFormatter

        ax.set_xscale("log")
        for axis in (ax.xaxis,):
            axis.set_major_formatter(ScalarFormatter())
            axis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(f"latency p50, ms (batch 1, {first_threads} threads)")
    ax.set_ylabel("validation top-1, %")
    ax.set_title("accuracy against latency")
    ax.grid(alpha=0.3)
    handles = []
    if several:
        handles += [ax.scatter([], [], color=c, marker="o", label=label) for label, c in colour.items()]
    used = {r["precision"] for r in points}
    handles += [ax.scatter([], [], color="grey", marker=mk, label=p) for p, mk in markers.items() if p in used]
    if any(r["backend"] == "opencv" for r in points):
        handles.append(ax.scatter([], [], color="none", edgecolor="grey", marker="o", label="OpenCV DNN"))
    ax.legend(handles=handles, fontsize=7, loc="best")
    sizes, seen = [], set()
    for r in result.rows:
        key = (r["model"], r["format"])
        if key not in seen and r["size_bytes"]:
            seen.add(key)
            sizes.append((f"{r['model'].split(' (')[0]} {r['format']}" if several else r["format"],
                          r["size_bytes"] / 1e6, colour[r["model"]]))
    bars.barh([s[0] for s in sizes], [s[1] for s in sizes], color=[s[2] for s in sizes])
    bars.invert_yaxis()
    if sizes and max(s[1] for s in sizes) / max(min(s[1] for s in sizes), 1e-6) > 50:
        bars.set_xscale("log")
    bars.set_xlabel("size on disk, MB" + (" (log scale)" if bars.get_xscale() == "log" else ""))
    bars.set_title("model size")
    bars.tick_params(axis="y", labelsize=7)
    for i, (_, mb, _) in enumerate(sizes):
        bars.text(mb, i, f" {mb:.1f}", va="center", fontsize=7)
    fig.tight_layout()
    with fsutil.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return True


def write_all(result, console) -> dict[str, Path]:
    out = result.out_dir
    files = {}
    png = out / "bench.png"
    if plot(result, png):
        files["png"] = png
    else:
        result.notes.append("bench.png not drawn: matplotlib is not installed (pip install matplotlib)")
        png.unlink(missing_ok=True)
    files["csv"] = fsutil.write_text(out / "bench.csv", to_csv(result))
    files["json"] = fsutil.write_json(out / "bench.json", to_json(result))
    files["md"] = fsutil.write_text(out / "bench.md", to_markdown(result))
    return files


def append_log(result, log: Path) -> Path:
    """One JSON line per bench run, appended (the history of every bench on this machine)."""
    line = {"created": result.settings["created"], "out": str(result.out_dir), "data": result.settings["data"],
            "exports": result.settings["exports"], "runs": result.settings["runs"],
            "threads": result.settings["threads"], "machine": {k: result.machine[k] for k in ("cpu", "cores", "os")},
            "rows": [{k: _round(r.get(k), 4) for k in ("model", "format", "backend", "threads", "status", "top1",
                                                       "drop_pt", "p50_ms", "p99_ms", "fps", "rss_peak_mib",
                                                       "size_bytes")} for r in result.rows]}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    return log
