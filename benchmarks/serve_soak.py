"""Do viewers cost inference? A long `edgeclf run --serve --mqtt` with real clients, against the same run without.

The real CLI in a subprocess, on a looped video of real photos (hymenoptera val, the scene video of
event_defaults.py at 640x480), un-paced (as fast as it classifies: the hardest case for "viewers never cost
inference"):

    python -m edgeclf run EXPORT --source VIDEO --loop --max-frames N --headless --output rows.csv --device-name soak
        [--serve 127.0.0.1:PORT] [--mqtt mqtt://127.0.0.1:MQPORT --ha-discovery]

as:

- **baseline**: no --serve, no --mqtt (no hub at all);
- **server, no clients**: --serve only, nobody connected (the cost of the server alone);
- **server + SSE reader**, **server + 3 MJPEG readers + slow viewer**, **MQTT only + subscriber**: each kind of
  client alone, to tell their costs apart;
- **server + MQTT + every client** (the soak): --serve and --mqtt --ha-discovery, with, in this process: three
  MJPEG readers reading /stream.mjpg continuously, one SSE reader of /api/events, one MQTT subscriber (paho)
  counting messages, and one slow viewer that sends ``GET /stream.mjpg`` and never reads a byte;

each once per round (``--rounds``, the order rotated; ratios are to the same round's baseline), then the baseline and the full variant again at a camera's rate (--pace 30, shorter), where the ratio should be 1.

FPS comes from the run's own summary line (``summary: N frames, ...; X FPS over Y s``: frames over the loop's
wall time, model load excluded). While each run lasts, this process samples the run's VmRSS (/proc/PID/status)
every 0.5 s against the rows in its CSV (flushed about once a second), and, when it serves, polls /api/status
("dropped": source / viewer / events_client) and /metrics (edgeclf_dropped_frames_total) once a second: the last
answers before the run ends are the ones reported. CPU time is accounted per run: the run's own (wait4), this
process's (the clients), the broker's, and the rest of the machine's (/proc/stat), since other jobs share it.
A mosquitto is started on a free 127.0.0.1 port and stopped.

    flock /tmp/edgeclf-cpu.lock python benchmarks/serve_soak.py EXPORT [--frames 20000] [--paced-frames 3000]

EXPORT as for event_defaults.py (``EDGECLF_WEIGHTS_DIR=../shared/weights python tests/runtime_models.py /tmp/rtm
--size 128`` -> /tmp/rtm/export). Writes benchmarks/results/serve_soak.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from event_defaults import DEFAULT_DATA, load_average, machine, make_video  # noqa: E402

BOUNDARY = b"--edgeclfframe"
SUMMARY = re.compile(r"summary: (\d+) frames, (\d+) dropped.*?latency mean ([\d.]+) ms, p50 ([\d.]+) ms, "
                     r"p90 ([\d.]+) ms; ([\d.]+) FPS over ([\d.]+) s")
PREFIX = "edgeclf/soak"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# --- the broker ------------------------------------------------------------------------------------------

class Broker:
    def __init__(self, exe: str, folder: Path):
        self.exe, self.port, self.folder = exe, free_port(), folder
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "allow_anonymous true"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = folder / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Broker":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mosquitto did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (/proc/PID/stat), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


# --- the clients -----------------------------------------------------------------------------------------

class StreamCounter(threading.Thread):
    """GET a streaming endpoint on a raw socket and count occurrences of ``marks`` in what arrives."""

    def __init__(self, port: int, path: str, marks: tuple[bytes, ...], name: str):
        super().__init__(daemon=True, name=name)
        self.port, self.path, self.marks = port, path, marks
        self.counts = {m: 0 for m in marks}
        self.bytes = 0
        self.error = ""
        self.tail = b""  # the last few KB (the SSE reader reads the last result's seq from it)
        self.stop = threading.Event()
        self.sock: socket.socket | None = None

    def run(self) -> None:
        keep = max(len(m) for m in self.marks) - 1
        try:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            self.sock.sendall(f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            carry = b""
            while not self.stop.is_set():
                data = self.sock.recv(65536)
                if not data:
                    return
                self.bytes += len(data)
                buf = carry + data
                for m in self.marks:
                    self.counts[m] += buf.count(m) - carry.count(m)
                carry = buf[-keep:]
                self.tail = (self.tail + data)[-8192:]
        except OSError as exc:
            if not self.stop.is_set():
                self.error = f"{type(exc).__name__}: {exc}"
        finally:
            if self.sock is not None:
                self.sock.close()


class SlowViewer:
    """Asks for /stream.mjpg and never reads a byte."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")

    def close(self) -> None:
        self.sock.close()


class MqttCounter:
    def __init__(self, port: int):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.counts: dict[str, int] = {}
        self._subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=f"soak-sub-{os.getpid()}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(f"{PREFIX}/#", 1), ("homeassistant/#", 1)])
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise SystemExit("the benchmark's MQTT subscriber could not subscribe")

    def _on_message(self, client, userdata, m) -> None:
        kind = "discovery" if m.topic.startswith("homeassistant/") else m.topic.rsplit("/", 1)[-1]
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def reset(self) -> None:
        self.counts = {}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- watching a run --------------------------------------------------------------------------------------

class Monitor(threading.Thread):
    """VmRSS of the run against the rows in its CSV, every 0.5 s; /api/status and /metrics every 1 s."""

    def __init__(self, pid: int, rows_csv: Path, http_port: int | None):
        super().__init__(daemon=True, name="soak-monitor")
        self.pid, self.rows_csv, self.http_port = pid, rows_csv, http_port
        self.samples: list[dict] = []  # {t, rows, rss_kb, hwm_kb}
        self.status: dict | None = None
        self.metrics_dropped: dict[str, float] = {}
        self.status_at_rows = 0
        self.stop = threading.Event()
        self._rows, self._offset = 0, 0

    def rows(self) -> int:
        try:
            with open(self.rows_csv, "rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except OSError:
            return self._rows
        self._offset += len(data)
        self._rows += data.count(b"\n")
        return max(self._rows - 1, 0)  # the header

    def run(self) -> None:
        t0, last_poll = time.monotonic(), 0.0
        while not self.stop.is_set():
            try:
                text = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            kb = {k: int(v.split()[0]) for k, v in (ln.split(":", 1) for ln in text.splitlines())
                  if k in ("VmRSS", "VmHWM")}
            rows = self.rows()
            self.samples.append({"t": round(time.monotonic() - t0, 2), "rows": rows, "rss_kb": kb.get("VmRSS"),
                                 "hwm_kb": kb.get("VmHWM")})
            if self.http_port and time.monotonic() - last_poll >= 1.0:
                last_poll = time.monotonic()
                self.poll(rows)
            self.stop.wait(0.5)

    def poll(self, rows: int) -> None:
        base = f"http://127.0.0.1:{self.http_port}"
        try:
            with urllib.request.urlopen(base + "/api/status", timeout=2) as r:
                status = json.loads(r.read())
            with urllib.request.urlopen(base + "/metrics", timeout=2) as r:
                text = r.read().decode()
        except (OSError, ValueError):
            return
        dropped = {}
        for m in re.finditer(r'^edgeclf_dropped_frames_total\{reason="(\w+)"\} ([\d.e+]+)$', text, re.MULTILINE):
            dropped[m.group(1)] = float(m.group(2))
        self.status, self.metrics_dropped, self.status_at_rows = status, dropped, rows


VARIANTS = {  # key: (name, what it runs)
    "baseline": ("baseline", {}),
    "idle": ("server, no clients", {"serve": True}),
    "sse": ("server + SSE reader", {"serve": True, "sse": 1}),
    "sse3": ("server + 3 SSE readers", {"serve": True, "sse": 3}),
    "mjpeg": ("server + 3 MJPEG readers + slow viewer", {"serve": True, "mjpeg": 3, "slow": True}),
    "mqtt": ("MQTT only (no server) + subscriber", {"mqtt": True}),
    "full": ("server + MQTT + every client", {"serve": True, "mqtt": True, "mjpeg": 3, "slow": True, "sse": 1}),
}
DEFAULT_VARIANTS = ["baseline", "idle", "sse", "mjpeg", "mqtt", "full"]  # sse3: on request (--variants)


def busy_seconds() -> float:
    """CPU time spent by the whole machine (every core, every process) so far: /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_variant(key: str, export: Path, video: Path, work: Path, frames: int, *, broker: Broker | None,
                subscriber: MqttCounter | None, pace: float | None = None, round_no: int = 1) -> dict:
    name, spec = VARIANTS[key]
    if pace:
        name = f"{name}, --pace {pace:g}"
    serve, mqtt_on = spec.get("serve", False), spec.get("mqtt", False)
    rows_csv = work / f"{key}-{round_no}-{pace or 0}.csv"
    http_port = free_port() if serve else None
    cmd = [sys.executable, "-m", "edgeclf", "run", str(export), "--source", str(video), "--loop", "--max-frames",
           str(frames), "--headless", "--output", str(rows_csv), "--device-name", "soak"]
    shown = (f"python -m edgeclf run EXPORT --source VIDEO --loop --max-frames {frames} --headless --output rows.csv "
             "--device-name soak")
    if pace:
        cmd += ["--pace", f"{pace:g}"]
        shown += f" --pace {pace:g}"
    if serve:
        cmd += ["--serve", f"127.0.0.1:{http_port}"]
        shown += " --serve 127.0.0.1:PORT"
    if mqtt_on:
        cmd += ["--mqtt", f"mqtt://127.0.0.1:{broker.port}", "--ha-discovery"]
        shown += " --mqtt mqtt://127.0.0.1:MQPORT --ha-discovery"
    n_sse = spec.get("sse", 0)
    clients = [f"{spec['mjpeg']} MJPEG readers" if spec.get("mjpeg") else "",
               f"{n_sse} SSE reader{'s' if n_sse > 1 else ''}" if n_sse else "",
               "1 slow viewer (never reads)" if spec.get("slow") else "", "1 MQTT subscriber" if mqtt_on else ""]
    print(f"[{name}, round {round_no}] {shown}", file=sys.stderr)
    if subscriber is not None:
        subscriber.reset()
    load_before = load_average()
    busy0, own0 = busy_seconds(), time.process_time()
    mosq0 = cpu_seconds(broker.proc.pid) if broker and broker.proc else None
    out_path, err_path = work / f"{key}-{round_no}.stdout", work / f"{key}-{round_no}.stderr"
    t_start = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    mon = Monitor(proc.pid, rows_csv, http_port)
    mon.start()
    readers: list[StreamCounter] = []
    slow = sse = None
    run_cpu = None
    try:
        if serve:
            deadline = time.monotonic() + 60
            while not port_open(http_port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"[{name}] the server did not come up:\n{err_path.read_text()[-3000:]}")
                time.sleep(0.05)
        readers = [StreamCounter(http_port, "/stream.mjpg", (BOUNDARY,), f"mjpeg-{i}")
                   for i in range(spec.get("mjpeg", 0))]
        sse_readers = [StreamCounter(http_port, "/api/events", (b"event: result", b"event: event", b"event: state",
                                                                b": ping"), f"sse-{i}")
                       for i in range(spec.get("sse", 0))]
        sse = sse_readers[0] if sse_readers else None
        readers += sse_readers
        for r in readers:
            r.start()
        if spec.get("slow"):
            slow = SlowViewer(http_port)
        _, status, usage = os.wait4(proc.pid, 0)  # the run's own CPU time comes with it
        proc.returncode = os.waitstatus_to_exitcode(status)
        run_cpu = usage.ru_utime + usage.ru_stime
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        t_end = time.monotonic()
        mon.stop.set()
        mon.join(5)
        for r in readers:
            r.stop.set()
            r.join(5)
        if slow is not None:
            slow.close()
    own_cpu = time.process_time() - own0
    mosq_cpu = (cpu_seconds(broker.proc.pid) - mosq0) if mosq0 is not None else 0.0
    busy = busy_seconds() - busy0
    rc = proc.returncode
    stdout, stderr = out_path.read_text(), err_path.read_text()
    m = SUMMARY.search(stdout)
    if rc != 0 or m is None:
        raise SystemExit(f"[{name}] exit {rc}; stdout:\n{stdout[-2000:]}\nstderr:\n{stderr[-3000:]}")
    n, dropped, lat_mean, lat_p50, lat_p90, fps, wall = m.groups()
    samples = mon.samples
    start = next((s for s in samples if s["rows"] >= 1000), None)
    end = samples[-1] if samples else None
    quarter = []
    for q in (0.25, 0.5, 0.75):
        s = next((s for s in samples if s["rows"] >= q * frames), None)
        quarter.append({"at_frames": s["rows"], "rss_kb": s["rss_kb"]} if s else None)
    quarter.append({"at_frames": end["rows"], "rss_kb": end["rss_kb"]} if end else None)
    error_lines = [ln for ln in stderr.splitlines() if ln.startswith(("ERROR", "Traceback"))]
    rec = {"key": key, "name": name, "round": round_no, "command": shown,
           "clients": ", ".join(c for c in clients if c) or "none", "frames": int(n),
           "source_dropped_summary": int(dropped), "fps": float(fps), "wall_s": float(wall),
           "latency_ms": {"mean": float(lat_mean), "p50": float(lat_p50), "p90": float(lat_p90)},
           "process_s": round(t_end - t_start, 2), "csv_rows": mon.rows(), "load_before": load_before,
           "cpu_s": {"run": round(run_cpu or 0.0, 1), "benchmark_clients": round(own_cpu, 1),
                     "mosquitto": round(mosq_cpu, 1),
                     "others": round(max(0.0, busy - (run_cpu or 0.0) - own_cpu - mosq_cpu), 1),
                     "machine": round(busy, 1), "wall": round(t_end - t_start, 1)},
           "rss_start_kb": start and start["rss_kb"], "rss_start_at_frames": start and start["rows"],
           "rss_end_kb": end and end["rss_kb"], "rss_end_at_frames": end and end["rows"],
           "rss_peak_kb": end and end["hwm_kb"], "rss_by_quarter": quarter,
           "stderr_error_lines": error_lines[:10], "stderr_error_count": len(error_lines), "samples": samples}
    if serve:
        st = mon.status or {}
        rec |= {"status": {k: st.get(k) for k in ("frames", "fps", "dropped", "healthy", "stream_fps")},
                "status_at_frames": mon.status_at_rows, "metrics_dropped": mon.metrics_dropped}
    got = {}
    mj = [r for r in readers if r.name.startswith("mjpeg")]
    if mj:
        got["mjpeg_frames"] = [r.counts[BOUNDARY] for r in mj]
        got["mjpeg_bytes"] = [r.bytes for r in mj]
    if sse is not None:
        got["sse"] = {k.decode().strip(": ").replace("event: ", ""): v for k, v in sse.counts.items()}
        got["sse_last_seq"] = _last_seq(sse.tail)
        got["sse_results_per_reader"] = [r.counts[b"event: result"] for r in readers if r.name.startswith("sse")]
    got["errors"] = [r.error for r in readers if r.error]
    rec["received"] = got
    if subscriber is not None and mqtt_on:
        time.sleep(0.5)  # the last messages (the final state, "offline")
        rec["mqtt_messages"] = dict(subscriber.counts)
    print(f"[{name}, round {round_no}] {n} frames, {float(fps):.1f} FPS over {float(wall):.1f} s; RSS "
          f"{(rec['rss_start_kb'] or 0) / 1024:.0f} -> {(rec['rss_end_kb'] or 0) / 1024:.0f} MiB; CPU s "
          f"{rec['cpu_s']}", file=sys.stderr)
    return rec


def _last_seq(tail: bytes) -> int | None:
    found = re.findall(rb'"seq": (\d+)', tail)
    return int(found[-1]) if found else None


# --- report ----------------------------------------------------------------------------------------------

def mib(kb) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def num(x) -> str:
    return "-" if x is None else f"{x:g}"


def render(rec: dict) -> str:
    m = rec["machine"]
    unpaced = [x for x in rec["variants"] if not x.get("paced")]
    paced = [x for x in rec["variants"] if x.get("paced")]
    rounds = sorted({x["round"] for x in unpaced})
    keys = [k for k in VARIANTS if any(x["key"] == k for x in unpaced)]
    by = {(x["key"], x["round"]): x for x in unpaced}

    def ratio(x) -> float:
        return x["fps"] / by[("baseline", x["round"])]["fps"]

    lines = [
        "# `edgeclf run --serve --mqtt` soak: do viewers cost inference?",
        "",
        "What this measures: the classify loop's frames per second with the device service and real clients "
        "(three MJPEG readers, one SSE reader, one MQTT subscriber, one viewer that never reads) against the "
        "same run without them -- and with the server alone, and with each kind of client alone, to tell their "
        "costs apart -- as ratios to the baseline of the same round; the run's memory at the start and the end; "
        "what was dropped, and for whom. Un-paced (as fast as it classifies) is the hardest case; at a camera's "
        "rate (--pace) the ratio should be 1. The clients run in the benchmark's process on the same 2 cores as "
        "the run (on a device they would be other machines): their CPU time is given, with the broker's and "
        "that of everything else on the machine while each run lasted (other jobs share it).",
        "",
        f"Measured {rec['date']} ({rec['wall_s']:.0f} s in all). Machine: {m['cpu']}, nproc {m['nproc']}; load "
        f"average before the first run {' / '.join(map(str, rec['load_before']))} (1/5/15 min; the 1-min figure "
        f"before each run is in the tables -- it includes the previous run's own load); Python {m['python']}; "
        + ", ".join(f"{k} {val}" for k, val in m["versions"].items()) + f"; code at {m.get('code', 'unknown')}.",
        "",
        "Reproduce (from the checkout root; the model: MobileNetV2 0.35 at 128 px, linear probe on hymenoptera, "
        "int8 TFLite, the export folder's default artifact, 2 threads, throughput mode as `edgeclf run` picks for "
        "a video):",
        "",
        "```",
        "EDGECLF_WEIGHTS_DIR=../shared/weights python tests/runtime_models.py /tmp/rtm --size 128",
        f"flock /tmp/edgeclf-cpu.lock python benchmarks/serve_soak.py /tmp/rtm/export {rec['argv']}".rstrip(),
        "```",
        "",
        f"Video: {rec['video']['frames']} frames, {rec['video']['size']}, mp4v, of the validation photos in "
        f"`{rec['video']['data']}` (the scene video of `event_defaults.py`: {rec['video']['runs']} runs of ants or "
        f"bees, seed {rec['video']['seed']}), played with `--loop`. The runs (PORT and MQPORT: free 127.0.0.1 "
        "ports; mosquitto started by the script on MQPORT):",
        "",
        "```",
    ]
    seen = set()
    for x in rec["variants"]:
        if x["command"] not in seen:
            seen.add(x["command"])
            lines.append(x["command"])
    lines += ["```", "", f"## As fast as it classifies (no --pace), {unpaced[0]['frames']} frames each", "",
              f"Rounds: {len(rounds)}, each running every variant once, in a rotated order; the ratio is to the "
              "same round's baseline.", "",
              "| run | clients | " + " | ".join(f"FPS r{r}" for r in rounds) + " | "
              + " | ".join(f"ratio r{r}" for r in rounds) + " | ratio, median | CPU s of other jobs during the run "
              "(per round) |",
              "|---|---|" + "---|" * (2 * len(rounds) + 2)]
    for k in keys:
        xs = [by[(k, r)] for r in rounds if (k, r) in by]
        rs = [ratio(x) for x in xs]
        lines.append(f"| {xs[0]['name']} | {xs[0]['clients']} | " + " | ".join(f"{x['fps']:.1f}" for x in xs)
                     + " | " + " | ".join(f"{v:.3f}" for v in rs) + f" | **{statistics.median(rs):.3f}** | "
                     + " / ".join(f"{x['cpu_s']['others']:g}" for x in xs) + " |")
    lines += ["", "CPU seconds over each run's process lifetime (round 1; model load included): the run itself, "
                  "the clients (this benchmark's process), the broker, and everything else on the machine:", "",
              "| run | wall s | loop s (its summary) | run CPU s | clients CPU s | mosquitto CPU s | others CPU s | "
              "latency p50 / p90 ms | stderr ERROR/Traceback lines |", "|---|---|---|---|---|---|---|---|---|"]
    for k in keys:
        x = by.get((k, rounds[0]))
        if x is None:
            continue
        c = x["cpu_s"]
        lines.append(f"| {x['name']} | {c['wall']:g} | {x['wall_s']:.1f} | {c['run']:g} | {c['benchmark_clients']:g}"
                     f" | {c['mosquitto']:g} | {c['others']:g} | {x['latency_ms']['p50']:.2f} / "
                     f"{x['latency_ms']['p90']:.2f} | {x['stderr_error_count']} |")
    lines += ["", "Memory (VmRSS of the run process, MiB; the first sample past 1000 frames, then at 25 / 50 / 75 % "
                  "of the frames and the last sample before it exited; peak = VmHWM):", "",
              "| run | round | after ~1000 frames | 25 % | 50 % | 75 % | end | peak |", "|---|---|---|---|---|---|---|---|"]
    for k in keys:
        for r in rounds:
            x = by.get((k, r))
            if x is None:
                continue
            q = x["rss_by_quarter"]
            lines.append(f"| {x['name']} | {r} | {mib(x['rss_start_kb'])} (at {x['rss_start_at_frames']}) | "
                         + " | ".join(mib(v['rss_kb']) if v else "-" for v in q[:3])
                         + f" | {mib(x['rss_end_kb'])} (at {x['rss_end_at_frames']}) | {mib(x['rss_peak_kb'])} |")
    lines += ["", "Drops and deliveries (the last /api/status and /metrics answers before the run ended, at the "
                  "frame given; the clients' counts at the end):", "",
              "| run | round | at frame | /api/status dropped: source / viewer / events_client | /metrics "
              "edgeclf_dropped_frames_total: source / viewer / events_client | MJPEG pictures per reader | SSE "
              "results / events / states (last seq) | MQTT messages |", "|---|---|---|---|---|---|---|---|"]
    for x in [x for x in rec["variants"] if x.get("status") is not None or x.get("mqtt_messages") is not None]:
        d = (x.get("status") or {}).get("dropped") or {}
        md = x.get("metrics_dropped") or {}
        g = x.get("received") or {}
        sse = g.get("sse")
        mq = x.get("mqtt_messages")
        lines.append(
            f"| {x['name']} | {x['round']} | {x.get('status_at_frames', '-')} | "
            + (f"{d.get('source')} / {d.get('viewer')} / {d.get('events_client')}" if d else "-") + " | "
            + (f"{num(md.get('source'))} / {num(md.get('viewer'))} / {num(md.get('events_client'))}" if md else "-")
            + f" | {', '.join(map(str, g.get('mjpeg_frames', []))) or '-'} | "
            + (f"{sse.get('result')} / {sse.get('event')} / {sse.get('state')} ({g.get('sse_last_seq')})" if sse
               else "-")
            + f" | {', '.join(f'{k} {n}' for k, n in sorted(mq.items())) if mq else '-'} |")
    if paced:
        pb = next(x for x in paced if x["key"] == "baseline")
        lines += ["", f"## At a camera's rate (--pace {rec['pace']:g}), {pb['frames']} frames each", "",
                  "| run | FPS (its summary) | ratio to baseline | latency p50 / p90 ms | RSS after ~1000 frames MiB | "
                  "RSS at the end MiB | peak MiB | run CPU s | clients CPU s | others CPU s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for x in paced:
            c = x["cpu_s"]
            lines.append(f"| {x['name']} | {x['fps']:.2f} | **{x['fps'] / pb['fps']:.3f}** | "
                         f"{x['latency_ms']['p50']:.2f} / {x['latency_ms']['p90']:.2f} | {mib(x['rss_start_kb'])} | "
                         f"{mib(x['rss_end_kb'])} | {mib(x['rss_peak_kb'])} | {c['run']:g} | "
                         f"{c['benchmark_clients']:g} | {c['others']:g} |")
    errs = [x for x in rec["variants"] if x["stderr_error_count"]]
    if errs:
        lines += ["", "Error lines the runs printed on stderr (the first of each):", ""]
        for x in errs:
            lines.append(f"- {x['name']}, round {x['round']}: {x['stderr_error_count']} lines, first: "
                         f"`{x['stderr_error_lines'][0]}`")
    for f in rec.get("followups", []):
        lines += ["", f"## Follow-up: {f['title']}", "", f"Measured {f['date']} (load average before "
                  f"{' / '.join(map(str, f['load_before']))}): `flock /tmp/edgeclf-cpu.lock python "
                  f"benchmarks/serve_soak.py /tmp/rtm/export {f['argv']}`; the ratio is to the same round's baseline.",
                  ""]
        fb = {(x["key"], x["round"]): x for x in f["variants"]}
        frounds = sorted({x["round"] for x in f["variants"]})
        lines += ["| run | " + " | ".join(f"FPS r{r}" for r in frounds) + " | "
                  + " | ".join(f"ratio r{r}" for r in frounds) + " | ratio, median | run CPU s (r1) | SSE results "
                  "per reader (r1) | others CPU s (per round) |", "|---|" + "---|" * (2 * len(frounds) + 4)]
        for k in [k for k in VARIANTS if (k, frounds[0]) in fb]:
            xs = [fb[(k, r)] for r in frounds]
            rs = [x["fps"] / fb[("baseline", x["round"])]["fps"] for x in xs]
            per = (xs[0].get("received") or {}).get("sse_results_per_reader")
            lines.append(f"| {xs[0]['name']} | " + " | ".join(f"{x['fps']:.1f}" for x in xs) + " | "
                         + " | ".join(f"{v:.3f}" for v in rs) + f" | **{statistics.median(rs):.3f}** | "
                         f"{xs[0]['cpu_s']['run']:g} | {', '.join(map(str, per)) if per else '-'} | "
                         + " / ".join(f"{x['cpu_s']['others']:g}" for x in xs) + " |")
    lines += ["", "## Conclusion", "", rec.get("conclusion", "(written by hand after the run)"), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export", type=Path, nargs="?", help="export folder (edgeclf.json, model_int8.tflite, ...)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA,
                    help="folder with ants/ and bees/ photos [default: ../shared/data/hymenoptera_data/val]")
    ap.add_argument("--frames", type=int, default=20000, help="frames of each un-paced run [20000]")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of the un-paced runs [2]")
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS),
                    help="un-paced variants (baseline is always run) [" + " ".join(DEFAULT_VARIANTS) + "]")
    ap.add_argument("--paced-frames", type=int, default=3000, help="frames of each paced run; 0: none [3000]")
    ap.add_argument("--pace", type=float, default=30.0, help="the paced runs' --pace [30]")
    ap.add_argument("--runs", type=int, default=40, help="runs of one class in the video (event_defaults.py) [40]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto",
                    help="the broker to start on 127.0.0.1 [mosquitto on PATH, else /usr/sbin/mosquitto]")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_soak",
                    help="results path without suffix (.md and .json) [benchmarks/results/serve_soak]")
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the recorded .json at --out")
    args = ap.parse_args(argv)
    if args.render:
        args.out.with_suffix(".md").write_text(render(json.loads(args.out.with_suffix(".json").read_text())))
        return
    if args.export is None:
        ap.error("EXPORT is required (unless --render)")
    export = args.export.resolve()
    keys = ["baseline"] + [k for k in args.variants if k != "baseline"]

    t0 = time.monotonic()
    load_before = load_average()
    size = (640, 480)
    with tempfile.TemporaryDirectory(prefix="edgeclf-serve-soak-") as tmp:
        work = Path(tmp)
        video = work / "scene.mp4"
        runs, shown = make_video(video, args.data, runs=args.runs, size=size, seed=args.seed)
        print(f"video: {len(shown)} frames ({time.monotonic() - t0:.1f} s)", file=sys.stderr)
        variants = []
        with Broker(args.mosquitto, work) as broker:
            sub = MqttCounter(broker.port)
            try:
                for r in range(args.rounds):
                    order = keys[r % len(keys):] + keys[:r % len(keys)]
                    for k in order:
                        variants.append(run_variant(k, export, video, work, args.frames, broker=broker,
                                                    subscriber=sub, round_no=r + 1))
                if args.paced_frames:
                    for k in ("baseline", "full"):
                        x = run_variant(k, export, video, work, args.paced_frames, broker=broker, subscriber=sub,
                                        pace=args.pace)
                        x["paced"] = True
                        variants.append(x)
            finally:
                sub.close()
    argv_shown = []
    for flag, val, dflt in (("--frames", args.frames, 20000), ("--rounds", args.rounds, 2),
                            ("--paced-frames", args.paced_frames, 3000), ("--pace", args.pace, 30.0),
                            ("--runs", args.runs, 40), ("--seed", args.seed, 0)):
        if val != dflt:
            argv_shown.append(f"{flag} {val:g}")
    if set(args.variants) != set(DEFAULT_VARIANTS):
        argv_shown.append("--variants " + " ".join(args.variants))
    rec = {"date": time.strftime("%Y-%m-%d %H:%M"), "wall_s": time.monotonic() - t0, "machine": machine(),
           "load_before": load_before, "load_after": load_average(), "argv": " ".join(argv_shown),
           "pace": args.pace,
           "video": {"frames": len(shown), "runs": len(runs), "size": f"{size[0]}x{size[1]}", "seed": args.seed,
                     "data": os.path.relpath(args.data, ROOT)},
           "variants": variants}
    out_json = args.out.with_suffix(".json")
    if out_json.is_file():  # keep a conclusion written by hand
        try:
            old = json.loads(out_json.read_text())
            if old.get("conclusion"):
                rec["conclusion"] = old["conclusion"]
        except ValueError:
            pass
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(rec, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(render(rec))
    print(f"wrote {args.out.with_suffix('.md')} and .json ({time.monotonic() - t0:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
