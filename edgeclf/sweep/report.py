"""What the sweep writes: ``sweep.csv``, ``sweep.json``, ``sweep.md`` and a plot per device (top-1 against
p50 and against size, the front marked), and what it prints."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from edgeclf import fsutil
from edgeclf.sweep.judge import Choice, devices

CSV_FIELDS = ["candidate", "model", "imgsz", "device", "emulated", "format", "backend", "precision", "status",
              "top1", "val_images", "float_val_top1", "p50_ms", "p50_hi_ms", "latency_from", "size_mb", "ram_mib",
              "pareto", "recipe", "reason", "export_dir"]


def _f(v, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _cells(r: dict) -> list[str]:
    return [r["candidate"], r["format"], r["backend"], _f(r.get("top1"), ".2%"), _f(r.get("p50_ms"), ".2f"),
            _f(r.get("p50_hi_ms"), ".2f"), _f(r.get("size_mb"), ".2f"), _f(r.get("ram_mib"), ".0f"),
            "yes" if r.get("pareto") else "", r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"]


HEADER = ["candidate", "format", "backend", "top-1", "p50 ms", "p50 upper", "size MB", "RAM MiB", "front", "status"]


def choice_text(ch: Choice, budget: dict) -> str:
    limits = ", ".join(f"{k.replace('_', '-')} {v:g}" for k, v in budget.items()) or "no budget"
    if ch.row:
        r = ch.row
        return (f"{ch.device}: {r['candidate']} {r['format']} ({r['backend']}), top-1 {r['top1']:.2%}, p50 "
                f"{r['p50_ms']:.2f} ms (upper {_f(r.get('p50_hi_ms'), '.2f')}), {r['size_mb']:.2f} MB: the most "
                f"accurate of the {ch.meeting} of {ch.candidates} models that meet {limits}")
    if ch.closest:
        r = ch.closest
        return (f"{ch.device}: nothing meets {limits}; closest {r['candidate']} {r['format']} ({r['backend']}), "
                f"top-1 {r['top1']:.2%}: {ch.over}")
    return f"{ch.device}: no measured candidate"


def deploy_lines(ch: Choice) -> list[str]:
    if not ch.row:
        return []
    fmt = ch.row["format"]
    backend = ch.row["backend"]
    return [f"deploy: {ch.row['export_dir']} ({fmt})",
            f"  edgeclf run {ch.row['export_dir']} --artifact {fmt} --backend {backend} --source 0"]


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def to_markdown(result) -> str:
    s = result.settings
    lines = [f"# edgeclf sweep {result.folder.name}", "",
             f"Data: `{s['data']}`; models {', '.join(s['models'])}; input sizes {', '.join(map(str, s['sizes']))}; "
             f"devices {', '.join(devices(result.rows)) or '-'}.", ""]
    if result.budget:
        lines += ["Budget: " + ", ".join(f"{k.replace('_', '-')} {v:g}" for k, v in result.budget.items())
                  + " (latency judged on the upper end of the p50's 95 % confidence interval).", ""]
    for ch in result.choices:
        lines += ["**" + choice_text(ch, result.budget) + "**", ""] + [f"    {x}" for x in deploy_lines(ch)] + [""]
    for dev in devices(result.rows):
        mine = [r for r in result.rows if r["device"] == dev]
        emulated = any(r.get("emulated") for r in mine)
        lines += [f"## {dev}" + (" (emulated: top-1 is the device's, latency and RAM this machine's)" if emulated
                                 else ""), ""]
        lines += ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |"
                  for r in sorted(mine, key=lambda r: -(r.get("top1") or 0))]
        if (result.folder / f"sweep-{dev}.png").is_file():
            lines += ["", f"![top-1 against p50 and size on {dev}](sweep-{dev}.png)"]
        lines.append("")
    failed = [r for r in result.rows if r["status"] == "failed"]
    if failed:
        lines += ["## Failed candidates", ""] + [f"- {r['candidate']}: {r['reason']}" for r in failed] + [""]
    lines += ["## Cost (wall seconds on this machine)", "", "| candidate | " + " | ".join(
        result.cost_columns) + " | total |", "|" + "---|" * (len(result.cost_columns) + 2)]
    for name, parts in result.cost.items():
        lines.append(f"| {name} | " + " | ".join(_f(parts.get(k), ".0f") for k in result.cost_columns)
                     + f" | {sum(v for v in parts.values() if v):.0f} |")
    spent = sum(v for parts in result.cost.values() for v in parts.values() if v)
    lines += ["", f"Scan (once): {_f(result.scan_seconds, '.0f')} s. Every stage together: {spent / 60:.1f} min "
                  f"(all invocations; this one took {result.seconds:.0f} s).", ""]
    return "\n".join(lines)


def plot(result, dev: str, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    mine = [r for r in result.rows if r["device"] == dev and r["status"] == "ok" and r.get("top1") is not None
            and r.get("p50_ms") is not None]
    if not mine:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    chosen = {id(ch.row) for ch in result.choices if ch.row is not None and ch.device == dev}
    for ax, key, label in ((axes[0], "p50_ms", "p50 latency, ms (log)"), (axes[1], "size_mb", "size, MB (log)")):
        for r in mine:
            ax.scatter(r[key], r["top1"] * 100, s=60 if r.get("pareto") else 25,
                       marker="*" if id(r) in chosen else ("o" if r.get("pareto") else "."),
                       color="tab:red" if id(r) in chosen else ("tab:blue" if r.get("pareto") else "grey"))
            if r.get("pareto") or id(r) in chosen:  # the rest stay unnamed: a sweep has tens of points
                ax.annotate(f"{r['candidate']} {r['format']}", (r[key], r["top1"] * 100), fontsize=6,
                            xytext=(3, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation top-1, %")
        ax.set_title("front named; grey: the other models", fontsize=8)
        ax.grid(alpha=0.3)
    front = sorted((r for r in mine if r.get("pareto")), key=lambda r: r["p50_ms"])
    axes[0].plot([r["p50_ms"] for r in front], [r["top1"] * 100 for r in front], color="tab:blue", linewidth=1,
                 label="front (most accurate for its latency)")
    if "max_latency" in result.budget:
        axes[0].axvline(result.budget["max_latency"], color="tab:red", linestyle="--", label="--max-latency")
    axes[0].legend(fontsize=8)
    emulated = any(r.get("emulated") for r in mine)
    fig.suptitle(f"sweep {result.folder.name} on {dev}" + (" (emulated: latency measured on this machine)"
                                                           if emulated else ""))
    with fsutil.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return True


def write_all(result) -> list[Path]:
    files = []
    for dev in devices(result.rows):
        path = result.folder / f"sweep-{dev}.png"
        if plot(result, dev, path):
            files.append(path)
    files.append(fsutil.write_text(result.folder / "sweep.csv", to_csv(result.rows)))
    files.append(fsutil.write_json(result.folder / "sweep.json", result.to_json()))
    files.append(fsutil.write_text(result.folder / "sweep.md", to_markdown(result)))
    return files


def print_result(result, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    for dev in devices(result.rows):
        mine = sorted((r for r in result.rows if r["device"] == dev), key=lambda r: -(r.get("top1") or 0))
        emulated = any(r.get("emulated") for r in mine)
        table = Table(title=f"sweep on {dev}" + (" (emulated: latency and RAM measured here)" if emulated else ""))
        for col in HEADER:
            table.add_column(col, justify="left" if col in ("candidate", "format", "backend", "status") else "right")
        for r in mine:
            table.add_row(*[escape(c) for c in _cells(r)])
        console.print(table)
    for r in (r for r in result.rows if r["status"] == "failed"):
        console.print(f"failed: {r['candidate']}: {r['reason']}", markup=False, highlight=False)
    for ch in result.choices:
        console.print(("choice " if ch.row else "") + choice_text(ch, result.budget), markup=False, highlight=False)
        for line in deploy_lines(ch):
            console.print(line, markup=False, highlight=False)
    console.print(f"wrote {', '.join(str(p) for p in result.files)}", markup=False, highlight=False)
