"""MQTT and Home Assistant: the run's state, events and availability on a broker.

Topics (``prefix`` defaults to ``edgeclf/<device>``)::

    <prefix>/availability   "online" (retained) on every (re)connect; "offline" (retained) on a clean stop, and
                            as the last will when the run dies or loses the network
    <prefix>/state          {"label", "score", "since"} (retained, QoS 1) on every state change and every reconnect
    <prefix>/event          {"device", "id", "type", "label", "start", "end", ...} per event (QoS 1, not retained)
    homeassistant/...       with ``ha_discovery``: retained MQTT discovery configs, on every connect

The classify loop never waits for the broker: :class:`MqttListener`'s methods only put messages in a bounded
:class:`~edgeclf.runtime.hub.Mailbox`; a thread of its own hands them to paho-mqtt, whose network thread
connects, reconnects (1 s, doubling to 30 s) and queues QoS 1 messages (bounded) while the broker is away.
A broker that is down when the run starts is reported once and retried in the background.

The password (from the URL or ``EDGECLF_MQTT_PASSWORD``) goes to the broker only: every message shows the URL
through :func:`~edgeclf.runtime.sources.redact_url`.
"""
from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence
from urllib.parse import unquote, urlsplit

from edgeclf.errors import ServiceError
from edgeclf.runtime.events import NO_STATE, Event, State
from edgeclf.runtime.hub import Hub, Listener, Mailbox
from edgeclf.runtime.sources import redact_url

DEFAULT_PORT = {"mqtt": 1883, "mqtts": 8883}
DISCOVERY_PREFIX = "homeassistant"
ONLINE, OFFLINE = "online", "offline"
MAX_CLASS_SENSORS = 16  # one binary sensor per class ("bees detected") up to this many classes
MAX_QUEUED = 1000  # QoS 1 messages paho keeps while the broker is away
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 30
KEEPALIVE_S = 30
CLOSE_WAIT_S = 1.0  # close(): how long the final messages and "offline" may take to go out


@dataclass(frozen=True)
class BrokerAddress:
    """Where to connect: parsed from ``mqtt[s]://[user[:pass]@]HOST[:PORT]``."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None
    shown: str  # the URL as every message shows it: no user info, no query

    def __repr__(self) -> str:  # never the password, even in a traceback or a debugger
        return f"BrokerAddress({self.shown!r}, user={self.username!r})"


def parse_broker_url(url: str, password: str | None = None) -> BrokerAddress:
    """Parse an ``--mqtt`` URL. The password of the URL wins over ``password`` (from the environment).

    Raises ServiceError (one line, URL redacted) on what cannot work.
    """
    shown = redact_url(url)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
        host = parts.hostname or ""
    except ValueError:
        raise ServiceError(f"--mqtt {shown}: the port is not a number in 0..65535") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORT:
        raise ServiceError(f"--mqtt {shown}: expected mqtt://[user:pass@]HOST[:PORT] (or mqtts:// for TLS)")
    if not host:
        raise ServiceError(f"--mqtt {shown}: no host name")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ServiceError(f"--mqtt {shown}: expected no path or query after HOST[:PORT] "
                            "(topics are set with --mqtt-prefix)")
    if port == 0:
        raise ServiceError(f"--mqtt {shown}: port 0 is not a broker's port")
    username = unquote(parts.username) if parts.username else None
    secret = unquote(parts.password) if parts.password is not None else password
    if secret is not None and secret != "" and not username:
        raise ServiceError(f"--mqtt {shown}: a password (from the URL or EDGECLF_MQTT_PASSWORD) needs a user name: "
                            f"{scheme}://USER@{host}{f':{port}' if port else ''}")
    shown = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port or DEFAULT_PORT[scheme]}"
    return BrokerAddress(host, port or DEFAULT_PORT[scheme], scheme == "mqtts", username, secret or None, shown)


def check_prefix(prefix: str) -> str:
    """A topic prefix without wildcards or empty levels; trailing slashes removed."""
    clean = prefix.strip().rstrip("/")
    if not clean or any(c in clean for c in "+#\0") or "//" in clean or clean.startswith("/"):
        raise ServiceError(f"--mqtt-prefix {prefix!r}: expected levels such as edgeclf/garden, "
                            "without + or # and without empty levels")
    return clean


@dataclass(frozen=True)
class Topics:
    prefix: str

    @property
    def availability(self) -> str:
        return f"{self.prefix}/availability"

    @property
    def state(self) -> str:
        return f"{self.prefix}/state"

    @property
    def event(self) -> str:
        return f"{self.prefix}/event"


def _slug(text: str) -> str:
    """Characters Home Assistant allows in object ids and discovery topics."""
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "x"


def _edgeclf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgeclf")
    except PackageNotFoundError:
        return ""


def _model_text(model: dict) -> str:
    """What Home Assistant shows as the device's model: the backbone and the file's kind."""
    name, backbone = str(model.get("name") or ""), str(model.get("backbone") or "")
    if backbone and name:
        return f"{backbone} ({name})"
    return backbone or name or "image classifier"


def discovery_configs(device: str, topics: Topics, model: dict | None = None, classes: Sequence[str] = (),
                      sw_version: str | None = None) -> dict[str, dict]:
    """Home Assistant MQTT discovery configs, by topic (each published retained).

    A "Label" sensor (the state's label), a "Score" sensor (its smoothed score, a measurement) and, for up to
    :data:`MAX_CLASS_SENSORS` classes, one binary sensor per class, on while that class is the state. Full
    option names (no abbreviations); ``default_entity_id`` is what Home Assistant 2025.10+ reads in place of the
    deprecated ``object_id``.
    """
    model = model or {}
    version = _edgeclf_version() if sw_version is None else sw_version
    node = _slug(device)
    device_block = {"identifiers": [f"edgeclf_{node}"], "name": device, "manufacturer": "edgeclf",
                    "model": _model_text(model)}
    if version:
        device_block["sw_version"] = version
    common = {"availability_topic": topics.availability, "payload_available": ONLINE,
              "payload_not_available": OFFLINE, "state_topic": topics.state, "device": device_block,
              "origin": {"name": "edgeclf", **({"sw_version": version} if version else {})}}

    def entity(component: str, obj: str, name: str, **options) -> tuple[str, dict]:
        return (f"{DISCOVERY_PREFIX}/{component}/{node}/{obj}/config",
                {"name": name, "unique_id": f"edgeclf_{node}_{obj}", "default_entity_id": f"{component}.{node}_{obj}",
                 **common, **options})

    configs = dict([
        entity("sensor", "label", "Label", value_template="{{ value_json.label }}", icon="mdi:eye",
               json_attributes_topic=topics.state),
        entity("sensor", "score", "Score", value_template="{{ value_json.score }}", state_class="measurement",
               suggested_display_precision=2, icon="mdi:gauge"),
    ])
    if 0 < len(classes) <= MAX_CLASS_SENSORS:
        used = {"label", "score"}
        for cls in classes:
            obj = base = f"class_{_slug(cls)}"
            n = 2
            while obj in used:  # two class names that slug alike ("a b", "a-b")
                obj, n = f"{base}_{n}", n + 1
            used.add(obj)
            topic, config = entity("binary_sensor", obj, str(cls), icon="mdi:eye-check",
                                   value_template="{{ 'ON' if value_json.label == %s else 'OFF' }}" % json.dumps(cls),
                                   payload_on="ON", payload_off="OFF")
            configs[topic] = config
    return configs


def event_payload(device: str, event: Event) -> str:
    return json.dumps({"device": device, **event.to_json()}, ensure_ascii=False)


def state_payload(state: State) -> str:
    return json.dumps(state.to_json(), ensure_ascii=False)


_WAKE = object()  # a mailbox item that only wakes the publisher


class MqttListener(Listener):
    """Publishes the run's state, events and availability (and Home Assistant discovery) to a broker."""

    def __init__(self, url: str, *, prefix: str, device: str, ha_discovery: bool = False, model: dict | None = None,
                 classes: Sequence[str] = (), password: str | None = None, echo: Callable[[str], None] = print,
                 queue_size: int = 256):
        import paho.mqtt.client  # noqa: F401  (missing: an ImportError here, before the run, not a failed start)

        self.address = parse_broker_url(url, password)  # raises ServiceError before anything starts
        self.topics = Topics(check_prefix(prefix))
        self.device = device
        self.ha_discovery = ha_discovery
        self.discovery = (discovery_configs(device, self.topics, model, classes) if ha_discovery else {})
        self.echo = echo
        self.published = 0  # messages handed to paho
        self.dropped = 0  # messages paho refused (its queue full while the broker was away)
        self._box: Mailbox[object] = Mailbox(queue_size)
        self._state: State = State(NO_STATE, 0.0, time.time())
        self._state_lock = threading.Lock()  # a state is read and queued in one step: the newest goes out last
        self._sent_state: State | None = None
        self._client = None
        self._publisher: threading.Thread | None = None
        self._ever_connected = False
        self._connected_at = 0.0
        self._lost_at = 0.0
        self._failing_since = 0.0  # the first connection attempt failed at
        self._said: str | None = None  # the last trouble reported (each kind once until the next connect)
        self._closing = False
        self._closed = False

    @property
    def mailbox_dropped(self) -> int:
        return self._box.dropped

    # --- the loop's side: never blocks --------------------------------------------------------------
    def start(self, hub: Hub) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        if self._client is not None:
            return
        self._state = hub.state
        addr = self.address
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=f"edgeclf-{_slug(self.device)[:40]}-{secrets.token_hex(3)}")
        if addr.username:
            client.username_pw_set(addr.username, addr.password)
        if addr.tls:
            client.tls_set()  # the system's CAs, the host name checked
        client.will_set(self.topics.availability, OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_queued_messages_set(MAX_QUEUED)
        client.connect_timeout = 5.0
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        self._client = client
        client.connect_async(addr.host, addr.port, keepalive=KEEPALIVE_S)  # no network here: the thread connects
        client.loop_start()
        self._publisher = threading.Thread(target=self._publish_loop, name="edgeclf-mqtt", daemon=True)
        self._publisher.start()

    def event(self, event: Event) -> None:
        self._box.put((self.topics.event, event_payload(self.device, event)))  # full: dropped and counted

    def state(self, state: State) -> None:
        self._state = state  # before the wake-up: the publisher always sends the newest
        self._box.put(_WAKE)

    def close(self) -> None:
        """Send what is queued and "offline" (retained), briefly; then disconnect. Bounded: about 2 s at most."""
        if self._closed:
            return
        self._closed = True
        client = self._client
        if client is None:
            return
        deadline = time.monotonic() + 2 * CLOSE_WAIT_S
        self._closing = True
        self._box.close()
        if self._publisher is not None:
            self._publisher.join(CLOSE_WAIT_S)
        connected = client.is_connected()
        if connected:
            info = client.publish(self.topics.availability, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.05, deadline - time.monotonic()))
            except (RuntimeError, ValueError):  # not queued (the connection just went)
                pass
        client.disconnect()  # a clean disconnect: the broker drops the will ("offline" was sent above)
        stopper = threading.Thread(target=client.loop_stop, daemon=True)  # joins paho's thread: never hang on it
        stopper.start()
        stopper.join(max(0.05, deadline - time.monotonic()))
        lost = self.dropped + self._box.dropped
        self.echo(f"mqtt: disconnected from {self.address.shown}" + ("" if connected else " (it was unreachable)")
                  + (f"; {lost} messages dropped (queue full)" if lost else ""))

    # --- the publisher thread ------------------------------------------------------------------------
    def _publish_loop(self) -> None:
        while True:
            item = self._box.get()
            if item is None:  # closed
                self._publish_state()  # the final state, in case its wake-up was the one a full box lost
                return
            if item is _WAKE:
                self._publish_state()
            else:
                topic, payload = item  # type: ignore[misc]
                self._publish(topic, payload, retain=False)

    def _publish_state(self) -> None:
        with self._state_lock:
            state = self._state
            if state is not self._sent_state:
                self._publish(self.topics.state, state_payload(state), retain=True)
                self._sent_state = state

    def _publish(self, topic: str, payload: str, *, retain: bool) -> None:
        from paho.mqtt.client import MQTT_ERR_QUEUE_SIZE

        try:
            info = self._client.publish(topic, payload, qos=1, retain=retain)
        except Exception as exc:  # noqa: BLE001 -- this thread must outlive any one message
            self.dropped += 1
            self._say(f"publish:{type(exc).__name__}", f"mqtt: a message to {topic} was not sent: "
                                                       f"{type(exc).__name__}: {exc}")
            return
        if info.rc == MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
        else:
            self.published += 1

    # --- paho's network thread -----------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            if not self._ever_connected:
                self._failing_since = self._failing_since or time.monotonic()
            why = str(reason_code)
            hint = " (check the user name and password)" if reason_code.value in (134, 135) else ""
            self._say(f"refused:{why}", f"mqtt: {self.address.shown} refused the connection: {why}{hint}; "
                                        "retrying in the background")
            return
        client.publish(self.topics.availability, ONLINE, qos=1, retain=True)
        for topic, config in self.discovery.items():
            client.publish(topic, json.dumps(config, ensure_ascii=False), qos=1, retain=True)
        with self._state_lock:  # the current state again: a broker that restarted may have lost it
            client.publish(self.topics.state, state_payload(self._state), qos=1, retain=True)
            self._sent_state = self._state
        now = time.monotonic()
        if not self._ever_connected:
            what = ", Home Assistant discovery" if self.ha_discovery else ""
            late = f" after {now - self._failing_since:.1f} s" if self._failing_since else ""
            self.echo(f"mqtt: connected to {self.address.shown}{late} ({self.topics.prefix}/state, /event, "
                      f"/availability{what})")
        else:
            away = f" after {now - self._lost_at:.1f} s" if self._lost_at else ""
            self.echo(f"mqtt: reconnected to {self.address.shown}{away}; state republished")
        self._ever_connected, self._connected_at, self._lost_at, self._said = True, now, 0.0, None

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._closing or self._closed:
            return
        if self._connected_at and not self._lost_at:
            self._lost_at = time.monotonic()
            self._said = "lost"
            plain = ("Success", "Normal disconnection", "Unspecified error")  # what paho says of a dropped link
            why = "" if str(reason_code) in plain else f" ({reason_code})"
            self.echo(f"mqtt: lost the connection to {self.address.shown}{why}; reconnecting in the background "
                      "(the run goes on)")

    def _on_connect_fail(self, client, userdata) -> None:
        if self._closing or self._closed:
            return
        if not self._ever_connected:
            self._failing_since = self._failing_since or time.monotonic()
            self._say("unreachable", f"mqtt: cannot reach {self.address.shown}; the run goes on and keeps trying "
                                     "in the background")

    def _say(self, key: str, message: str) -> None:
        if self._said != key:
            self._said = key
            self.echo(message)


__all__ = ["MqttListener", "BrokerAddress", "Topics", "parse_broker_url", "check_prefix", "discovery_configs",
           "event_payload", "state_payload", "DISCOVERY_PREFIX", "ONLINE", "OFFLINE"]
