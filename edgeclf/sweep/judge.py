"""The sweep's rows (one per candidate x artifact x backend x device, read from each candidate's bench.json),
the accuracy/latency front per device, and the choice under a budget."""
from __future__ import annotations

from dataclasses import dataclass

from edgeclf import fsutil
from edgeclf.sweep.runner import Candidate

LIMIT_LABELS = {"max_latency": ("p50 upper", "ms", "p50_hi_ms"), "max_size": ("size", "MB", "size_mb"),
                "max_ram": ("RAM", "MiB", "ram_mib")}


def collect(cands: list[Candidate], state: dict) -> list[dict]:
    """Every measured row; a candidate that failed is one row with its reason. On an emulated device the
    accuracy is the device's and the latency and RAM are this machine's (an emulator's are not a board's)."""
    rows = []
    for c in cands:
        info = state.get("candidates", {}).get(c.name, {})
        float_top1 = fsutil.read_json_dict(c.run / "report.json").get("top1")
        base = {"candidate": c.name, "model": c.model, "imgsz": c.imgsz, "float_val_top1": float_top1,
                "export_dir": str(c.export)}
        bench = fsutil.read_json_dict(c.bench / "bench.json")
        if info.get("error") or not bench:
            rows.append({**base, "device": "-", "format": "-", "backend": "-", "status": "failed",
                         "reason": info.get("error") or "not finished (run again with --resume)"})
            continue
        measured = bench.get("rows", []) + fsutil.read_json_dict(c.bench_remote / "bench.json").get("rows", [])
        local = {(r["format"], r["backend"]): r for r in measured if not r.get("emulated") and r["device"] == "local"}
        for r in measured:
            row = {**base, "device": r["device"], "emulated": bool(r.get("emulated")), "format": r["format"],
                   "backend": r["backend"], "precision": r.get("precision"), "status": r["status"],
                   "reason": r.get("note") or "", "top1": r.get("top1"), "val_images": r.get("val_images"),
                   "size_mb": r.get("size_mb"), "p50_ms": r.get("p50_ms"), "p50_hi_ms": _p50_high(r),
                   "ram_mib": r.get("rss_peak_mib"), "latency_from": r["device"], "recipe": r.get("recipe") or ""}
            if row["emulated"]:
                ref = local.get((r["format"], r["backend"]))
                row.update(p50_ms=ref.get("p50_ms") if ref else None, p50_hi_ms=_p50_high(ref) if ref else None,
                           ram_mib=ref.get("rss_peak_mib") if ref else None,
                           latency_from="local" if ref else None)
            rows.append(row)
    return rows


def _p50_high(r: dict) -> float | None:
    """The upper end of the p50's 95 % interval; with too few runs for one (under 6), the slowest run."""
    hi = r.get("p50_ci_high_ms")
    return hi if hi is not None else r.get("max_ms")


def devices(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["device"] for r in rows if r["device"] != "-"))


def _ok(r: dict) -> bool:
    return r["status"] == "ok" and r.get("top1") is not None and r.get("p50_ms") is not None


def mark_front(rows: list[dict]) -> None:
    """``pareto``: no other row on the same device is at least as accurate and at least as fast, and better
    in one of the two (top-1 against p50)."""
    for r in rows:
        r["pareto"] = False
    for dev in devices(rows):
        mine = [r for r in rows if r["device"] == dev and _ok(r)]
        for r in mine:
            r["pareto"] = not any(o is not r and o["top1"] >= r["top1"] and o["p50_ms"] <= r["p50_ms"]
                                  and (o["top1"] > r["top1"] or o["p50_ms"] < r["p50_ms"]) for o in mine)


def _excess(r: dict, budget: dict[str, float]) -> float:
    """How far over the budget, as the worst share over a limit (0: meets it)."""
    worst = 0.0
    for key, limit in budget.items():
        value = r.get(LIMIT_LABELS[key][2])
        if value is None:
            return float("inf")
        worst = max(worst, value / limit - 1.0)
    return worst


@dataclass
class Choice:
    device: str
    row: dict | None  # the most accurate row that meets the budget (None: none does)
    closest: dict | None = None  # when none does: the one least over it
    over: str = ""  # how far the closest is over, in words
    candidates: int = 0  # rows judged on this device
    meeting: int = 0  # of which meet the budget


def choose(rows: list[dict], device: str, budget: dict[str, float]) -> Choice:
    mine = [r for r in rows if r["device"] == device and _ok(r)]
    meets = [r for r in mine if _excess(r, budget) <= 0.0]
    if meets:  # most accurate; then fastest; then smallest
        best = max(meets, key=lambda r: (r["top1"], -r["p50_ms"], -(r.get("size_mb") or 0)))
        return Choice(device, best, candidates=len(mine), meeting=len(meets))
    if not mine:
        return Choice(device, None, candidates=0)
    closest = min(mine, key=lambda r: (_excess(r, budget), -r["top1"]))
    words = []
    for key, limit in budget.items():
        label, unit, field = LIMIT_LABELS[key]
        value = closest.get(field)
        if value is not None and value > limit:
            words.append(f"{label} {value:.2f} {unit} against {limit:g} {unit} (+{value - limit:.2f} {unit}, "
                         f"{(value / limit - 1):.0%} over)")
    return Choice(device, None, closest, "; ".join(words), len(mine))


def targets(rows: list[dict], remotes: list[str]) -> list[str]:
    """The devices a choice is made for: the remote devices when there are any, else this machine."""
    names = devices(rows)
    remote = [d for d in names if d != "local"]
    return remote if remotes and remote else [d for d in names if d == "local"] or names
