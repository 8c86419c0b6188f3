"""MQTT and webhook listeners without a model or a broker: URL parsing, topics, Home Assistant discovery
configs, no secret in any payload, and the loop's side never blocking. The webhook's retries run against a
real http.server on 127.0.0.1 (fast: small back-off)."""
from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
import time

import pytest

from edgeclf.errors import ServiceError
from edgeclf.runtime.events import Event, State
from edgeclf.runtime.hub import Hub
from edgeclf.runtime.mqtt import (MqttListener, Topics, check_prefix, discovery_configs, event_payload,
                                  parse_broker_url, state_payload)
from edgeclf.runtime.webhook import WebhookListener, parse_webhook_url

SECRET = "pa:ss@w/rd%"  # characters a URL must percent-encode
ENCODED = "pa%3Ass%40w%2Frd%25"
MODEL = {"name": "tflite-int8", "backend": "litert", "classes": ["ants", "bees"], "input": "128x128"}


def _event(kind="start", label="bees") -> Event:
    return Event(7, kind, label, 1767225600.25, None if kind == "start" else 1767225603.5, 0.93, 12)


# --- MQTT URLs -------------------------------------------------------------------------------------

def test_broker_url_defaults_and_tls():
    a = parse_broker_url("mqtt://broker.local")
    assert (a.host, a.port, a.tls, a.username, a.password) == ("broker.local", 1883, False, None, None)
    assert a.shown == "mqtt://broker.local:1883"
    b = parse_broker_url("mqtts://broker.example.com")
    assert (b.port, b.tls, b.shown) == (8883, True, "mqtts://broker.example.com:8883")
    c = parse_broker_url("MQTT://[::1]:1884/")
    assert (c.host, c.port, c.shown) == ("::1", 1884, "mqtt://[::1]:1884")


def test_broker_url_password_from_url_or_environment_never_shown():
    a = parse_broker_url(f"mqtt://edge:{ENCODED}@10.0.0.2:1884")
    assert (a.username, a.password, a.port) == ("edge", SECRET, 1884)
    assert SECRET not in repr(a) and ENCODED not in repr(a) and "edge" not in a.shown
    b = parse_broker_url("mqtt://edge@10.0.0.2", password="from-env")
    assert (b.username, b.password) == ("edge", "from-env")
    c = parse_broker_url(f"mqtt://edge:{ENCODED}@10.0.0.2", password="from-env")
    assert c.password == SECRET  # the URL's own wins
    assert parse_broker_url("mqtt://edge@10.0.0.2").password is None


@pytest.mark.parametrize("url, needle", [
    ("http://broker", "expected mqtt://"),
    ("mqtt://", "no host"),
    ("mqtt://broker:99999", "port"),
    ("mqtt://broker:abc", "port"),
    ("mqtt://broker/topic", "no path"),
    (f"mqtt://broker?token={ENCODED}", "no path or query"),
])
def test_bad_broker_urls_are_one_line(url, needle):
    with pytest.raises(ServiceError) as err:
        parse_broker_url(url)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg and ENCODED not in msg


def test_a_password_without_user_is_refused_without_showing_it():
    with pytest.raises(ServiceError, match="needs a user name") as err:
        parse_broker_url("mqtt://broker.local", password=SECRET)
    assert SECRET not in str(err.value)
    with pytest.raises(ServiceError) as err:
        parse_broker_url(f"mqtt://:{ENCODED}@broker.local")
    assert ENCODED not in str(err.value) and SECRET not in str(err.value)


def test_prefix_and_topics():
    assert check_prefix("edgeclf/garden/") == "edgeclf/garden"
    for bad in ("", "/", "a/+/b", "a/#", "a//b", "/a"):
        with pytest.raises(ServiceError):
            check_prefix(bad)
    t = Topics("edgeclf/garden")
    assert (t.availability, t.state, t.event) == ("edgeclf/garden/availability", "edgeclf/garden/state",
                                                  "edgeclf/garden/event")


def test_payloads():
    assert json.loads(state_payload(State("bees", 0.912345678, 1767225600.123456))) == \
        {"label": "bees", "score": 0.912346, "since": 1767225600.123}
    ev = json.loads(event_payload("garden", _event("end")))
    assert ev["device"] == "garden" and ev["type"] == "end" and ev["id"] == 7 and ev["duration"] == 3.25


# --- Home Assistant discovery ------------------------------------------------------------------------

def test_discovery_configs():
    topics = Topics("edgeclf/garden")
    configs = discovery_configs("garden", topics, {**MODEL, "backbone": "mobilenet_v2"}, ["ants", "bees"],
                                sw_version="1.2.3")
    assert set(configs) == {"homeassistant/sensor/garden/label/config", "homeassistant/sensor/garden/score/config",
                            "homeassistant/binary_sensor/garden/class_ants/config",
                            "homeassistant/binary_sensor/garden/class_bees/config"}
    label = configs["homeassistant/sensor/garden/label/config"]
    score = configs["homeassistant/sensor/garden/score/config"]
    for cfg in configs.values():
        json.dumps(cfg)
        assert cfg["state_topic"] == "edgeclf/garden/state"
        assert cfg["availability_topic"] == "edgeclf/garden/availability"
        assert (cfg["payload_available"], cfg["payload_not_available"]) == ("online", "offline")
        assert cfg["unique_id"].startswith("edgeclf_garden_") and cfg["name"]
        assert cfg["default_entity_id"].split(".")[1] == cfg["unique_id"].removeprefix("edgeclf_")
        assert cfg["device"] == {"identifiers": ["edgeclf_garden"], "name": "garden", "manufacturer": "edgeclf",
                                 "model": "mobilenet_v2 (tflite-int8)", "sw_version": "1.2.3"}
        assert cfg["origin"]["name"] == "edgeclf"
    assert label["default_entity_id"] == "sensor.garden_label" and label["value_template"] == "{{ value_json.label }}"
    assert score["value_template"] == "{{ value_json.score }}" and score["state_class"] == "measurement"
    assert len({c["unique_id"] for c in configs.values()}) == len(configs)


def test_discovery_ids_are_slugs_and_unique():
    configs = discovery_configs("Garden-Cam 2", Topics("x"), MODEL, ["a b", "a-b", "Été"], sw_version="")
    ids = [c["unique_id"] for c in configs.values()]
    assert len(set(ids)) == len(ids) == 5
    for topic, cfg in configs.items():
        assert all(c.isalnum() and c.isascii() or c in "_/" for c in topic), topic
        assert cfg["default_entity_id"] == cfg["default_entity_id"].lower()
        assert "sw_version" not in cfg["device"]
    assert discovery_configs("big", Topics("x"), MODEL, [f"c{i}" for i in range(1000)], sw_version="").keys() == \
        {"homeassistant/sensor/big/label/config", "homeassistant/sensor/big/score/config"}


def test_no_secret_in_any_payload_or_message():
    said = []
    lst = MqttListener(f"mqtt://edge:{ENCODED}@127.0.0.1:1", prefix="edgeclf/garden", device="garden",
                       ha_discovery=True, model=MODEL, classes=["ants", "bees"], echo=said.append)
    everything = json.dumps(lst.discovery) + event_payload("garden", _event()) + repr(lst.address) + repr(lst.topics)
    for secret in (SECRET, ENCODED, "pa%3A", "pa:ss"):
        assert secret not in everything
    assert lst.address.password == SECRET and said == []


# --- MQTT listener: never blocks, never connects in the constructor -------------------------------------

def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_constructor_connects_nothing_and_methods_return_at_once():
    before = threading.active_count()
    said = []
    lst = MqttListener(f"mqtt://127.0.0.1:{_closed_port()}", prefix="edgeclf/t", device="t", echo=said.append)
    assert threading.active_count() == before and lst._client is None
    t0 = time.perf_counter()
    for _ in range(1000):  # before start(): queued (and counted when the box is full), never sent
        lst.event(_event())
        lst.state(State("bees", 0.9, time.time()))
    assert time.perf_counter() - t0 < 0.5 and lst.mailbox_dropped > 0
    lst.close()  # never started: nothing to stop, nothing said
    assert said == [] and threading.active_count() == before


def test_a_broker_that_is_down_is_reported_once_and_never_blocks():
    said = []
    lst = MqttListener(f"mqtt://127.0.0.1:{_closed_port()}", prefix="edgeclf/t", device="t", echo=said.append)
    hub = Hub(["ants", "bees"], listeners=[lst])
    t0 = time.perf_counter()
    hub.start("test")
    for _ in range(200):
        lst.event(_event())
        lst.state(State("ants", 0.9, time.time()))
    assert time.perf_counter() - t0 < 0.5
    time.sleep(1.5)  # two connection attempts (at once, then 1 s later)
    t0 = time.perf_counter()
    hub.close()
    assert time.perf_counter() - t0 < 2.5
    assert len([s for s in said if "cannot reach" in s]) == 1, said
    assert said[-1].startswith("mqtt: disconnected from mqtt://127.0.0.1:") and "unreachable" in said[-1]


# --- webhook ---------------------------------------------------------------------------------------

def test_webhook_url_user_info_becomes_a_header_never_shown():
    t = parse_webhook_url(f"https://robot:{ENCODED}@hooks.example.com:8443/api/webhook/abc?token=T0KEN")
    assert t.url == "https://hooks.example.com:8443/api/webhook/abc?token=T0KEN"
    assert t.shown == "https://hooks.example.com:8443/api/webhook/abc"
    assert base64.b64decode(t.headers["Authorization"].split()[1]).decode() == f"robot:{SECRET}"
    assert "T0KEN" not in repr(t) and ENCODED not in repr(t) and SECRET not in repr(t)
    assert parse_webhook_url("http://h").url == "http://h/" and parse_webhook_url("http://h").headers == {}
    for bad in ("ftp://h/x", "http://", "http://h:99999/x"):
        with pytest.raises(ServiceError):
            parse_webhook_url(bad)


class _Server:
    def __init__(self, answers):
        self.answers, self.bodies = list(answers), []
        srv = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                srv.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                code = srv.answers.pop(0) if srv.answers else 200
                self.send_response(code)
                if code == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    made = []

    def make(answers=()):
        made.append(_Server(answers))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _deliver(url: str, n: int = 1, **kw) -> tuple[WebhookListener, list[str]]:
    said = []
    hook = WebhookListener(url, device="garden", echo=said.append, backoff=0.05, **kw)
    hook.start(None)
    for i in range(n):
        hook.event(_event("start" if i % 2 == 0 else "end"))
    deadline = time.monotonic() + 5
    while hook.delivered + hook.failed < n and time.monotonic() < deadline:
        time.sleep(0.01)
    hook.close()
    return hook, said


@pytest.mark.parametrize("answers, delivered, posts", [
    ([], 1, 1),
    ([500], 1, 2),
    ([503, 429], 1, 3),
    ([500, 502, 504], 0, 3),  # 3 tries, then dropped
    ([404], 0, 1),  # a client error is not retried
    ([301], 0, 1),  # nor a redirect
])
def test_webhook_retries(server, answers, delivered, posts):
    srv = server(answers)
    hook, said = _deliver(srv.url)
    assert (hook.delivered, len(srv.bodies)) == (delivered, posts), said
    assert srv.bodies[0] == {"device": "garden", **_event().to_json()}
    assert all(b == srv.bodies[0] for b in srv.bodies)
    if delivered:
        assert said == []
    else:
        assert len(said) == 1 and said[0].startswith(f"webhook: POST to {srv.url} failed: HTTP ")
        assert ("not retried" in said[0]) == (len(answers) == 1)


def test_webhook_failures_are_reported_once_until_it_answers_again(server):
    srv = server([404, 404, 404])
    hook, said = _deliver(srv.url, n=4)
    assert hook.delivered == 1 and hook.failed == 3
    assert len(said) == 2 and "failed: HTTP 404" in said[0] and said[1].endswith("answers again")


def test_webhook_never_blocks_and_close_is_bounded():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        said = []
        hook = WebhookListener(f"http://127.0.0.1:{silent.getsockname()[1]}/x?key=K3Y", device="d", echo=said.append,
                               grace=0.5, queue_size=4)
        hook.start(None)
        t0 = time.perf_counter()
        for _ in range(100):
            hook.event(_event())
        assert time.perf_counter() - t0 < 0.2
        t0 = time.perf_counter()
        hook.close()
        assert time.perf_counter() - t0 < 1.0
    assert hook.dropped >= 90 and hook.delivered == 0
    assert len(said) == 1 and "events not delivered" in said[0] and "K3Y" not in said[0], said
