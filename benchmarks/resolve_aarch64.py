"""Can a 64-bit Raspberry Pi or Jetson install `edgeclf[runtime]`? Resolve it for linux aarch64 from here.

For the CPython versions and glibc baselines of the devices users have (below), `pip download --only-binary=:all:
--platform ... --python-version ... --implementation cp --abi cp3XX` resolves edgeclf's own
dependencies plus its `runtime` extra (read from pyproject.toml) from the package index -- binary wheels
only, as pip on the device would pick them -- without installing anything, and records the wheel
chosen for every package:

* manylinux_2_17 only (the oldest aarch64 glibc baseline; the query the issue started from), 3.11, 3.12;
* up to glibc 2.31 (Ubuntu 20.04, e.g. JetPack 5 with a Python newer than its 3.8), 3.10, 3.11;
* up to glibc 2.35 (Ubuntu 22.04: JetPack 6 on a Jetson Orin, Python 3.10), 3.10 to 3.12;
* up to glibc 2.36 (Debian 12 Bookworm: Raspberry Pi OS 64-bit on a Pi 4 / Pi 5, Python 3.11), 3.11, 3.12;
* up to glibc 2.41 (Debian 13 Trixie: Raspberry Pi OS 64-bit, Python 3.13), 3.13.

When a query fails, each package is also resolved alone without its version floor, to show which pin
stands in the way. This machine's pip configuration
(extra indexes, local wheel folders, constraints) is left out (PIP_CONFIG_FILE=/dev/null): the index
alone answers, as on a fresh device.

    python benchmarks/resolve_aarch64.py [--dest /tmp/edgeclf-aarch64-wheels]

Writes benchmarks/results/aarch64_resolution.md and .json. Downloads the wheels into --dest (reused).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# target -> (newest glibc minor version its platform tags allow, the CPython versions to resolve for)
TARGETS = {
    "manylinux_2_17 only": (17, ("3.11", "3.12")),
    "glibc 2.31 (Ubuntu 20.04 / JetPack 5 with a newer Python)": (31, ("3.10", "3.11")),
    "Jetson Orin, JetPack 6 (Ubuntu 22.04: glibc 2.35, Python 3.10)": (35, ("3.10", "3.11", "3.12")),
    "Raspberry Pi OS 64-bit Bookworm (Debian 12: glibc 2.36, Python 3.11)": (36, ("3.11", "3.12")),
    "Raspberry Pi OS 64-bit Trixie (Debian 13: glibc 2.41, Python 3.13)": (41, ("3.13",)),
}
WHEEL = re.compile(r"(?:Saved |File was already downloaded )(\S+\.whl)")


def requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"]["runtime"])


def platforms(glibc_minor: int) -> list[str]:
    tags = [f"manylinux_2_{m}_aarch64" for m in range(glibc_minor, 16, -1)]
    return tags + ["manylinux2014_aarch64"]


def _download(python: str, glibc_minor: int, reqs: list[str], dest: Path, *extra: str):
    abi = "cp" + python.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--dest", str(dest), "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", "--abi", abi, *extra]
    for tag in platforms(glibc_minor):
        cmd += ["--platform", tag]
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run(cmd + reqs, capture_output=True, text=True, env=env, timeout=1800)


def newest_alone(python: str, glibc_minor: int, reqs: list[str], dest: Path) -> dict[str, str]:
    """Each requirement's package on its own, without its version floor: the newest wheel these tags get."""
    out = {}
    for req in reqs:
        name = re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0]
        proc = _download(python, glibc_minor, [name], dest, "--no-deps")
        found = WHEEL.findall(proc.stdout)
        out[name] = Path(found[0]).name.split("-")[1] if found else "none"
    return out


def resolve(python: str, glibc_minor: int, reqs: list[str], dest: Path) -> dict:
    abi = "cp" + python.replace(".", "")
    t = time.perf_counter()
    proc = _download(python, glibc_minor, reqs, dest)
    wheels = sorted({Path(m).name for m in WHEEL.findall(proc.stdout)})
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
    record = {"python": python, "platforms": platforms(glibc_minor), "ok": proc.returncode == 0,
            "seconds": round(time.perf_counter() - t, 1), "wheels": wheels,
            "packages": {w.split("-")[0].lower().replace("_", "-"): w.split("-")[1] for w in wheels},
            "errors": errors[:5],
            "command": "pip download --only-binary=:all: --python-version {p} --implementation cp --abi {a} "
                       "--platform {t} ... REQUIREMENTS".format(p=python, a=abi, t=platforms(glibc_minor)[0])}
    if not record["ok"]:  # what stands in the way: each package's newest wheel for these tags
        record["newest_alone"] = newest_alone(python, glibc_minor, reqs, dest)
    return record


def litert_note(records: list[dict]) -> str:
    """Which ai-edge-litert each query got, against the newest one there is for x86 here."""
    got = sorted({r["packages"].get("ai-edge-litert", "-") for r in records})
    return ", ".join(got)


def markdown(records: list[dict], reqs: list[str], created: str) -> str:
    lines = ["# edgeclf[runtime] on linux aarch64: what pip resolves", "",
             f"Resolved by `benchmarks/resolve_aarch64.py` on {created}: `pip download --only-binary=:all: "
             f"--platform ... --python-version ... --implementation cp --abi cp3XX` from the package index "
             f"(PyPI; this machine's pip configuration left out), binary wheels only, nothing installed.", "",
             "Requirements (pyproject.toml: dependencies + the `runtime` extra): " + ", ".join(f"`{r}`" for r in reqs),
             ""]
    packages = sorted({p for r in records for p in r["packages"]})
    header = ["target", "Python", "resolved"] + packages
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        lines.append("| " + " | ".join([r["target"], r["python"], "yes" if r["ok"] else "**no**"] +
                                       [r["packages"].get(p, "-") for p in packages]) + " |")
    lines += ["", "Wheels, per query:", ""]
    for r in records:
        lines.append(f"- {r['target']}, CPython {r['python']} (platform tags {r['platforms'][0]} ... "
                     f"{r['platforms'][-1]}): " + (", ".join(f"`{w}`" for w in r["wheels"]) or "none") +
                     ("" if r["ok"] else f" -- errors: {'; '.join(r['errors'])}"))
        if r.get("newest_alone"):
            lines.append("  - newest wheel of each package alone for these tags (no version floor): " +
                         ", ".join(f"{k} {v}" for k, v in r["newest_alone"].items()))
    lines += ["", f"ai-edge-litert versions resolved across the queries: {litert_note(records)}.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=Path(tempfile.gettempdir()) / "edgeclf-aarch64-wheels")
    a = ap.parse_args()
    a.dest.mkdir(parents=True, exist_ok=True)
    reqs = requirements()
    records = []
    for target, (glibc, pythons) in TARGETS.items():
        for python in pythons:
            r = resolve(python, glibc, reqs, a.dest)
            r["target"] = target
            records.append(r)
            print(f"{target}, CPython {python}: {'ok' if r['ok'] else 'FAILED'} in {r['seconds']} s: "
                  f"{', '.join(f'{k} {v}' for k, v in sorted(r['packages'].items()))}"
                  f"{' '.join(r['errors'])} {r.get('newest_alone', '')}", flush=True)
    created = time.strftime("%Y-%m-%d %H:%M")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "aarch64_resolution.json").write_text(json.dumps(
        {"created": created, "requirements": reqs, "pip": subprocess.run(
            [sys.executable, "-m", "pip", "--version"], capture_output=True, text=True).stdout.split(" from ")[0],
         "records": records}, indent=2) + "\n")
    (RESULTS / "aarch64_resolution.md").write_text(markdown(records, reqs, created))
    print(f"wrote {RESULTS / 'aarch64_resolution.md'}")
    if not all(r["ok"] for r in records):
        sys.exit(1)


if __name__ == "__main__":
    main()
