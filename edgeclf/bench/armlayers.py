"""The parts of an emulated ARM device (:mod:`edgeclf.bench.armdevice`) that are built once and cached.

Under ``$EDGECLF_CACHE/arm`` (default ``~/.cache/edgeclf/arm``), each keyed by what it contains, built in a
``*.part`` folder and renamed when complete (a killed build never leaves a layer that looks finished):

* ``rootfs-KEY``: Debian arm64 (``mmdebstrap``) with python3 and openssh-server;
* ``wheels-KEY``: the aarch64 wheels of edgeclf[runtime]'s dependencies, placed by this machine's pip
  (``--platform manylinux_2_*_aarch64 --only-binary=:all: --target``, native speed) and pinned to the
  versions installed here, so that a device differs from this machine by its ISA only;
* ``edgeclf-KEY``: this checkout's edgeclf, built as a wheel and installed the same way.

Also the host side: the QEMU binary, its CPU models, and the binfmt_misc registration. Standard library only.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgeclf.errors import EdgeclfError

SUITE = "bookworm"  # Debian 12: Python 3.11, OpenSSH 9.2, glibc 2.36
PACKAGES = ("python3", "openssh-server")
ROOTFS_FORMAT = 1  # bumped when the way a root filesystem is made changes
QEMU = "qemu-aarch64-static"
BINFMT_DIR = Path(os.environ.get("EDGECLF_BINFMT_DIR", "/proc/sys/fs/binfmt_misc"))
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
# ELF magic and mask of aarch64 executables (as Debian's qemu-user-static registers them)
AARCH64_MAGIC = r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
AARCH64_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
RUNTIME_PINS = ("numpy", "ai-edge-litert", "onnxruntime", "opencv-python-headless", "starlette", "uvicorn",
                "prometheus-client", "paho-mqtt")
REPO = Path(__file__).resolve().parents[2]
DEVICE_EXTRAS = ("runtime", "serve")  # what a board installs: the runtime and the device service

class DeviceError(EdgeclfError):
    """The emulated device cannot be started or stopped (one line)."""


# --- small helpers ---------------------------------------------------------------------------------------

def cache_root() -> Path:
    return Path(os.environ.get("EDGECLF_CACHE") or Path.home() / ".cache" / "edgeclf").expanduser() / "arm"


def run(cmd: list[str], what: str, timeout: float = 1800, **kw) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except FileNotFoundError:
        raise DeviceError(f"{what}: {cmd[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{what}: no result within {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        raise DeviceError(f"{what} failed (exit {proc.returncode}): {lines[-1][:300] if lines else 'no output'}")
    return proc


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _part(final: Path) -> Path | None:
    """None when the layer ``final`` is complete; else its ``.part`` build folder, with the older layers of the
    same kind removed (one of each kind is kept: the disk is not the cache's)."""
    if (final / ".edgeclf-done").is_file():
        return None
    try:  # a layer a running device is mounted on stays until that device stops
        mounted = Path("/proc/self/mountinfo").read_text(errors="replace")
    except OSError:
        mounted = ""
    for old in final.parent.glob(f"{final.name.split('-')[0]}-*"):
        if f"{old}:" not in mounted and f"{old}," not in mounted:
            shutil.rmtree(old, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    return final.with_name(f"{final.name}.part")


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a finished layer into place (a killed build leaves only ``*.part`` folders, never a layer)."""
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


# --- the host: qemu, binfmt_misc -------------------------------------------------------------------------

def qemu_binary() -> str:
    found = shutil.which(QEMU)
    if not found:
        raise DeviceError(f"{QEMU} not found: install QEMU user mode (Debian: apt-get install -y qemu-user-static "
                          f"mmdebstrap)")
    return found


def qemu_cpus(qemu: str) -> list[str]:
    proc = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True, timeout=30)  # exits 1 (7.2)
    return [ln.strip() for ln in proc.stdout.splitlines()[1:] if ln.strip() and " " not in ln.strip()]


def qemu_version(qemu: str) -> str:
    first = run([qemu, "--version"], "qemu --version", timeout=30).stdout.splitlines()[0]
    m = re.search(r"version (\S+)", first)
    return m.group(1) if m else first


def binfmt_status() -> str:
    """"ok", "unmounted", "unregistered" or "no-fix-binary" (registered without F: useless in a chroot)."""
    try:
        if not (BINFMT_DIR / "register").exists():
            return "unmounted"
        entry = BINFMT_DIR / "qemu-aarch64"
        if not entry.is_file():
            return "unregistered"
        text = entry.read_text(errors="replace")
    except OSError:  # not ours to read: as good as not there
        return "unmounted"
    if "enabled" not in text.splitlines()[0]:
        return "unregistered"
    m = re.search(r"^flags:\s*(\S*)", text, re.M)
    return "ok" if m and "F" in m.group(1) else "no-fix-binary"


def binfmt_commands(qemu: str) -> str:
    source = f"cat {BINFMT_CONF}" if BINFMT_CONF.is_file() else \
        f"echo ':qemu-aarch64:M::{AARCH64_MAGIC}:{AARCH64_MASK}:{qemu}:OCF'"
    return (f"mount -t binfmt_misc binfmt_misc {BINFMT_DIR} 2>/dev/null; "
            f"{source} > {BINFMT_DIR}/register")


def ensure_binfmt(qemu: str) -> None:
    """Register QEMU for aarch64 executables (with F: the interpreter is opened now, so it works in a chroot)."""
    state = binfmt_status()
    if state == "ok":
        return
    if state == "no-fix-binary":
        raise DeviceError(f"{BINFMT_DIR}/qemu-aarch64 is registered without the F (fix-binary) flag, so it "
                          f"cannot run inside a chroot: as root, echo -1 > {BINFMT_DIR}/qemu-aarch64, then run "
                          f"this again")
    if os.geteuid() != 0:
        raise DeviceError(f"aarch64 programs are not registered with binfmt_misc here; as root run: "
                          f"{binfmt_commands(qemu)}")
    if state == "unmounted":
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], "mounting binfmt_misc", timeout=30)
    line = BINFMT_CONF.read_text().strip() if BINFMT_CONF.is_file() else \
        f":qemu-aarch64:M::{AARCH64_MAGIC}:{AARCH64_MASK}:{qemu}:OCF"
    try:
        (BINFMT_DIR / "register").write_text(line)
    except OSError as exc:
        raise DeviceError(f"cannot register aarch64 with binfmt_misc ({exc.strerror or exc})") from None
    if binfmt_status() != "ok":
        raise DeviceError(f"registering aarch64 with binfmt_misc did not take: {binfmt_commands(qemu)}")


# --- the layers: root filesystem, wheels, edgeclf ---------------------------------------------------------

def rootfs_layer(log) -> Path:
    """The Debian arm64 root filesystem with python3 and openssh-server (built once, about 2-4 minutes)."""
    mmdebstrap = shutil.which("mmdebstrap")
    version = run([mmdebstrap, "--version"], "mmdebstrap --version", timeout=30).stdout.strip() if mmdebstrap else ""
    key = _key(ROOTFS_FORMAT, SUITE, PACKAGES, version)
    final = cache_root() / f"rootfs-{key}"
    if (final / ".edgeclf-done").is_file():
        return final
    if not mmdebstrap:
        raise DeviceError("mmdebstrap not found: apt-get install -y mmdebstrap (it builds the arm64 root filesystem)")
    tmp = _part(final)
    log(f"building the arm64 Debian {SUITE} root filesystem with {', '.join(PACKAGES)} (once; a few minutes) "
        f"into {final}")
    t = time.monotonic()
    run([mmdebstrap, "--arch=arm64", "--variant=minbase", f"--include={','.join(PACKAGES)}", "--quiet",
          SUITE, str(tmp)], "mmdebstrap", timeout=3600)
    (tmp / ".edgeclf-done").write_text(json.dumps({"suite": SUITE, "packages": PACKAGES, "mmdebstrap": version,
                                                   "seconds": round(time.monotonic() - t, 1)}) + "\n")
    _replace_dir(tmp, final)
    log(f"root filesystem ready in {time.monotonic() - t:.0f} s")
    return final


def rootfs_python(rootfs: Path) -> str:
    versions = sorted((p.name[len("python"):] for p in (rootfs / "usr/bin").glob("python3.*")
                       if re.fullmatch(r"python3\.\d+", p.name)), key=lambda v: int(v.split(".")[1]))
    if not versions:
        raise DeviceError(f"{rootfs}: no python3 in the root filesystem")
    return versions[-1]


def rootfs_glibc(rootfs: Path) -> tuple[int, int]:
    status = (rootfs / "var/lib/dpkg/status").read_text(errors="replace")
    m = re.search(r"^Package: libc6\n(?:[^\n]+\n)*?Version: (\d+)\.(\d+)", status, re.M)
    return (int(m.group(1)), int(m.group(2))) if m else (2, 17)


def runtime_pins() -> list[str]:
    """``pkg==version`` of the runtimes installed here: a device gets the same versions, only the ISA differs."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for pkg in RUNTIME_PINS:
        try:
            pins.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            pass
    return pins


def runtime_requirements() -> list[str]:
    """edgeclf's own dependencies and its ``runtime`` and ``serve`` extras (what a board runs), as pyproject.toml
    states them."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the installed metadata says the same
        from importlib.metadata import requires

        return [r.split(";")[0].strip() for r in requires("edgeclf") or []
                if "extra" not in r or any(f'extra == "{x}"' in r for x in DEVICE_EXTRAS)]
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [*project["dependencies"], *(r for x in DEVICE_EXTRAS for r in project["optional-dependencies"][x])]


def _pip_target(args: list[str], target: Path, py: str, glibc: tuple[int, int], what: str) -> None:
    plats = ["manylinux2014_aarch64"] + [f"manylinux_2_{m}_aarch64" for m in range(17, glibc[1] + 1)]
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--quiet", "--target",
           str(target), "--only-binary=:all:", "--implementation", "cp", "--python-version", py,
           *[a for p in plats for a in ("--platform", p)]]
    if py != f"{sys.version_info[0]}.{sys.version_info[1]}":
        cmd.append("--no-compile")  # .pyc files of another Python would be useless there
    run(cmd + args, what, timeout=1800)


def wheels_layer(rootfs: Path, log) -> Path:
    """The aarch64 wheels of edgeclf[runtime]'s dependencies, pinned to this machine's versions."""
    py, glibc = rootfs_python(rootfs), rootfs_glibc(rootfs)
    reqs, pins = runtime_requirements(), runtime_pins()
    key = _key(py, glibc, reqs, pins)
    final = cache_root() / f"wheels-{key}"
    tmp = _part(final)
    if tmp is None:
        return final
    site = tmp / f"usr/local/lib/python{py}/dist-packages"
    site.mkdir(parents=True)
    log(f"placing the aarch64 wheels for Python {py} ({', '.join(pins) or 'unpinned'})")
    t = time.monotonic()
    constraints = tmp / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    _pip_target(["-c", str(constraints), *reqs], site, py, glibc, "pip install (aarch64 wheels)")
    constraints.unlink()
    (tmp / ".edgeclf-done").write_text(json.dumps({"python": py, "requirements": reqs, "pins": pins,
                                                   "seconds": round(time.monotonic() - t, 1)}) + "\n")
    _replace_dir(tmp, final)
    return final


def package_key() -> str:
    """A hash of what ``pip install <checkout>`` installs: the package sources and their metadata."""
    h = hashlib.sha256()
    for p in sorted((REPO / "edgeclf").rglob("*.py")):
        h.update(str(p.relative_to(REPO)).encode())
        h.update(p.read_bytes())
    h.update((REPO / "pyproject.toml").read_bytes())
    return h.hexdigest()[:16]


def edgeclf_layer(rootfs: Path, log) -> Path:
    """This checkout's edgeclf, as a wheel installed there (no dependencies: they are the wheels layer)."""
    if not (REPO / "pyproject.toml").is_file():
        raise DeviceError(f"{REPO}: not an edgeclf checkout (no pyproject.toml): run scripts/arm-device.sh from one")
    py, glibc = rootfs_python(rootfs), rootfs_glibc(rootfs)
    final = cache_root() / f"edgeclf-{package_key()}-py{py}"
    tmp = _part(final)
    if tmp is None:
        return final
    build = tmp / "build"
    src = build / "src"
    shutil.copytree(REPO / "edgeclf", src / "edgeclf", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    log("building this checkout's edgeclf wheel")
    t = time.monotonic()
    run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--quiet", "--no-deps", "-w",
          str(build / "dist"), str(src)], "pip wheel edgeclf", timeout=900)
    wheel = next((build / "dist").glob("edgeclf-*.whl"))
    _pip_target(["--no-deps", str(wheel)], tmp / f"usr/local/lib/python{py}/dist-packages", py, glibc,
                "pip install edgeclf (aarch64)")
    shutil.rmtree(build)
    (tmp / ".edgeclf-done").write_text(json.dumps({"wheel": wheel.name, "seconds": round(time.monotonic() - t, 1)})
                                       + "\n")
    _replace_dir(tmp, final)
    return final
