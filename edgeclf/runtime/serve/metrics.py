"""``GET /metrics``: the run in Prometheus' text format, named by its conventions (``edgeclf_`` prefix,
``_total`` counters, seconds, a ``_info`` metric for the model).

Counts the hub already keeps (frames, drops, events) are read at scrape time by a collector, so the loop pays
nothing for them; only the inference-time histogram is observed per frame (a lock and an add).
"""
from __future__ import annotations

from collections import Counter as Tally
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from edgeclf.runtime.events import Event
from edgeclf.runtime.hub import Hub

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# inference on a board: a millisecond (a tiny int8 model on a Pi 5) to a second (InceptionResNetV2 on a Pi 3)
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class RunCollector(Collector):
    def __init__(self, hub: Hub, model: dict, extra: Callable[[], dict[str, int]]):
        self.hub, self.model, self.extra = hub, model, extra
        self.events: Tally[tuple[str, str]] = Tally()

    def count(self, event: Event) -> None:
        self.events[(event.label, event.type)] += 1

    def collect(self) -> Iterator[Metric]:
        hub, extra = self.hub, self.extra()
        yield CounterMetricFamily("edgeclf_frames", "Frames classified.", value=hub.frames)
        dropped = CounterMetricFamily("edgeclf_dropped_frames", "Frames not classified or not shown, by reason: "
                                      "source (the camera delivered a newer one before inference was free), viewer "
                                      "(a live-view client was not ready), events_client (an event-stream client "
                                      "was too slow).", labels=["reason"])
        dropped.add_metric(["source"], hub.source_dropped())
        dropped.add_metric(["viewer"], extra.get("viewer_dropped", 0))
        dropped.add_metric(["events_client"], extra.get("sse_dropped", 0))
        yield dropped
        ok, _ = hub.health()
        yield GaugeMetricFamily("edgeclf_source_up", "1 while frames flow, 0 when the source has stalled.",
                                value=1 if ok else 0)
        yield GaugeMetricFamily("edgeclf_frames_per_second", "Frames classified per second, smoothed.",
                                value=hub.fps)
        events = CounterMetricFamily("edgeclf_events", "Events, by label and type (start, end).",
                                     labels=["label", "type"])
        for (label, kind), n in sorted(self.events.items()):
            events.add_metric([label, kind], n)
        yield events
        state = GaugeMetricFamily("edgeclf_state", "1 for the current state's label.", labels=["label"])
        state.add_metric([hub.state.label], 1)
        yield state
        yield GaugeMetricFamily("edgeclf_viewers", "Live-view and event-stream clients connected.",
                                value=extra.get("viewers", 0))
        requests = CounterMetricFamily("edgeclf_predict_requests", "POST /api/predict requests, by status code.",
                                       labels=["code"])
        for code, n in sorted(extra.get("predict_codes", {}).items()):
            requests.add_metric([str(code)], n)
        yield requests
        info = InfoMetricFamily("edgeclf_model", "The model that runs.")
        info.add_metric([], {k: str(self.model.get(k) or "") for k in
                             ("name", "backbone", "file", "format", "precision", "backend", "recipe", "input")}
                        | {"sha256": str(self.model.get("sha256") or "")[:16],
                           "val_top1": "" if self.model.get("val_top1") is None else f"{self.model['val_top1']:.4f}"})
        yield info


class RunMetrics:
    def __init__(self, hub: Hub, model: dict, extra: Callable[[], dict]):
        self.registry = CollectorRegistry(auto_describe=False)
        self.inference = Histogram("edgeclf_inference_seconds", "Inference time of one frame (the model alone).",
                                   buckets=BUCKETS, registry=self.registry)
        self.run = RunCollector(hub, model, extra)
        self.registry.register(self.run)

    def render(self) -> bytes:
        return generate_latest(self.registry)
