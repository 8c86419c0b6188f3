"""An emulated 64-bit ARM board on this x86 machine, for ``edgeclf bench --remote`` (``scripts/arm-device.sh``).

    scripts/arm-device.sh start --cpu cortex-a72 --name pi4     # a Raspberry Pi 4 class CPU (no dot product)
    edgeclf bench runs/train/exp/export --data photos/ --remote pi4
    scripts/arm-device.sh stop --name pi4                       # or: stop --all; list

A device is a Debian arm64 root filesystem with python3, openssh-server, this checkout's ``edgeclf[runtime]``
and the real aarch64 wheels pip would put on a Pi (:mod:`edgeclf.bench.armlayers`, built once and cached),
seen through a writable overlay of its own. Its own sshd runs there (chroot) under QEMU user mode with the
CPU model ``--cpu`` chooses (``QEMU_CPU``, also set for every login), on a free 127.0.0.1 port, with a
throwaway host key and user key; ``Host NAME`` goes into ``~/.ssh/config`` in a marked block of its own.

Inside, ``platform.machine()`` is aarch64 and the wheels see the emulated CPU's features (AT_HWCAP):
cortex-a72 has no ``asimddp``, cortex-a76 has it, ``max`` has ``i8mm`` and SVE too. QEMU 7.2 (Debian 12)
shows the host's x86 ``/proc/cpuinfo`` to ARM processes, which the runtimes' CPU detection would misread:
each device sees a ``/proc/cpuinfo`` written from the emulated CPU's own AT_HWCAP and MIDR, in the Linux
kernel's format (QEMU 8.2 and later do the same themselves). ``$EDGECLF_EMULATION`` names a JSON file that
says the device is emulated and on what: the bench fingerprint records it. An emulated device proves the
install and the ARM kernels' answers (accuracy); its latency and memory are never a board's.

Needs root (binfmt_misc, chroot, mounts), ``qemu-user-static`` and ``mmdebstrap`` (Debian packages). Runs only
what it started, on loopback only; ``stop`` ends every process inside the device and unmounts it.
Standard library only: runs with the system's python3 too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgeclf.bench import armlayers as layers
from edgeclf.bench.armlayers import DeviceError
from edgeclf.bench.fingerprint import hwcap_features

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
BLOCK_BEGIN = "# >>> edgeclf arm-device {name} (scripts/arm-device.sh stop --name {name} removes it) >>>"
BLOCK_END = "# <<< edgeclf arm-device {name} <<<"
START_TIMEOUT = 180  # seconds for the emulated sshd to listen and a first login to import the runtimes
INSIDE = "/etc/edgeclf"  # the device's own files, inside its root
STATE = "device.json"

# Run inside at start (the device has edgeclf): what the emulated CPU reports (AT_HWCAP, AT_HWCAP2, MIDR_EL1)
CPU_PROBE = ("import json, os; from edgeclf.bench.fingerprint import read_hwcap, read_midr; h = read_hwcap(); "
             "print(json.dumps({'hwcap': h[0], 'hwcap2': h[1], 'midr': read_midr(), 'cpus': os.cpu_count()}))")


@dataclass
class Device:
    name: str
    cpu: str
    port: int
    folder: str  # devices/NAME: keys, state, the overlay's upper and work folders
    root: str  # what the device's processes see as /
    mounts: list  # mount points, in the order they were mounted
    pid: int | None = None  # the emulated sshd
    ssh_config: str = ""
    started: str = ""

    def save(self) -> None:
        from edgeclf.fsutil import write_json

        write_json(Path(self.folder) / STATE, asdict(self))

    @classmethod
    def load(cls, folder: Path) -> Device | None:
        try:
            return cls(**json.loads((folder / STATE).read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None


def cpuinfo_text(hwcap: int, hwcap2: int, midr: int | None, cpus: int) -> str:
    """``/proc/cpuinfo`` as the arm64 Linux kernel writes it, for a CPU with these registers."""
    midr = midr or 0
    block = (f"Features\t: {' '.join(hwcap_features(hwcap, hwcap2))}\n"
             f"CPU implementer\t: 0x{midr >> 24 & 0xff:02x}\nCPU architecture: 8\n"
             f"CPU variant\t: 0x{midr >> 20 & 0xf:x}\nCPU part\t: 0x{midr >> 4 & 0xfff:03x}\n"
             f"CPU revision\t: {midr & 0xf}\n\n")
    return "".join(f"processor\t: {i}\n{block}" for i in range(max(1, cpus)))


def client_user() -> pwd.struct_passwd:
    """Who will run ``edgeclf bench --remote NAME``: the user who ran sudo, else this one."""
    if os.getuid() == 0 and os.environ.get("SUDO_UID", "").isdigit():
        try:
            return pwd.getpwuid(int(os.environ["SUDO_UID"]))
        except KeyError:
            pass
    return pwd.getpwuid(os.getuid())


def ssh_config_path() -> Path:
    """The OpenSSH client reads ``~/.ssh/config`` from the passwd home, not ``$HOME``."""
    return Path(client_user().pw_dir) / ".ssh" / "config"


def _give(path: Path) -> None:
    """Files the client reads belong to the client user (started with sudo: to the user who ran it)."""
    user = client_user()
    if os.getuid() == 0 and user.pw_uid != 0:
        os.chown(path, user.pw_uid, user.pw_gid)


def _without_block(text: str, name: str) -> str:
    begin, end = BLOCK_BEGIN.format(name=name), BLOCK_END.format(name=name)
    out, skipping = [], False
    for line in text.splitlines(keepends=True):
        if line.rstrip("\n") == begin:
            skipping = True
        elif skipping and line.rstrip("\n") == end:
            skipping = False
        elif not skipping:
            out.append(line)
    return "".join(out)


def write_ssh_block(config: Path, name: str, body: str | None) -> None:
    """Put (``body``) or remove (None) the marked ``Host NAME`` block; first in the file, where ssh looks first."""
    from edgeclf.fsutil import write_text

    text = config.read_text(encoding="utf-8") if config.is_file() else ""
    rest = _without_block(text, name)
    if body is None and rest == text:
        return
    if body is not None:
        rest = f"{BLOCK_BEGIN.format(name=name)}\n{body}{BLOCK_END.format(name=name)}\n{rest}"
    config.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _give(config.parent)
    write_text(config, rest)
    os.chmod(config, 0o600)
    _give(config)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    status = Path(f"/proc/{pid}/stat")
    return not (status.is_file() and status.read_text().split(")")[-1].split()[0] == "Z")


def processes_in(root: str) -> list[int]:
    """Every process whose / is ``root`` (the device's sshd, its logins and whatever they started)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if os.readlink(entry / "root") == root:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _mount(args: list[str], what: str) -> None:
    layers.run(["mount", *args], what, timeout=60)


def _unmount(point: str) -> None:
    if subprocess.run(["umount", point], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", point], capture_output=True)  # still busy: detach it now


def _chroot() -> str:
    return shutil.which("chroot") or "/usr/sbin/chroot"  # looked up here: the device's PATH is not this one's


def _host_cpu() -> str:
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(errors="replace"), re.M)
        return m.group(1).strip() if m else ""
    except OSError:
        return ""


def _keygen(path: Path) -> None:
    for p in (path, path.with_suffix(".pub")):
        p.unlink(missing_ok=True)
    layers.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"edgeclf-{path.name}", "-f", str(path)],
               "ssh-keygen", timeout=60)


def _prepare_root(device: Device, rootfs: Path, stack: list[Path]) -> None:
    """The device's root: an overlay of the layers over its own writable folder (a copy where overlayfs is
    not allowed), with /proc, /dev, /sys and a /proc/cpuinfo of the emulated CPU."""
    folder, root = Path(device.folder), Path(device.root)
    for sub in ("upper", "work", "root"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    lower = ":".join(str(p) for p in [*stack, rootfs])
    overlay = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                              f"lowerdir={lower},upperdir={folder / 'upper'},workdir={folder / 'work'}", str(root)],
                             capture_output=True, text=True)
    if overlay.returncode == 0:
        device.mounts.append(str(root))
    else:  # no overlayfs here (e.g. inside some containers): a plain copy, slower but the same
        for layer in (rootfs, *reversed(stack)):
            layers.run(["cp", "-a", f"{layer}/.", str(root)], f"copying {layer.name}", timeout=900)
    device.save()
    _mount(["-t", "proc", "proc", str(root / "proc")], "mounting /proc in the device")
    device.mounts.append(str(root / "proc"))
    _mount(["--bind", "/dev", str(root / "dev")], "mounting /dev in the device")
    device.mounts.append(str(root / "dev"))
    # /sys: the runtimes' CPU detection (pytorch/cpuinfo in ONNX Runtime and XNNPACK) reads the CPU lists there;
    # without them ONNX Runtime reports "Unknown CPU vendor" and may choose other kernels than on a board
    _mount(["-o", "bind,ro", "/sys", str(root / "sys")], "mounting /sys in the device")
    device.mounts.append(str(root / "sys"))
    device.save()
    env = {"PATH": "/usr/bin:/bin", "QEMU_CPU": device.cpu, "LANG": "C.UTF-8"}
    probe = json.loads(layers.run([_chroot(), str(root), "/usr/bin/python3", "-c", CPU_PROBE], "the CPU probe",
                                  timeout=120, env=env).stdout)
    (folder / "cpuinfo").write_text(cpuinfo_text(probe["hwcap"], probe["hwcap2"], probe["midr"], probe["cpus"]))
    _mount(["--bind", str(folder / "cpuinfo"), str(root / "proc/cpuinfo")], "mounting the device's /proc/cpuinfo")
    device.mounts.append(str(root / "proc/cpuinfo"))
    device.save()
    inside = root / INSIDE.lstrip("/")
    inside.mkdir(parents=True, exist_ok=True)
    emulation = {"emulator": f"qemu-user {layers.qemu_version(layers.qemu_binary())}", "cpu": device.cpu,
                 "host_machine": platform.machine(), "host_cpu": _host_cpu(), "device": device.name,
                 "hwcap": hex(probe["hwcap"]), "hwcap2": hex(probe["hwcap2"]),
                 "midr": hex(probe["midr"]) if probe["midr"] is not None else None,
                 "cpuinfo": "written from the emulated CPU's AT_HWCAP and MIDR by scripts/arm-device.sh"}
    (inside / "emulation.json").write_text(json.dumps(emulation, indent=1) + "\n")


def client_dir(device: Device) -> Path:
    """The client's side of the device (its key, the device's host key) beside the ssh config that names them."""
    return Path(device.ssh_config).parent / "edgeclf-arm" / device.name


def _start_sshd(device: Device) -> None:
    folder, root = Path(device.folder), Path(device.root)
    inside = root / INSIDE.lstrip("/")
    client = client_dir(device)
    client.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # ~/.ssh
    client.mkdir(mode=0o700, parents=True, exist_ok=True)
    for d in (client.parent.parent, client.parent, client):
        _give(d)
    _keygen(folder / "host_key")
    _keygen(client / "user_key")
    shutil.copy(folder / "host_key", inside / "host_key")
    os.chmod(inside / "host_key", 0o600)
    shutil.copy(client / "user_key.pub", inside / "authorized_keys")
    (root / "run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    (inside / "sshd_config").write_text(
        f"Port {device.port}\nListenAddress 127.0.0.1\nHostKey {INSIDE}/host_key\n"
        f"AuthorizedKeysFile {INSIDE}/authorized_keys\nPermitRootLogin prohibit-password\nStrictModes no\n"
        f"PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"PrintMotd no\nPidFile /run/edgeclf-sshd.pid\nLogLevel ERROR\n"
        f"SetEnv QEMU_CPU={device.cpu} EDGECLF_EMULATION={INSIDE}/emulation.json\n")
    with open(folder / "sshd.log", "ab") as log:
        proc = subprocess.Popen([_chroot(), str(root), "/usr/sbin/sshd", "-D", "-e", "-f", f"{INSIDE}/sshd_config"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "QEMU_CPU": device.cpu,
                                     "LANG": "C.UTF-8"})
    device.pid = proc.pid
    device.save()
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            tail = (folder / "sshd.log").read_text(errors="replace").strip().splitlines()
            raise DeviceError(f"the device's sshd exited ({proc.returncode}): {tail[-1] if tail else 'no output'}")
        try:
            with socket.create_connection(("127.0.0.1", device.port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise DeviceError(f"the device's sshd does not listen on 127.0.0.1:{device.port} after "
                                  f"{START_TIMEOUT} s") from None
            time.sleep(0.2)
    host_key = (folder / "host_key.pub").read_text().split()
    (client / "known_hosts").write_text(f"[127.0.0.1]:{device.port} {host_key[0]} {host_key[1]}\n")
    for f in ("user_key", "user_key.pub", "known_hosts"):
        _give(client / f)


def ssh_block(device: Device) -> str:
    client = client_dir(device)
    return (f"Host {device.name}\n  HostName 127.0.0.1\n  Port {device.port}\n  User root\n"
            f"  IdentityFile {client / 'user_key'}\n  IdentitiesOnly yes\n  UserKnownHostsFile {client / 'known_hosts'}\n"
            f"  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  PasswordAuthentication no\n")


def probe(device: Device) -> dict:
    """What ``edgeclf bench --remote NAME`` will find: a login through ~/.ssh/config (as the client user), then
    the bench probe."""
    user = client_user()
    as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user.pw_uid != os.getuid() else {}
    proc = layers.run(["ssh", "-F", device.ssh_config, "-o", "BatchMode=yes", device.name,
                       "cd / && python3 -m edgeclf.bench.agent probe"], f"ssh {device.name} (first login)",
                      timeout=START_TIMEOUT, **as_user)
    line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
    if line is None:
        raise DeviceError(f"{device.name}: the bench probe printed nothing")
    return json.loads(line)


def start(name: str, cpu: str, port: int | None = None, ssh_config: Path | None = None, log=print) -> dict:
    """Start the device (building what is not cached yet); returns its bench probe (fingerprint included)."""
    if not NAME_RE.fullmatch(name or ""):
        raise DeviceError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (it becomes an ssh Host name)")
    qemu = layers.qemu_binary()
    cpus = layers.qemu_cpus(qemu)
    if (cpu or "").split(",")[0] not in cpus or not re.fullmatch(r"[A-Za-z0-9_.,=-]+", cpu):
        raise DeviceError(f"--cpu {cpu!r}: not a CPU model of this QEMU; choose one of {', '.join(cpus)} (with "
                          f"QEMU's properties after a comma, e.g. max,sve=off)")
    layers.ensure_binfmt(qemu)
    if os.geteuid() != 0:
        raise DeviceError("scripts/arm-device.sh start needs root (chroot and mounts): run it with sudo")
    if port is not None and not (0 < port < 65536 and _port_free(port)):
        raise DeviceError(f"--port {port}: 127.0.0.1:{port} is taken (or not a port); give another, or none")
    folder = layers.cache_root() / "devices" / name
    old = Device.load(folder)
    if old is not None and _alive(old.pid):
        raise DeviceError(f"{name} is already running (cpu {old.cpu}, 127.0.0.1:{old.port}): "
                          f"scripts/arm-device.sh stop --name {name} first")
    stop_device(folder)  # whatever a killed start left behind
    rootfs = layers.rootfs_layer(log)
    stack = [layers.edgeclf_layer(rootfs, log), layers.wheels_layer(rootfs, log)]
    device = Device(name, cpu, port or _free_port(), str(folder), str(folder / "root"), [],
                    ssh_config=str(ssh_config or ssh_config_path()), started=time.strftime("%Y-%m-%d %H:%M:%S"))
    try:
        _prepare_root(device, rootfs, stack)
        _start_sshd(device)
        write_ssh_block(Path(device.ssh_config), name, ssh_block(device))
        info = probe(device)
    except BaseException:
        stop_device(folder)
        raise
    return info


def stop_device(folder: Path) -> bool:
    """End every process in the device, unmount it, remove its ssh block and folder. True if there was one."""
    device = Device.load(folder)
    if device is None:
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        return False
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        pids = set(processes_in(device.root)) | ({device.pid} if _alive(device.pid) else set())
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + wait
        while (any(_alive(p) for p in pids) or processes_in(device.root)) and time.monotonic() < deadline:
            time.sleep(0.1)
    for point in reversed(device.mounts):
        _unmount(point)
    if device.ssh_config:
        write_ssh_block(Path(device.ssh_config), device.name, None)
        shutil.rmtree(client_dir(device), ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    return True


def running() -> list[Device]:
    found = []
    for folder in sorted((layers.cache_root() / "devices").glob("*")):
        device = Device.load(folder)
        if device is not None:
            found.append(device)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/arm-device.sh", description=(__doc__ or "").split("\n\n")[0] or None)
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="start an emulated ARM device and add 'Host NAME' to ~/.ssh/config")
    p_start.add_argument("--cpu", required=True, help="QEMU CPU model: cortex-a72 (Pi 4), cortex-a76 (Pi 5), max, ... "
                         "(properties after a comma: max,sve=off)")
    p_start.add_argument("--name", required=True, help="the device's name: edgeclf bench ... --remote NAME")
    p_start.add_argument("--port", type=int, default=None, help="127.0.0.1 port for its sshd (default: a free one)")
    p_stop = sub.add_parser("stop", help="stop a device (or --all) and remove its ~/.ssh/config block")
    group = p_stop.add_mutually_exclusive_group(required=True)
    group.add_argument("--name")
    group.add_argument("--all", action="store_true")
    sub.add_parser("list", help="the devices started, one line each")
    args = parser.parse_args(argv)
    log = lambda text: print(f"arm-device: {text}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        if args.command == "start":
            t = time.monotonic()
            info = start(args.name, args.cpu, args.port, log=log)
            from edgeclf.bench.fingerprint import summary

            device = Device.load(layers.cache_root() / "devices" / args.name)
            print(f"{args.name}: ready in {time.monotonic() - t:.0f} s on 127.0.0.1:{device.port}; edgeclf "
                  f"{info.get('edgeclf')}, {info['fingerprint'].get('machine')}: {summary(info['fingerprint'])}")
            print(f"  edgeclf bench EXPORT --data DATA --remote {args.name}")
        elif args.command == "stop":
            if args.all:
                devices = running()
                for d in devices:
                    stop_device(Path(d.folder))
                    print(f"{d.name}: stopped")
                if not devices:
                    print("no device was running")
            else:
                folder = layers.cache_root() / "devices" / args.name
                if not stop_device(folder):
                    raise DeviceError(f"--name {args.name}: no such device (scripts/arm-device.sh list)")
                print(f"{args.name}: stopped")
        else:
            for d in running():
                print(f"{d.name}\t{d.cpu}\t127.0.0.1:{d.port}\t{'running' if _alive(d.pid) else 'not running'}")
    except DeviceError as exc:
        print(f"arm-device: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("arm-device: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
