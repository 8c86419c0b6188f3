"""The fingerprint of the machine a bench runs on: what decides the numbers it measures.

CPU model (on ARM the core, from the CPU part number, and the board, from the device tree), cores, the
ISA features that decide int8 speed, memory, OS, Python, the inference runtimes' versions, the CPU
frequency governor, temperatures, and throttling where the board reports it (Raspberry Pi:
``vcgencmd get_throttled``). Linux reads ``/proc`` and ``/sys``; elsewhere what :mod:`platform` knows.

An int8 model is faster than its float original only where the CPU has an int8 dot-product path:
x86 AVX-512 VNNI, AVX-VNNI or AMX; ARM the dot-product instructions (``asimddp``, Armv8.2+, e.g.
Cortex-A76 in a Raspberry Pi 5, A78AE in a Jetson Orin) or the int8 matrix multiply (``i8mm``). Without
it (a Pi 4's Cortex-A72, a Jetson Nano's A57, x86 with AVX2 only) int8 buys size, not speed.

Pure parsing (:func:`parse_cpuinfo`, :func:`decode_throttled`, :func:`parse_meminfo`) is separate from
reading the machine (:func:`fingerprint`), so it is tested on sample texts. No TensorFlow, no psutil.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

# ISA features reported, per architecture family (names as in /proc/cpuinfo "flags" / "Features").
X86_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
                "amx_bf16")
ARM_FEATURES = ("asimd", "asimdhp", "asimddp", "i8mm", "bf16", "sve", "sve2")
# The int8 dot-product path: any of these makes int8 convolutions faster than float ones.
INT8_DOT = {"x86": ("avx512_vnni", "avx_vnni", "amx_int8"), "arm": ("asimddp", "i8mm")}

# ARM "CPU implementer" 0x41 (Arm Ltd) "CPU part" -> core; 0x4e (NVIDIA) for Jetson Xavier's Carmel.
ARM_CORES = {
    (0x41, 0xd03): "Cortex-A53", (0x41, 0xd04): "Cortex-A35", (0x41, 0xd05): "Cortex-A55",
    (0x41, 0xd07): "Cortex-A57", (0x41, 0xd08): "Cortex-A72", (0x41, 0xd09): "Cortex-A73",
    (0x41, 0xd0a): "Cortex-A75", (0x41, 0xd0b): "Cortex-A76", (0x41, 0xd0c): "Neoverse-N1",
    (0x41, 0xd0d): "Cortex-A77", (0x41, 0xd40): "Neoverse-V1", (0x41, 0xd41): "Cortex-A78",
    (0x41, 0xd42): "Cortex-A78AE", (0x41, 0xd44): "Cortex-X1", (0x41, 0xd46): "Cortex-A510",
    (0x41, 0xd47): "Cortex-A710", (0x41, 0xd48): "Cortex-X2", (0x41, 0xd49): "Neoverse-N2",
    (0x41, 0xd4b): "Cortex-A78C", (0x41, 0xd4d): "Cortex-A715", (0x41, 0xd4e): "Cortex-X3",
    (0x41, 0xd4f): "Neoverse-V2", (0x41, 0xd80): "Cortex-A520", (0x41, 0xd81): "Cortex-A720",
    (0x4e, 0x004): "NVIDIA Carmel",
}
# Linux arm64 AT_HWCAP / AT_HWCAP2 bits, in order, named as /proc/cpuinfo's "Features" names them
# (arch/arm64/include/uapi/asm/hwcap.h): what the runtimes' kernels look at to choose their int8 code.
HWCAP_NAMES = ("fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp",
               "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4", "asimddp", "sha512",
               "sve", "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb", "paca", "pacg")
HWCAP2_NAMES = ("dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2", "frint",
                "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh", "rng", "bti", "mte", "ecv",
                "afp", "rpres", "mte3", "sme", "sme_i16i64", "sme_f64f64", "sme_i8i32", "sme_f16f32",
                "sme_b16f32", "sme_f32f32", "sme_fa64", "wfxt")


def hwcap_features(hwcap: int, hwcap2: int = 0) -> list[str]:
    """AT_HWCAP/AT_HWCAP2 -> the feature names /proc/cpuinfo lists for them, in the kernel's order."""
    return [n for i, n in enumerate(HWCAP_NAMES) if hwcap >> i & 1] + \
           [n for i, n in enumerate(HWCAP2_NAMES) if hwcap2 >> i & 1]


def read_hwcap() -> tuple[int, int] | None:
    """This process's AT_HWCAP and AT_HWCAP2 (Linux, through libc's getauxval), or None."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        libc.getauxval.argtypes = [ctypes.c_ulong]
        return int(libc.getauxval(16)), int(libc.getauxval(26))  # AT_HWCAP, AT_HWCAP2
    except (OSError, AttributeError):
        return None


def read_midr() -> int | None:
    """MIDR_EL1 (implementer, part, revision) of an arm64 Linux CPU, read with the MRS instruction, which the
    kernel (and QEMU) emulate for user space when HWCAP_CPUID (bit 11) is set; None elsewhere."""
    hwcaps = read_hwcap()
    if not hwcaps or not hwcaps[0] >> 11 & 1 or not platform.machine().lower().startswith("aarch64"):
        return None
    import ctypes
    import mmap

    buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    buf.write((0xd5380000).to_bytes(4, "little") + (0xd65f03c0).to_bytes(4, "little"))  # mrs x0, midr_el1; ret
    return int(ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))())


def emulation() -> dict | None:
    """How this process is emulated, when it is: ``scripts/arm-device.sh`` devices say so in the file that
    ``$EDGECLF_EMULATION`` names; any QEMU user-mode process has ``$QEMU_CPU`` or is an ARM process that
    reads an x86 ``/proc/cpuinfo`` (QEMU before 8.2 passes the host's through). None on real hardware."""
    import json

    path = os.environ.get("EDGECLF_EMULATION")
    if path:
        try:
            return json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
    cpu = os.environ.get("QEMU_CPU")
    machine = platform.machine().lower()
    host_x86 = machine.startswith(("aarch64", "arm")) and "vendor_id" in (_read("/proc/cpuinfo") or "")
    if cpu or host_x86:
        return {"emulator": "qemu-user", "cpu": cpu or "default", "host_machine": "x86_64" if host_x86 else None}
    return None


# vcgencmd get_throttled bits (Raspberry Pi firmware)
THROTTLED_BITS = {0: "under-voltage", 1: "ARM frequency capped", 2: "throttled", 3: "soft temperature limit"}
OCCURRED_SHIFT = 16  # the same four conditions, "has occurred since boot"

RUNTIME_PACKAGES = ("edgeclf", "numpy", "ai-edge-litert", "tflite-runtime", "onnxruntime", "onnxruntime-gpu",
                    "opencv-python-headless", "opencv-python", "opencv-contrib-python")


def _int(text: str) -> int | None:
    try:
        return int(text, 0)
    except (TypeError, ValueError):
        return None


def parse_cpuinfo(text: str, machine: str = "") -> dict:
    """``/proc/cpuinfo`` -> {"cpu", "arch", "features", "int8_dot", "logical_cpus"}.

    ``arch`` is "x86" or "arm" (from the text; ``machine`` as in ``platform.machine()`` breaks a tie);
    ``features`` lists the ISA features of :data:`X86_FEATURES` / :data:`ARM_FEATURES` present;
    ``int8_dot`` says whether the int8 dot-product path is there. A big.LITTLE chip lists every core:
    the CPU name joins the distinct cores, features are those all cores share.
    """
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    header: dict[str, str] = {}  # lines outside processor blocks (ARM's "Hardware", "Model")
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "processor" and current and "processor" in current:
            blocks.append(current)
            current = {}
        current.setdefault(key, value)
    if current:
        blocks.append(current)
    cpus = [b for b in blocks if "processor" in b]
    for b in blocks:
        if "processor" not in b:
            header.update(b)
    flag_sets = [set((b.get("flags") or b.get("features") or "").split()) for b in cpus] or [set()]
    common = set.intersection(*flag_sets)
    is_x86 = any("flags" in b for b in cpus) or any("vendor_id" in b for b in cpus)
    is_arm = any("cpu implementer" in b for b in cpus) or any("features" in b for b in cpus)
    arch = "x86" if is_x86 else "arm" if is_arm else \
        ("arm" if machine.lower().startswith(("arm", "aarch")) else "x86" if machine else "")
    if arch == "x86":
        names = [b.get("model name", "") for b in cpus]
        wanted = X86_FEATURES
    else:
        names = []
        for b in cpus:
            impl, part = _int(b.get("cpu implementer", "")), _int(b.get("cpu part", ""))
            core = ARM_CORES.get((impl, part)) if impl is not None and part is not None else None
            names.append(core or (f"ARM part {b['cpu part']}" if b.get("cpu part") else b.get("model name", "")))
        wanted = ARM_FEATURES
    distinct = [n for n in dict.fromkeys(names) if n]
    counts = {n: names.count(n) for n in distinct}
    cpu = " + ".join(f"{counts[n]}x {n}" if len(distinct) > 1 else n for n in distinct)
    board = header.get("model") or header.get("hardware") or ""
    if not cpu:
        cpu = board
    features = [f for f in wanted if f in common]
    dot = INT8_DOT.get(arch, ())
    return {"cpu": cpu, "arch": arch, "features": features, "int8_dot": any(f in common for f in dot),
            "logical_cpus": len(cpus), "board": board if arch == "arm" else ""}


def decode_throttled(text: str) -> dict | None:
    """``vcgencmd get_throttled`` output (``throttled=0x50000``) -> {"raw", "now", "since_boot"}."""
    m = re.search(r"throttled=(0x[0-9a-fA-F]+|\d+)", text or "")
    if not m:
        return None
    value = int(m.group(1), 0)
    now = [name for bit, name in THROTTLED_BITS.items() if value & (1 << bit)]
    since = [name for bit, name in THROTTLED_BITS.items() if value & (1 << (bit + OCCURRED_SHIFT))]
    return {"raw": hex(value), "now": now, "since_boot": since}


def parse_meminfo(text: str) -> dict:
    """``/proc/meminfo`` -> {"memory_mib", "memory_available_mib"} (those it finds)."""
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if key in ("MemTotal", "MemAvailable") and parts and parts[0].isdigit():
            out["memory_mib" if key == "MemTotal" else "memory_available_mib"] = int(parts[0]) // 1024
    return out


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip("\x00\n ")
    except OSError:
        return None


def thermal() -> dict:
    """{"temps_c": {zone type: °C}, "throttled": decoded vcgencmd or None}: what may change during a bench."""
    temps: dict[str, float] = {}
    for zone in sorted(Path("/sys/class/thermal").glob("thermal_zone*")):
        raw = _read(zone / "temp")
        value = _int(raw) if raw else None
        if value is None:
            continue
        name = _read(zone / "type") or zone.name
        if name in temps:
            name = f"{name} ({zone.name})"
        temps[name] = round(value / 1000.0, 1)
    throttled = None
    vcgencmd = shutil.which("vcgencmd")
    if vcgencmd:
        try:
            proc = subprocess.run([vcgencmd, "get_throttled"], capture_output=True, text=True, timeout=5)
            throttled = decode_throttled(proc.stdout)
        except (OSError, subprocess.SubprocessError):
            pass
    return {"temps_c": temps, "throttled": throttled}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in RUNTIME_PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _os_name() -> str:
    text = _read("/etc/os-release") or ""
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.M)
    return m.group(1) if m else platform.system()


def fingerprint() -> dict:
    """This machine, as the bench report shows it (JSON-ready)."""
    from edgeclf.runtime.backends import default_threads

    machine = platform.machine()
    info = parse_cpuinfo(_read("/proc/cpuinfo") or "", machine)
    hwcaps = read_hwcap() if machine.lower().startswith(("aarch64", "arm")) else None
    if hwcaps and info["arch"] != "arm":  # an ARM process shown the host's x86 cpuinfo: trust the auxv
        names = set(hwcap_features(*hwcaps))
        info = {**info, "arch": "arm", "cpu": "", "board": "", "features": [f for f in ARM_FEATURES if f in names],
                "int8_dot": any(f in names for f in INT8_DOT["arm"])}
    cpufreq = Path("/sys/devices/system/cpu/cpu0/cpufreq")
    max_khz = _int(_read(cpufreq / "cpuinfo_max_freq") or "")
    fp = {
        "hostname": platform.node(),
        "cpu": info["cpu"] or platform.processor() or machine,
        "board": _read("/proc/device-tree/model") or info["board"],
        "machine": machine,
        "arch": info["arch"],
        "cores": os.cpu_count(),
        "usable_cores": default_threads(),
        "features": info["features"],
        "int8_dot": info["int8_dot"],
        **parse_meminfo(_read("/proc/meminfo") or ""),
        "os": platform.platform(),
        "os_name": _os_name(),
        "python": platform.python_version(),
        "versions": _versions(),
        "hwcap": [hex(h) for h in hwcaps] if hwcaps else None,
        "emulation": emulation(),
        "governor": _read(cpufreq / "scaling_governor"),
        "max_mhz": round(max_khz / 1000) if max_khz else None,
        **thermal(),
    }
    return fp


def emulation_text(fp: dict) -> str | None:
    """"emulated by qemu-user 7.2 (cortex-a72) on x86_64 AMD EPYC", or None for real hardware."""
    emu = fp.get("emulation")
    if not emu:
        return None
    host = " ".join(str(x) for x in (emu.get("host_machine"), emu.get("host_cpu")) if x) or "another machine"
    return f"emulated by {emu.get('emulator') or 'QEMU'} ({emu.get('cpu') or 'default CPU'}) on {host}"


def int8_note(name: str, fp: dict) -> str | None:
    """The report's sentence on int8 speed from ``fp``'s ISA features: none on x86 with an int8 dot product."""
    if not fp.get("arch"):
        return None
    emulated = " (emulated here: measure the speed on the board itself)" if fp.get("emulation") else ""
    if fp.get("int8_dot"):
        if fp["arch"] != "arm":
            return None
        have = " and ".join(f for f in ("asimddp", "i8mm") if f in (fp.get("features") or [])) or "dot product"
        return (f"{name}: {fp.get('cpu') or 'the CPU'} has int8 dot-product instructions ({have}): int8 models "
                f"should run faster than fp32 there{emulated}")
    path = "AVX-512 VNNI, AVX-VNNI or AMX" if fp["arch"] == "x86" else "asimddp or i8mm"
    return (f"{name}: {fp.get('cpu') or 'the CPU'} has no int8 dot-product instructions ({path}): "
            f"int8 models are for size there, not speed{emulated}")


def summary(fp: dict) -> str:
    """One line: CPU, cores, features, memory, OS, Python, governor, temperature, throttling."""
    parts = [fp.get("cpu") or "?"]
    emulated = emulation_text(fp)
    if emulated:
        parts.append(f"{emulated} (not the device's speed)")
    if fp.get("board"):
        parts.append(fp["board"])
    parts.append(f"{fp.get('cores')} cores ({fp.get('usable_cores')} usable)")
    parts.append(f"{fp.get('arch') or fp.get('machine')}: {' '.join(fp.get('features') or []) or 'no SIMD features read'}"
                 f"; int8 dot product: {'yes' if fp.get('int8_dot') else 'no'}")
    if fp.get("memory_mib"):
        parts.append(f"{fp['memory_mib'] / 1024:.1f} GiB RAM")
    parts.append(fp.get("os_name") or fp.get("os") or "")
    parts.append(f"Python {fp.get('python')}")
    if fp.get("governor"):
        parts.append(f"governor {fp['governor']}" + (f" (max {fp['max_mhz']} MHz)" if fp.get("max_mhz") else ""))
    temps = fp.get("temps_c") or {}
    if temps:
        parts.append(f"{max(temps.values()):.0f} °C")
    thr = fp.get("throttled")
    if thr:
        parts.append("throttled now: " + (", ".join(thr["now"]) or "no") +
                     (f"; since boot: {', '.join(thr['since_boot'])}" if thr["since_boot"] else ""))
    versions = fp.get("versions") or {}
    if versions:
        parts.append(", ".join(f"{k} {v}" for k, v in versions.items()))
    return "; ".join(p for p in parts if p)
