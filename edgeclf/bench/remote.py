"""``edgeclf bench --remote [user@]host[:port]``: measure on a Raspberry Pi or Jetson from the workstation.

Through the system's OpenSSH client (``ssh``), so ``~/.ssh/config``, agents, keys and jump hosts work as
they do for the user; ``BatchMode=yes`` (never a password prompt: set up a key, ``ssh-copy-id``).

Both commands run from ``/`` (``cd / && PYTHON ...``): Python puts the working directory first on its
path, and a home folder holding an ``edgeclf`` checkout would otherwise shadow the installed package.

1. Preflight (:meth:`RemoteDevice.preflight`): ``ssh HOST PYTHON -`` with a small script on stdin that
   reports edgeclf's version, the bench protocol, the contract schema, the installed backends and the
   device's fingerprint. One-line errors for a host that cannot be reached, a key that is refused, an
   interpreter that is missing, no edgeclf or an incompatible one there (with the exact ``pip install``).
2. Run (:meth:`RemoteDevice.run`): ``ssh HOST PYTHON -m edgeclf.bench.agent serve``, a tar stream on its
   stdin (the plan, the export folders' files the plan uses, the validation images as decoded here, and
   with ``--decode-on device`` the photos themselves, for the device to decode with its own OpenCV),
   one JSON event per finished job back on stdout, as it happens. The device unpacks into a temporary
   folder and removes it (:mod:`edgeclf.bench.agent`).
"""
from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeclf.errors import EdgeclfError
from edgeclf.log import get_logger

log = get_logger(__name__)

SSH = "ssh"
# Always: never prompt (a bench has no terminal to answer on), give up on a dead host, notice a dead link.
SSH_DEFAULTS = ("BatchMode=yes", "ConnectTimeout=15", "ServerAliveInterval=15", "ServerAliveCountMax=4",
                "LogLevel=ERROR")
PROBE_TIMEOUT = 120  # seconds: connecting, starting Python and importing the runtimes on a slow board

PROBE_SCRIPT = r"""
import json, sys
try:
    import edgeclf
except ImportError:
    print(json.dumps({"edgeclf": None, "python": sys.version.split()[0], "executable": sys.executable}))
    sys.exit(0)
try:
    from edgeclf.bench import agent
except ImportError as exc:
    try:
        from importlib.metadata import version
        v = version("edgeclf")
    except Exception:
        v = "unknown"
    print(json.dumps({"edgeclf": v, "protocol": None, "python": sys.version.split()[0], "error": str(exc)}))
    sys.exit(0)
print(json.dumps(agent.probe()))
"""


class RemoteError(EdgeclfError):
    """A remote device that cannot be used (unreachable, key refused, no or another edgeclf)."""


@dataclass(frozen=True)
class Host:
    user: str | None
    host: str
    port: int | None
    text: str  # as given: the device's name in the report

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host


def parse_host(text: str) -> Host:
    """``[user@]host[:port]`` (``[user@][v6addr]:port`` for IPv6)."""
    raw = (text or "").strip()
    m = re.fullmatch(r"(?:([^@\s:/]+)@)?(\[[0-9A-Fa-f:.]+\]|[^@\s:/\[\]]+)(?::(\d+))?", raw)
    if not m:
        raise EdgeclfError(f"--remote {text!r}: expected [user@]host[:port], e.g. pi@raspberrypi.local or "
                           f"pi@192.168.1.20:2222")
    user, host, port = m.groups()
    if port is not None and not 0 < int(port) < 65536:
        raise EdgeclfError(f"--remote {text!r}: port {port} is not between 1 and 65535")
    return Host(user, host.strip("[]"), int(port) if port else None, raw)


def remote_word(path: str) -> str:
    """``path`` quoted for the remote shell, a leading ``~/`` left for it to expand."""
    if path == "~" or path.startswith("~/"):
        return "~" + (shlex.quote(path[1:]) if len(path) > 1 else "")
    return shlex.quote(path)


def unexpand_home(path: str, home: str | None = None) -> str:
    """``/home/me/env/bin/python`` -> ``~/env/bin/python`` when it is under this machine's home.

    An unquoted ``--remote-python ~/env/bin/python`` reaches us expanded by the local shell, with the
    local home in it; on the device, the same place is under the device user's home.
    """
    home = (home or os.path.expanduser("~")).rstrip("/")
    if home and home != "/" and path.startswith(home + "/"):
        return "~" + path[len(home):]
    return path


def classify_ssh_failure(host: Host, code: int, stderr: str, python: str) -> RemoteError:
    """One line that says what went wrong, from ssh's exit code and its last words."""
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    text = " ".join(lines)
    where = f"--remote {host.text}"
    if code == 255:
        if "Permission denied" in text or "Too many authentication failures" in text:
            return RemoteError(f"{where}: authentication refused ({last}); edgeclf logs in without a password: "
                               f"set up a key with `ssh-copy-id {host.destination}`")
        if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
            return RemoteError(f"{where}: host key verification failed: connect once with `ssh "
                               f"{host.destination}` to check and accept the host key")
        reason = re.sub(r"^ssh: ", "", last) or "ssh exited with 255"
        return RemoteError(f"{where}: cannot reach the host ({reason})")
    if code == 127 or re.search(r"(command not found|No such file or directory|not found)$", last):
        return RemoteError(f"{where}: {python} not found there; give --remote-python PATH, the interpreter that "
                           f"has edgeclf[runtime] (e.g. ~/edgeclf-env/bin/python)")
    return RemoteError(f"{where}: {python} failed (exit {code}){': ' + last[:200] if last else ''}")


def install_hint(python: str) -> str:
    from importlib.metadata import version

    return f'{python} -m pip install "edgeclf[runtime]=={version("edgeclf")}"'


def check_probe(host: Host, python: str, info: dict) -> None:
    """Refuse a device whose edgeclf cannot run this bench, saying what to install there."""
    from edgeclf.bench.agent import PROTOCOL
    from edgeclf.contract import SCHEMA

    where = f"--remote {host.text}"
    if not info.get("edgeclf"):
        raise RemoteError(f"{where}: edgeclf is not installed for {python} there (Python "
                          f"{info.get('python', '?')}); run there: {install_hint(python)}")
    if info.get("protocol") != PROTOCOL or info.get("contract_schema") != SCHEMA:
        raise RemoteError(f"{where}: edgeclf {info['edgeclf']} there speaks bench protocol {info.get('protocol')}, "
                          f"contract schema {info.get('contract_schema')} (here: {PROTOCOL}, {SCHEMA}); run there: "
                          f"{install_hint(python)}")


@dataclass
class RemoteDevice:
    """One device reached over SSH."""

    host: Host
    python: str = "python3"
    ssh_options: list[str] = field(default_factory=list)  # each passed as -o OPTION
    ssh_config: str | None = None  # passed as -F FILE
    info: dict = field(default_factory=dict)  # what preflight learned (probe)
    workdir: str | None = None  # the device's temporary folder (reported by the agent)
    workdir_removed: bool | None = None
    thermal_after: dict | None = None
    bytes_sent: int = 0
    decoded: dict = field(default_factory=dict)  # --decode-on device: host image set -> how the bytes compare

    @property
    def name(self) -> str:
        return self.host.text

    def ssh_command(self, remote_command: str) -> list[str]:
        cmd = [SSH]
        if self.ssh_config:
            cmd += ["-F", str(self.ssh_config)]
        for opt in (*self.ssh_options, *SSH_DEFAULTS):  # user's options first: ssh keeps the first value
            cmd += ["-o", opt]
        if self.host.port:
            cmd += ["-p", str(self.host.port)]
        return cmd + ["--", self.host.destination, remote_command]

    def preflight(self) -> dict:
        cmd = self.ssh_command(f"cd / && {remote_word(self.python)} -")
        log.debug(f"{self.name}: connecting ({' '.join(shlex.quote(c) for c in cmd[:-1])})")
        try:
            proc = subprocess.run(cmd, input=PROBE_SCRIPT, capture_output=True, text=True, timeout=PROBE_TIMEOUT)
        except FileNotFoundError:
            raise RemoteError("--remote needs the OpenSSH client (ssh) on this machine: apt install "
                              "openssh-client") from None
        except subprocess.TimeoutExpired:
            raise RemoteError(f"--remote {self.host.text}: no answer within {PROBE_TIMEOUT} s") from None
        info = None
        for line in reversed(proc.stdout.splitlines()):  # a login script may print before our line
            if line.startswith("{"):
                try:
                    info = json.loads(line)
                    break
                except ValueError:
                    continue
        if proc.returncode != 0 or info is None:
            raise classify_ssh_failure(self.host, proc.returncode, proc.stderr, self.python)
        check_probe(self.host, self.python, info)
        self.info = info
        return info

    @property
    def fingerprint(self) -> dict:
        return self.info.get("fingerprint", {})

    @property
    def backends(self) -> dict[str, bool]:
        return self.info.get("backends", {})

    def run(self, plan: dict, files: dict[str, Path]):
        """Send ``plan`` and ``files`` (name in the tar -> local path), run it there; yields
        ``(index, worker result, probs or None, device-decoded probs or None)`` as each job finishes."""
        import numpy as np

        cmd = self.ssh_command(f"cd / && {remote_word(self.python)} -m edgeclf.bench.agent serve")
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        errors: list[str] = []
        sent: list[int] = []
        threads = [threading.Thread(target=self._send, args=(proc, plan, files, sent, errors), daemon=True),
                   threading.Thread(target=self._drain, args=(proc, errors), daemon=True)]
        for t in threads:
            t.start()
        done = False
        try:
            for raw in proc.stdout:
                try:
                    event = json.loads(raw)
                except ValueError:
                    log.debug(f"{self.name}: {raw.decode('utf-8', 'replace').rstrip()}")
                    continue
                kind = event.get("event")
                if kind == "ready":
                    self.workdir = event.get("workdir")
                    log.info(f"{self.name}: sent {event.get('bytes', 0) / 1e6:.1f} MB to {self.workdir}")
                elif kind == "decode":
                    self.decoded[event.get("label") or event["host_images"]] = event["comparison"]
                elif kind == "job":
                    probs, device_probs = event.get("probs"), event.get("device_probs")
                    yield (int(event["index"]), event["result"],
                           np.asarray(probs, dtype=np.float32) if probs is not None else None,
                           np.asarray(device_probs, dtype=np.float32) if device_probs is not None else None)
                elif kind == "thermal":
                    self.thermal_after = event.get("thermal")
                elif kind == "done":
                    self.workdir, self.workdir_removed, done = event.get("workdir"), event.get("removed"), True
            code = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted here: closing the link makes the agent clean up
                proc.kill()
                proc.wait()
        for t in threads:
            t.join(timeout=5)
        self.bytes_sent = sent[0] if sent else 0
        if not done:
            raise classify_ssh_failure(self.host, code, "\n".join(errors), self.python) if code else \
                RemoteError(f"--remote {self.host.text}: the device stopped before the end of the bench")

    def _send(self, proc, plan: dict, files: dict[str, Path], sent: list, errors: list) -> None:
        counter = _Counter(proc.stdin)
        try:
            with tarfile.open(fileobj=counter, mode="w|") as tar:
                data = json.dumps(plan).encode("utf-8")
                info = tarfile.TarInfo("plan.json")
                info.size, info.mtime = len(data), int(time.time())
                tar.addfile(info, io.BytesIO(data))
                for name, path in files.items():
                    tar.add(str(path), arcname=name, recursive=False)
        except (BrokenPipeError, OSError) as exc:  # the far end went away: its stderr says why
            errors.append(f"sending failed: {exc}")
        finally:
            sent.append(counter.count)
            try:
                proc.stdin.close()
            except OSError:
                pass

    def _drain(self, proc, errors: list) -> None:
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                errors.append(line)
                log.debug(f"{self.name}: {line}")


class _Counter(io.RawIOBase):
    """A write-only stream that counts what passes to ``inner``."""

    def __init__(self, inner):
        self.inner, self.count = inner, 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.inner.write(b)
        self.count += len(b)
        return len(b)
