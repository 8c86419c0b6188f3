"""What ``edgeclf bench`` writes: the table on screen, ``bench.csv``, ``bench.json``, ``bench.md``,
``bench.png`` (matplotlib, optional) and one line appended to the benchmarks log.

The definitions of its columns are :data:`DEFINITIONS` (also written into bench.md).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from edgeclf import fsutil
from edgeclf.status import Status

# Existing columns first, in their old order (scripts read them by position too); new ones after.
CSV_COLUMNS = ["model", "format", "backend", "threads", "status", "note", "size_bytes", "size_mb", "top1", "top5",
               "macro_f1", "drop_pt", "agreement", "export_top1", "export_diff_pt", "val_images", "load_ms",
               "mean_ms", "p50_ms", "p90_ms", "p99_ms", "std_ms", "min_ms", "max_ms", "fps", "rss_peak_mib",
               "rss_baseline_mib", "rss_model_mib", "runs", "warmup", "precision", "file", "engine", "imgsz",
               "backbone", "export_dir", "device", "p50_ci_low_ms", "p50_ci_high_ms", "cold_start_ms", "import_ms",
               "mcnemar_p", "only_reference_right", "only_model_right", "worst_class", "worst_class_drop_pt", "recipe",
               "emulated", "val_total", "device_decode_top1", "device_decode_changed", "vs_first_changed",
               "vs_first_lost", "vs_first_gained"]
TABLE_COLUMNS = ["Format", "Status", "Size", "top-1", "Δ", "McNemar p", "worst class", "p50 (95% CI)", "p90", "p99",
                 "FPS", "cold ms", "RAM"]
DEFINITIONS = """\
* device: where the row was measured: ``local`` (the machine bench ran on) or a ``--remote`` host, with
  its fingerprint (CPU, ISA features, memory, OS, runtimes, governor, temperature, throttling).
* top-1 / top-5 / macro-F1: on the validation images, through the runtime backend of the row, on its device.
* Δ: top-1 minus the float reference's (the fp32 model of the same export on the same device), in points;
  ``drop_pt`` in the files is its negative, as in ``edgeclf.json``. agreement: share of images whose top-1
  class equals the float reference's. McNemar p: exact McNemar test of the row against the float
  reference on the same images (two-sided; ``only_reference_right``/``only_model_right`` are the
  discordant images); below 0.05 the accuracy difference is unlikely to be chance on this many images.
  worst class: the class whose recall drops most against the float reference, in points.
* latency: the bare invoke (``backend.infer``) at batch 1 on prepared real images, after warm-up; p50
  with a distribution-free 95 % confidence interval of the median (order statistics; it treats the runs
  as independent); FPS is 1000 / mean. cold start: loading the model (the runtime's own warm-up pass
  included) plus the first real image's inference, in a fresh process whose runtime library is already
  imported (``import_ms``: importing it).
* RAM: peak resident memory of a process that loads and runs only that model (batch 1), imports and
  interpreter included; ``rss_baseline_mib`` is the same process before the model was loaded.
* vs the first device: on each further device, the answers that differ from the same file through the same
  backend on the first device (this machine unless ``--no-local``), and the images it loses / gains there:
  the same int8 file runs other kernels on another ISA (x86 VNNI, ARM NEON or dot product), whose
  requantization rounds differently.
* emulated: a device that ``scripts/arm-device.sh`` emulates (QEMU user mode, real aarch64 wheels): its
  top-1 is what the ARM kernels answer; its latency, FPS and RAM are the emulator's, never the device's.
* decoded on the device (``--decode-on device``): the device decodes and resizes the validation photos
  itself, as it will decode its camera's frames; top-1 on those, and how many answers change.
* recipe: for int8 models, how ``edgeclf export`` quantized them (from ``edgeclf.json``): operator format,
  calibration method and images, weight bits, per-channel, activation bits, layers kept in float.
""".strip()  # a constant, not __doc__: python -OO drops docstrings


def _round(v, nd=4):
    return round(v, nd) if isinstance(v, float) else v


def _several(result, rows=None) -> tuple[bool, bool, bool, bool]:
    """(several devices, exports, backends, thread counts): which extra columns the table needs."""
    rows = result.rows if rows is None else rows
    return (len({r.device for r in rows}) > 1, len(result.exports) > 1,
            any(r.format.startswith("onnx") for r in rows) or len({r.backend for r in rows}) > 1,
            len({r.threads for r in rows}) > 1)


def _ms(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else "-"


def _p(v) -> str:
    if not isinstance(v, float):
        return "-"
    return f"{v:.3f}" if v >= 0.001 else "<0.001"


def _status(row, width: int | None = 48) -> str:
    if row.status is Status.FAILED:
        note = row.note
        if width and len(note) > width:
            note = note[: width - 1] + "…"
        return f"failed ({note})"
    return str(row.status)


def _p50(row) -> str:
    if row.p50_ms is None:
        return "-"
    if row.p50_ci_low_ms is None:
        return f"{row.p50_ms:.2f}"
    return f"{row.p50_ms:.2f} ({row.p50_ci_low_ms:.2f}–{row.p50_ci_high_ms:.2f})"


def _is_reference(result, row) -> bool:
    ref = row.export.references.get(row.device) if row.export else None
    return bool(ref) and (ref["format"], ref["backend"]) == (row.format, row.backend)


def table_rows(result, width: int | None = 48, rows=None) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the summary table of ``rows`` (default: all; screen and bench.md share it)."""
    rows = result.rows if rows is None else rows
    devices, models, backends, threads = _several(result, rows)
    recipes = any(r.recipe for r in rows)
    header = (["Device"] if devices else []) + (["Model"] if models else []) + ["Format"] + \
        (["Backend"] if backends else []) + (["Threads"] if threads else []) + TABLE_COLUMNS[1:] + \
        (["Recipe"] if recipes else [])
    cells = []
    for r in rows:
        delta = 0.0 - r.drop_pt if r.drop_pt is not None else None
        reference = _is_reference(result, r)
        line = ([r.device] if devices else []) + ([r.model] if models else []) + [r.format] + \
            ([r.backend] if backends else []) + ([str(r.threads)] if threads else [])
        worst = "-"
        if r.worst_class is not None and not reference and r.worst_class_drop_pt > 0:
            worst = f"{r.worst_class} {0.0 - r.worst_class_drop_pt:+.2f}"
        line += [_status(r, width), f"{r.size_bytes / 1e6:.2f} MB" if r.size_bytes else "-",
                 f"{r.top1:.2%}" if r.top1 is not None else "-",
                 f"{delta:+.2f}" if delta is not None else "-",
                 "ref" if reference and r.top1 is not None else _p(r.mcnemar_p), worst,
                 _p50(r), _ms(r.p90_ms), _ms(r.p99_ms),
                 f"{r.fps:.1f}" if r.fps else "-",
                 f"{r.cold_start_ms:.0f}" if r.cold_start_ms is not None else "-",
                 f"{r.rss_peak_mib:.0f} MiB" if r.rss_peak_mib else "-"]
        if recipes:
            line.append(r.recipe or "-")
        cells.append(line)
    return header, cells


def device_table(result) -> tuple[list[str], list[list[str]]] | None:
    """Several devices: one line per model x format x backend x threads, p50 (95 % CI) on each device
    side by side (None with one device)."""
    names = list(result.devices)
    if len(names) < 2:
        return None
    _, models, backends, _ = _several(result)
    keys, by = [], {}
    for r in result.rows:
        k = (r.model, r.format, r.backend, r.threads)
        if k not in by:
            keys.append(k)
        by.setdefault(k, {})[r.device] = r
    header = (["Model"] if models else []) + ["Format"] + (["Backend"] if backends else []) + ["Threads"] + \
        [f"p50 ms {n}" + (" (emulated)" if result.devices[n].get("emulation") else "") for n in names]
    cells = []
    for k in keys:
        model, fmt, backend, threads = k
        line = ([model] if models else []) + [fmt] + ([backend] if backends else []) + [str(threads)]
        for n in names:
            r = by[k].get(n)
            if r is None:
                line.append("-")
            else:
                line.append(_p50(r) if r.p50_ms is not None else str(r.status))
        cells.append(line)
    return header, cells


def _summary_title(result) -> str:
    s = result.settings
    images = sorted({len(e.val_paths) for e in result.exports})
    totals = sorted({e.val_total or len(e.val_paths) for e in result.exports})
    of = f" of {'/'.join(map(str, totals))} (--max-images, stratified)" if totals != images else ""
    return (f"val: {'/'.join(map(str, images))} images{of}; latency: batch 1, {s['runs']} runs after {s['warmup']} "
            f"warm-up; p50 (95% CI)/p90/p99 in ms; cold: load + first inference; RAM: peak RSS of a process "
            f"running only that model")


def device_lines(result) -> list[tuple[str, str]]:
    """(device, its fingerprint in one line), for each device."""
    from edgeclf.bench.fingerprint import summary

    return [(name, summary(info)) for name, info in result.devices.items()]


def print_table(result, console) -> None:
    """The summary on screen: one table per device (its fingerprint under it), then with several
    devices the p50 latencies side by side."""
    from rich.markup import escape
    from rich.table import Table

    left = ("Device", "Model", "Format", "Backend", "Status", "worst class")
    colours = {Status.OK: "green", Status.FAILED: "red", Status.BELOW_FLOOR: "yellow"}
    fingerprints = dict(device_lines(result))
    several = len(result.devices) > 1
    console.print(_summary_title(result), markup=False)
    for device in dict.fromkeys(r.device for r in result.rows):
        rows = [r for r in result.rows if r.device == device]
        header, cells = table_rows(result, rows=rows)
        emulated = any(r.emulated for r in rows)
        title = f"{device}{' (EMULATED: latency and RAM are not the device’s)' if emulated else ''}"
        table = Table(title=escape(title) if several or emulated else None,
                      caption=escape(f"{device}: {fingerprints.get(device, '')}"), caption_justify="left")
        for col in header:
            table.add_column(col, justify="left" if col in left else "right")
        status_at = header.index("Status")
        for r, line in zip(rows, cells):
            c = colours.get(r.status, "white")
            line = [escape(x) for x in line]
            line[status_at] = f"[{c}]{line[status_at]}[/{c}]"
            table.add_row(*line)
        console.print(table)
    pivot = device_table(result)
    if pivot:
        side = Table(title="p50 latency (95% CI), ms, device by device")
        for col in pivot[0]:
            side.add_column(escape(col), justify="left" if col in left else "right")
        for line in pivot[1]:
            side.add_row(*[escape(x) for x in line])
        console.print(side)
    for note in export_agreement(result):
        console.print(note, markup=False)
    for f in [r for r in result.rows if r.status is Status.FAILED]:
        console.print(f"failed: {f.device} {f.model} {f.format} ({f.backend}): {f.note}", markup=False)
    for n in result.notes:
        console.print(n, markup=False)
    console.print(f"wrote {', '.join(str(p) for p in result.files.values())}", markup=False)


def export_agreement(result) -> list[str]:
    """How the top-1 measured here compares with the val_top1 that export recorded in edgeclf.json."""
    lines = []
    for e in result.exports:
        rows = [r for r in result.rows if r.export is e and r.export_diff_pt is not None]
        if not rows:
            continue
        same = [r for r in rows if r.export_val_images in (None, r.val_images)]
        worst = max(abs(r.export_diff_pt) for r in rows)
        pairs = len({(r.device, r.format, r.backend) for r in rows})
        what = "the same number of" if len(same) == len(rows) else "a different number of"
        over = "device/artifact/backend triples" if len(result.devices) > 1 else "artifact/backend pairs"
        lines.append(f"{e.label}: top-1 vs edgeclf.json (export, {what} val images): max |difference| "
                     f"{worst:.2f} pt over {pairs} {over}")
    return lines


def _public_row(r) -> dict:
    return {k: _round(v, 6) for k, v in r.to_dict().items()}


def to_csv(result) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in result.rows:
        w.writerow(_public_row(r))
    return buf.getvalue()


def to_json(result) -> dict:
    exports = []
    for e in result.exports:
        exports.append({"dir": str(e.dir), "model": e.label, "backbone": e.bundle.source.get("backbone"),
                        "input": {"height": e.bundle.input.height, "width": e.bundle.input.width,
                                  "resize": e.bundle.input.resize},
                        "classes": e.bundle.classes, "val_images": len(e.val_paths), "val_split": e.split_source,
                        "reference": e.reference, "references": e.references})
    return {"schema": 1, "settings": result.settings, "machine": result.machine, "devices": result.devices,
            "exports": exports, "rows": [_public_row(r) for r in result.rows], "notes": result.notes,
            "tables": [dict(zip(("device", "header", "cells"), (name, *table_rows(
                result, width=None, rows=[r for r in result.rows if r.device == name]))))
                for name in dict.fromkeys(r.device for r in result.rows)],  # as on screen, one per device
            "definitions": DEFINITIONS}


def _md_table(header: list[str], cells: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in line) + " |" for line in cells]
    return "\n".join(lines)


def to_markdown(result) -> str:
    s = result.settings
    header, cells = table_rows(result, width=None)
    decoding = any(r.device_decode_top1 is not None for r in result.rows)
    detail_header = ["Device", "Model", "Format", "Backend", "Threads", "Engine", "top-5", "macro-F1", "agreement",
                     "discordant (ref only / model only)", "export top-1", "Δ export pt", "import ms", "load ms",
                     "mean ms", "std ms", "RAM before model MiB"]
    detail = []
    for r in result.rows:
        detail.append([r.device, r.model, r.format, r.backend, str(r.threads), r.engine or "-",
                       f"{r.top5:.2%}" if r.top5 is not None else "-",
                       f"{r.macro_f1:.4f}" if r.macro_f1 is not None else "-",
                       f"{r.agreement:.2%}" if r.agreement is not None else "-",
                       f"{r.only_reference_right} / {r.only_model_right}" if r.only_model_right is not None else "-",
                       f"{r.export_top1:.2%}" if r.export_top1 is not None else "-",
                       f"{r.export_diff_pt:+.2f}" if r.export_diff_pt is not None else "-",
                       _ms(r.import_ms), _ms(r.load_ms), _ms(r.mean_ms), _ms(r.std_ms),
                       f"{r.rss_baseline_mib:.0f}" if r.rss_baseline_mib else "-"])
        if decoding:
            detail[-1] += [f"{r.device_decode_top1:.2%}" if r.device_decode_top1 is not None else "-",
                           str(r.device_decode_changed) if r.device_decode_changed is not None else "-"]
    if decoding:
        detail_header += ["top-1, decoded on the device", "answers changed by it"]
    if len(result.devices) > 1:
        first = next(iter(result.devices))
        detail_header.append(f"vs {first}: answers changed (lost / gained)")
        for line, r in zip(detail, result.rows):
            line.append(f"{r.vs_first_changed} ({r.vs_first_lost} / {r.vs_first_gained})"
                        if r.vs_first_changed is not None else "-")
    threads = {name: ", ".join(map(str, info.get("threads") or [])) for name, info in result.devices.items()}
    parts = [
        "# edgeclf bench", "",
        f"Measured {s['created']} in {s['seconds']} s" + (f" by `{s['command']}`" if s.get("command") else "") + ".",
        "",
        f"- **Data**: {s['data']}; " + "; ".join(f"{e.label}: {len(e.val_paths)} validation images from "
                                                   f"{e.split_source}" for e in result.exports),
        "- **Decoding**: " + ("on this machine, and again on each remote device from the photos themselves "
                               "(--decode-on device)" if s.get("decode_on") == "device" else
                               "on this machine; every device is sent the same decoded images"),
        f"- **Latency**: batch 1, {s['runs']} timed runs after {s['warmup']} warm-up, threads "
        + "; ".join(f"{threads[n]} ({n})" if len(threads) > 1 else threads[n] for n in threads)
        + f"; backends: {s['backends']}",
    ]
    parts += [f"- **Device {name}**: {line}" if len(result.devices) > 1 else f"- **Machine**: {line}"
              for name, line in device_lines(result)]
    parts += ["", _md_table(header, cells), ""]
    pivot = device_table(result)
    if pivot:
        parts += ["p50 latency (95% CI), ms, device by device:", "", _md_table(*pivot), ""]
    for e in result.exports:
        for device, ref in e.references.items():
            where = f" on {device}" if len(result.devices) > 1 else ""
            parts.append(f"Float reference of {e.label}{where}: {ref['format']} ({ref['backend']}), "
                         f"top-1 {ref['top1']:.2%}.")
    parts += [f"{line}." for line in export_agreement(result)]
    if s.get("min_top1") is not None:
        parts.append(f"Accuracy floor (--min-top1): {s['min_top1']:.2%}.")
    parts += ["", "## Details", "", _md_table(detail_header, detail), ""]
    fails = [r for r in result.rows if r.status is Status.FAILED]
    if fails:
        parts += ["## Failures", ""] + [f"- {r.device} {r.model} {r.format} ({r.backend}): {r.note}" for r in fails] \
            + [""]
    if result.notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    if (result.out_dir / "bench.png").is_file():
        parts += ["![accuracy against latency, and size](bench.png)", ""]
    parts += ["## Definitions", "", DEFINITIONS, ""]
    return "\n".join(parts)


def plot(result, path: Path) -> bool:
    """Accuracy against p50 latency (one point per device, artifact and backend, at each device's first
    thread count) and size bars. False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first_threads = {name: (info.get("threads") or [None])[0] for name, info in result.devices.items()}
    points = [r for r in result.rows if r.top1 is not None and r.p50_ms and r.threads == first_threads.get(r.device)]
    several = len(result.exports) > 1
    devices = list(result.devices)
    by_device = len(devices) > 1
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    cmap = plt.get_cmap("tab10")
    colour = {e.label: cmap(i % 10) for i, e in enumerate(result.exports)}
    device_colour = {d: cmap((i + len(colour)) % 10) if several else cmap(i % 10) for i, d in enumerate(devices)}
    markers = {"fp32": "o", "fp16": "s", "dynamic": "D", "int8": "^"}
    for r in points:
        hollow = r.backend == "opencv"  # the second backend of a float ONNX model: hollow marker
        c = device_colour[r.device] if by_device else colour[r.model]
        ax.scatter(r.p50_ms, r.top1 * 100, s=60, marker=markers.get(r.precision, "o"),
                   color="none" if hollow else c, edgecolor=c if hollow else "black",
                   linewidth=1.2 if hollow else 0.5)
        if not several and (not by_device or r.device == devices[0]):
            # one export: name the points (of the first device: the others' are the same models);
            # several exports: colours and markers say it (legend)
            name = r.format + (f" ({r.backend})" if hollow else "")
            ax.annotate(name, (r.p50_ms, r.top1 * 100), textcoords="offset points", xytext=(4, 4), fontsize=7)
    lat = [r.p50_ms for r in points]
    if lat and max(lat) / max(min(lat), 1e-6) > 20:
        from matplotlib.ticker import ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="x", which="minor", labelsize=7)
    threads_text = "threads: " + ", ".join(f"{t} on {d}" for d, t in first_threads.items()) if by_device else \
        f"{next(iter(first_threads.values()), '?')} threads"
    ax.set_xlabel(f"latency p50, ms (batch 1, {threads_text})")
    ax.set_ylabel("validation top-1, %")
    ax.set_title("accuracy against latency" + (", device by device" if by_device else ""))
    ax.grid(alpha=0.3)
    handles = []
    if by_device:
        handles += [ax.scatter([], [], color=c, marker="o", label=d) for d, c in device_colour.items()]
    elif several:
        handles += [ax.scatter([], [], color=c, marker="o", label=label) for label, c in colour.items()]
    used = {r.precision for r in points}
    handles += [ax.scatter([], [], color="grey", marker=mk, label=p) for p, mk in markers.items() if p in used]
    if any(r.backend == "opencv" for r in points):
        handles.append(ax.scatter([], [], color="none", edgecolor="grey", marker="o", label="OpenCV DNN"))
    ax.legend(handles=handles, fontsize=7, loc="best")
    sizes, seen = [], set()
    for r in result.rows:
        key = (r.model, r.format)
        if key not in seen and r.size_bytes:
            seen.add(key)
            sizes.append((f"{r.model.split(' (')[0]} {r.format}" if several else r.format,
                          r.size_bytes / 1e6, colour[r.model]))
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


def write_all(result) -> dict[str, Path]:
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
            "threads": result.settings["threads"], "machine": {k: result.machine.get(k) for k in ("cpu", "cores", "os")},
            "devices": {name: {k: info.get(k) for k in ("cpu", "board", "cores", "os")}
                        for name, info in result.devices.items()},
            "rows": [{k: _round(v, 4) for k, v in r.to_dict().items()
                      if k in ("device", "model", "format", "backend", "threads", "status", "top1", "drop_pt",
                               "mcnemar_p", "p50_ms", "p99_ms", "fps", "cold_start_ms", "rss_peak_mib",
                               "size_bytes")} for r in result.rows]}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line, ensure_ascii=False) + "\n")
    return log
