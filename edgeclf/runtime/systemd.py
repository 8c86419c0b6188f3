"""`edgeclf run` under systemd (``Type=notify``, ``WatchdogSec=``): readiness, status and a watchdog fed
only while frames flow.

systemd starts the service with ``NOTIFY_SOCKET`` (and, with ``WatchdogSec=``, ``WATCHDOG_USEC``) in its
environment; :func:`edgeclf.runtime.device.build_hub` then adds a :class:`SystemdNotifier` to the hub:

* ``READY=1`` once the first frame is classified: the model is loaded and the camera delivers (systemd
  counts the start as done only then; ``TimeoutStartSec=`` covers a camera that never delivers);
* ``STATUS=...`` now and then (frames, FPS, state; why the watchdog is not fed): ``systemctl status`` shows it;
* ``WATCHDOG=1`` every ``WATCHDOG_USEC``/2, from a thread of its own, but only while the hub is healthy (the
  latest frame is younger than ``--stall-timeout``): a camera that hangs, or a loop that is stuck, stops the
  pings, and systemd kills and restarts the service ``WatchdogSec=`` later (``Restart=on-failure``). Not when
  ``WATCHDOG_PID`` names another process;
* ``STOPPING=1`` when the run ends.

The sd_notify protocol is one datagram of ``KEY=VALUE`` lines to the AF_UNIX socket ``$NOTIFY_SOCKET`` (a
leading ``@`` means Linux's abstract namespace), written here in a few lines rather than taken from a
package: ``sdnotify`` has been unmaintained since 2017, and ``systemd-python`` needs libsystemd's headers and
a compiler to build on a Raspberry Pi. The notifier never raises into the classify loop: the loop only sets
flags, the thread sends, and a failing socket is logged once.
"""
from __future__ import annotations

import os
import socket
import threading
import time

from edgeclf.log import get_logger
from edgeclf.runtime.events import FrameResult, State
from edgeclf.runtime.hub import Hub, Listener

log = get_logger(__name__)

STATUS_EVERY = 10.0  # seconds between STATUS= updates while nothing changes


def socket_address(value: str) -> str | bytes | None:
    """The address ``$NOTIFY_SOCKET`` names: a path, or ``@name`` -> ``b"\\0name"`` (abstract namespace).
    None for what this module does not speak (empty, or systemd 254's ``vsock:`` addresses)."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(env: dict | os._Environ | None = None, pid: int | None = None) -> float | None:
    """Seconds between two ``WATCHDOG=1`` (half of ``WATCHDOG_USEC``), or None when systemd does not watch
    this process (no or a bad ``WATCHDOG_USEC``, or a ``WATCHDOG_PID`` that is not ``pid``)."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    wpid = env.get("WATCHDOG_PID")
    if wpid:
        try:
            if int(wpid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2e6


class Notify:
    """A datagram socket to systemd's notification socket; :meth:`send` never raises (it returns False and
    logs the first failure)."""

    def __init__(self, address: str | bytes):
        self.address = address
        self.failed = False
        self._sock: socket.socket | None = None

    def send(self, message: str) -> bool:
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)  # a full socket drops a message instead of blocking us
            self._sock.sendto(message.encode("utf-8", "replace"), self.address)
            return True
        except OSError as exc:
            if not self.failed:
                self.failed = True
                shown = self.address.decode(errors="replace").replace("\0", "@", 1) \
                    if isinstance(self.address, bytes) else self.address
                log.warning(f"systemd notification to {shown} failed: {exc.strerror or exc} "
                            "(further failures are not reported)")
            return False

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None


class SystemdNotifier(Listener):
    """A hub listener that tells systemd the run is ready, how it goes, and that it is alive (see the module
    docstring). Its methods only set flags; its thread talks to systemd."""

    def __init__(self, address: str | bytes, *, watchdog: float | None, stall_after: float = 5.0,
                 status_every: float = STATUS_EVERY):
        self.notify = Notify(address)
        self.watchdog = watchdog  # seconds between pings; None: no watchdog
        self.stall_after = stall_after
        self.status_every = status_every
        self.hub: Hub | None = None
        self.ready = False  # READY=1 sent
        self.pings = 0
        self._first_frame = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._state_changed = False
        self._thread: threading.Thread | None = None

    @classmethod
    def from_env(cls, stall_after: float) -> "SystemdNotifier | None":
        """The notifier systemd's environment asks for, or None without ``NOTIFY_SOCKET``."""
        raw = os.environ.get("NOTIFY_SOCKET", "")
        if not raw:
            return None
        address = socket_address(raw)
        if address is None:
            log.warning(f"NOTIFY_SOCKET={raw}: not a path or an @abstract socket name; systemd is not notified")
            return None
        return cls(address, watchdog=watchdog_interval(), stall_after=stall_after)

    # --- the loop's side: flags only ----------------------------------------------------------------------
    def start(self, hub: Hub) -> None:
        self.hub = hub
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edgeclf-systemd", daemon=True)
            self._thread.start()

    def result(self, result: FrameResult) -> None:
        if not self._first_frame.is_set():
            self._first_frame.set()
            self._wake.set()

    def state(self, state: State) -> None:
        self._state_changed = True
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        reason = self.hub.end_reason if self.hub is not None and self.hub.end_reason else "stopping"
        self.notify.send(f"STOPPING=1\nSTATUS={_one_line(f'stopping: {reason}')}")
        self.notify.close()

    # --- the thread ---------------------------------------------------------------------------------------
    def status_line(self) -> str:
        hub = self.hub
        if hub is None:
            return "starting"
        ok, reason = hub.health()
        line = f"{hub.frames} frames, {hub.fps:.1f} FPS, state {hub.state.label}"
        if not ok:
            line = f"{reason}; {line}" + ("; watchdog not fed" if self.watchdog else "")
        return _one_line(line)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # a bug here must not take the run down: systemd's watchdog will notice
            log.warning(f"systemd notifier stopped: {type(exc).__name__}: {exc}")

    def _loop(self) -> None:
        now = time.monotonic()
        next_ping = now
        next_status = now + self.status_every
        healthy = True
        while not self._stop.is_set():
            now = time.monotonic()
            if not self.ready and self._first_frame.is_set():
                self.ready = True
                self.notify.send(f"READY=1\nSTATUS={self.status_line()}")
                next_ping, next_status = now, now + self.status_every
                if self.watchdog:
                    log.debug(f"systemd: ready; watchdog fed every {self.watchdog:g} s while a frame is younger "
                              f"than {self.stall_after:g} s")
            if self.ready and self._state_changed:
                self._state_changed = False
                self.notify.send(f"STATUS={self.status_line()}")
                next_status = now + self.status_every
            if self.ready and self.watchdog and now >= next_ping:
                ok, reason = self.hub.health() if self.hub is not None else (False, "no hub")
                if ok:
                    if self.notify.send("WATCHDOG=1"):
                        self.pings += 1
                    if not healthy:
                        log.warning("systemd watchdog: frames flow again, fed again")
                        self.notify.send(f"STATUS={self.status_line()}")
                elif healthy:
                    log.warning(f"systemd watchdog: {reason}; no longer fed (systemd restarts the service when "
                                "its WatchdogSec= passes)")
                    self.notify.send(f"STATUS={self.status_line()}")
                healthy = ok
                next_ping = now + self.watchdog
            if self.ready and now >= next_status:
                self.notify.send(f"STATUS={self.status_line()}")
                next_status = now + self.status_every
            deadline = next_status if self.ready else now + self.status_every
            if self.ready and self.watchdog:
                deadline = min(deadline, next_ping)
            self._wake.wait(max(deadline - time.monotonic(), 0.0))
            self._wake.clear()


def _one_line(text: str) -> str:
    return " ".join(text.split())


__all__ = ["SystemdNotifier", "Notify", "socket_address", "watchdog_interval"]
