"""`edgeclf run` as an always-on device: which listeners a run gets from its options.

    opts = DeviceOptions(serve="8080", mqtt="mqtt://broker.local", ha_discovery=True)
    hub = build_hub(backend, opts)          # events + page/API + MQTT + webhook + systemd, as asked
    run_source(backend, "0", RunOptions(), hub=hub)

Everything here is optional: a run with none of these options gets no hub at all and behaves as before.
"""
from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from edgeclf.errors import ServiceError
from edgeclf.runtime.backends import Backend
from edgeclf.runtime.events import EventOptions
from edgeclf.runtime.hub import Hub

if TYPE_CHECKING:
    from edgeclf.runtime.collect import CollectOptions

TOKEN_ENV = "EDGECLF_TOKEN"
MQTT_PASSWORD_ENV = "EDGECLF_MQTT_PASSWORD"


@dataclass
class DeviceOptions:
    serve: str | None = None  # "[HOST:]PORT"
    token: str | None = None
    mqtt: str | None = None  # mqtt://[user:pass@]host[:port]
    mqtt_prefix: str | None = None  # default edgeclf/<device name>
    device_name: str = ""  # default: the host name
    ha_discovery: bool = False
    webhook: str | None = None
    snapshots: Path | None = None
    snapshots_max_mb: float = 500.0
    events: EventOptions = field(default_factory=EventOptions)
    stall_after: float = 5.0  # seconds without a frame before /healthz says 503 and the watchdog stops
    stream_fps: float = 5.0  # the live view's frame rate cap
    max_upload_mb: float = 10.0
    top_k: int = 3  # as the run's: /api/predict answers an upload as the loop answers a frame
    threshold: float = 0.0
    collect: "CollectOptions | None" = None  # --collect DIR: keep the frames worth labelling

    @property
    def wanted(self) -> bool:
        """True when the run needs a hub (any device option, or systemd watching it)."""
        return bool(self.serve or self.mqtt or self.webhook or self.snapshots or self.collect is not None
                    or os.environ.get("NOTIFY_SOCKET"))


def device_name(name: str = "") -> str:
    """A name safe in MQTT topics and Home Assistant ids: the host name by default."""
    raw = name or socket.gethostname() or "edgeclf"
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", raw).strip("_")
    return safe or "edgeclf"


def parse_bind(spec: str) -> tuple[str, int]:
    """``"8080"`` -> ("127.0.0.1", 8080); ``"0.0.0.0:8080"``, ``"[::]:8080"``, ``"pi.local:80"`` as given."""
    spec = spec.strip()
    m = re.fullmatch(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d+)", spec)
    if m:
        host, port = m.group("v6") or m.group("host") or "127.0.0.1", m.group("port")
    elif spec.isdigit():
        host, port = "127.0.0.1", spec
    else:
        raise ServiceError(f"--serve {spec}: expected PORT or HOST:PORT (e.g. 8080, 0.0.0.0:8080)")
    if not 0 <= int(port) <= 65535:
        raise ServiceError(f"--serve {spec}: port {port} is not in 0..65535")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def model_info(backend: Backend) -> dict:
    """What the page, /metrics and MQTT say about the model that runs (no path of this machine)."""
    ref = backend.model
    art = ref.artifact
    return {"name": ref.name, "file": Path(ref.path).name, "format": getattr(art, "format", ""),
            "precision": getattr(art, "precision", ""), "backend": backend.name,
            "backbone": (ref.bundle.source or {}).get("backbone", ""),
            "recipe": art.recipe.label() if getattr(art, "recipe", None) is not None else "",
            "val_top1": art.val_top1, "sha256": getattr(art, "sha256", "") or "",
            "classes": list(ref.classes), "input": f"{backend.width}x{backend.height}"}


def check(opts: DeviceOptions, classes: list[str]) -> None:
    """Refuse, in one line, what cannot work, before the model or camera is opened."""
    if opts.serve is not None:
        host, _ = parse_bind(opts.serve)
        if not is_loopback(host) and not opts.token:
            raise ServiceError(f"--serve {opts.serve}: listening on {host or 'every address'} needs a token "
                              f"(--token or {TOKEN_ENV}); without one, serve on 127.0.0.1 only")
    if opts.token is not None and len(opts.token) < 8:
        raise ServiceError("--token: use at least 8 characters (e.g. from: python -c 'import secrets; "
                          "print(secrets.token_urlsafe())')")
    if opts.mqtt is not None and not re.match(r"^mqtts?://[^/]+", opts.mqtt):
        raise ServiceError("--mqtt: expected mqtt://[user:pass@]HOST[:PORT] (or mqtts:// for TLS)")
    if opts.webhook is not None and not re.match(r"^https?://[^/]+", opts.webhook):
        raise ServiceError("--webhook: expected an http:// or https:// URL")
    if opts.stall_after <= 0:
        raise ServiceError("--stall-timeout must be above 0 seconds")
    if opts.collect is not None:
        opts.collect.check()
    try:
        opts.events.check(classes)
    except ValueError as exc:
        raise ServiceError(str(exc)) from exc


def build_hub(backend: Backend, opts: DeviceOptions, echo: Callable[[str], None] = print) -> Hub:
    """The hub with every listener the options ask for. Raises ServiceError before anything starts."""
    try:
        return _build_hub(backend, opts, echo)
    except ImportError as exc:  # the runtime extra alone is installed
        raise ServiceError(f"the device service needs packages that are not installed ({exc.name or exc}): "
                           "pip install 'edgeclf[serve]'") from exc


def _build_hub(backend: Backend, opts: DeviceOptions, echo: Callable[[str], None]) -> Hub:
    classes = list(backend.model.classes)
    check(opts, classes)
    info = model_info(backend)
    hub = Hub(classes, opts.events, stall_after=opts.stall_after)
    if opts.snapshots is not None:
        from edgeclf.runtime.snapshots import SnapshotWriter

        hub.snapshots = SnapshotWriter(opts.snapshots, int(opts.snapshots_max_mb * 1024 * 1024))
    if opts.serve is not None:
        from edgeclf.runtime.serve import DeviceServer

        host, port = parse_bind(opts.serve)
        hub.add(DeviceServer(backend, hub, info, host=host, port=port, token=opts.token,
                             stream_fps=opts.stream_fps, max_upload=int(opts.max_upload_mb * 1024 * 1024),
                             top_k=opts.top_k, threshold=opts.threshold, echo=echo))
    if opts.mqtt is not None:
        from edgeclf.runtime.mqtt import MqttListener

        hub.add(MqttListener(opts.mqtt, prefix=opts.mqtt_prefix or f"edgeclf/{device_name(opts.device_name)}",
                             device=device_name(opts.device_name), ha_discovery=opts.ha_discovery, model=info,
                             classes=classes, password=os.environ.get(MQTT_PASSWORD_ENV), echo=echo))
    if opts.webhook is not None:
        from edgeclf.runtime.webhook import WebhookListener

        hub.add(WebhookListener(opts.webhook, device=device_name(opts.device_name), echo=echo))
    if opts.collect is not None:
        from edgeclf.runtime.collect import Collector

        hub.add(Collector(opts.collect, classes=classes, model_sha256=info["sha256"], model_name=info["name"],
                          echo=echo))
    if os.environ.get("NOTIFY_SOCKET"):
        from edgeclf.runtime.systemd import SystemdNotifier

        notifier = SystemdNotifier.from_env(stall_after=opts.stall_after)
        if notifier is not None:
            hub.add(notifier)
    return hub
