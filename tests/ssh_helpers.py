"""A real OpenSSH server on the loopback interface and a device-like Python for `edgeclf bench --remote` tests.

* :func:`start_sshd`: Debian's ``/usr/sbin/sshd`` (package openssh-server; ``.ci/run`` installs it) with
  its own config (``-f``), a throwaway host key, one authorized throwaway user key, ``StrictModes no``,
  on a free port of 127.0.0.1, in the foreground (``-D``) so the test session owns and ends it. Clients
  get an ``ssh -F`` config that names the key and a known_hosts file holding the host key (the OpenSSH
  client reads ``~/.ssh/config`` from the passwd home, not ``$HOME``: the -F file replaces it).
* :func:`remote_venv`: a venv with only ``pip install "<checkout>[runtime]"`` (no TensorFlow), the
  runtimes pinned to the versions of this process's, cached in the temp folder by a hash of the package
  sources (what a Pi would have after ``pip install "edgeclf[runtime]"``).
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edgeclf.bench.armlayers import package_key, runtime_pins

REPO = Path(__file__).resolve().parents[1]
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")
DEVICE_VENV_PREFIX = "edgeclf-device-venv-"


@dataclass
class Sshd:
    process: subprocess.Popen
    port: int
    user: str
    config: Path  # ssh -F file that logs in with the authorized key
    wrong_key_config: Path  # ssh -F file with a key the server does not know
    log: Path

    @property
    def remote(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sshd_binary() -> str | None:
    return shutil.which("sshd") or next((p for p in SSHD_CANDIDATES if os.access(p, os.X_OK)), None)


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgeclf-test", "-f", str(path)],
                   check=True, capture_output=True)


def _client_config(path: Path, key: Path, known_hosts: Path) -> Path:
    path.write_text(f"Host *\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {known_hosts}\n"
                    f"  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n  PasswordAuthentication no\n")
    return path


def start_sshd(folder: Path) -> Sshd:
    binary = sshd_binary()
    if binary is None:
        raise RuntimeError("openssh-server is not installed: apt-get install -y openssh-server "
                           "(bash .ci/run installs it)")
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "user_key", "other_key"):  # fresh throwaway keys every time
        for old in (folder / name, folder / f"{name}.pub"):
            old.unlink(missing_ok=True)
        _keygen(folder / name)
    shutil.copy(folder / "user_key.pub", folder / "authorized_keys")
    port = free_port()
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # Debian's privilege separation directory
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nStrictModes no\nPubkeyAuthentication yes\n"
        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        f"UsePAM no\nPidFile {folder / 'sshd.pid'}\nLogLevel ERROR\n")
    log = folder / "sshd.log"
    proc = subprocess.Popen([binary, "-D", "-f", str(config), "-E", str(log)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited ({proc.returncode}): {log.read_text() if log.exists() else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"sshd does not listen on port {port}")
            time.sleep(0.1)
    host_key = (folder / "host_key.pub").read_text().split()
    known = folder / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    return Sshd(proc, port, getpass.getuser(), _client_config(folder / "ssh_config", folder / "user_key", known),
                _client_config(folder / "ssh_config_wrong_key", folder / "other_key", known), log)


def remote_venv(base: Path) -> Path:
    """The device's interpreter: a venv with edgeclf[runtime] only. Returns its python."""
    venv = base / f"{DEVICE_VENV_PREFIX}{package_key()}"
    python = venv / "bin" / "python"
    if (venv / "DONE").is_file():
        return python
    for old in base.glob(f"{DEVICE_VENV_PREFIX}*"):  # other source versions' venvs, unused for a day
        if old != venv and time.time() - old.stat().st_mtime > 86400:
            shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    # a clean copy of the package (an in-tree build would leave build/ in the checkout)
    src = venv / "src"
    shutil.copytree(REPO / "edgeclf", src / "edgeclf", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pins = runtime_pins()
    (venv / "constraints.txt").write_text("\n".join(pins) + "\n")
    proc = subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-c",
                           str(venv / "constraints.txt"), f"{src}[runtime]"], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install {src}[runtime] failed:\n{proc.stderr[-3000:]}")
    heavy = subprocess.run([str(python), "-c", "import importlib.util as u; print([m for m in ('tensorflow', "
                            "'keras', 'tf_keras') if u.find_spec(m)])"], capture_output=True, text=True, check=True)
    if heavy.stdout.strip() != "[]":
        raise RuntimeError(f"the device venv has {heavy.stdout.strip()}: edgeclf[runtime] must not pull TensorFlow")
    (venv / "DONE").write_text("ok\n")
    return python


def bare_venv(base: Path) -> Path:
    """A Python without edgeclf (the 'not installed there' case). Returns its python."""
    venv = base / "edgeclf-bare-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    return python
