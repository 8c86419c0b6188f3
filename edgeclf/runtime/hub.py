"""One loop, many listeners: the classify loop hands each result to the hub, the hub to every listener.

The loop never waits for a listener. A listener's methods are called on the loop's thread and must return
at once: one that does real work (a socket, a disk, a broker) hands it to a thread of its own through the
newest-value slot or a bounded queue (:class:`Mailbox`), and counts what it drops. A listener that raises is
logged once and the loop goes on.

    hub = Hub(classes, EventOptions(), listeners=[server, mqtt, webhook])
    hub.publish(result)     # every frame: events are computed once here and shared by every listener
    hub.close()             # the run ends: active labels end, listeners close
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Generic, Sequence, TypeVar

from edgeclf.log import get_logger
from edgeclf.runtime.events import Event, EventOptions, EventTracker, FrameResult, State

log = get_logger(__name__)
T = TypeVar("T")


class Listener:
    """Override what you need; every method is called on the classify loop's thread and must not block."""

    wants_images = False  # True: the loop keeps each frame's original picture for it (FrameResult.image)

    def start(self, hub: "Hub") -> None:
        """The run is about to start (the model is loaded, the source open)."""

    def result(self, result: FrameResult) -> None:
        """Every classified frame."""

    def event(self, event: Event) -> None:
        """A label started or ended."""

    def state(self, state: State) -> None:
        """The state changed (it changes only through events)."""

    def close(self) -> None:
        """The run has ended: flush what is queued (briefly), stop threads."""


class Mailbox(Generic[T]):
    """A bounded queue that never blocks the putter: when full, the item is dropped and counted."""

    def __init__(self, maxsize: int = 256):
        self._q: queue.Queue[T | None] = queue.Queue(maxsize)
        self.dropped = 0

    def put(self, item: T) -> bool:
        try:
            self._q.put_nowait(item)
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def get(self, timeout: float | None = None) -> T | None:
        """The next item; None on timeout or after :meth:`close`."""
        try:
            return self._q.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Wake the reader with a None (even when full: the oldest item makes room)."""
        while True:
            try:
                self._q.put_nowait(None)
                return
            except queue.Full:
                try:
                    self._q.get_nowait()
                except queue.Empty:
                    pass


class Hub:
    """The run's shared view: latest result, events, state, counters; fans results out to listeners."""

    def __init__(self, classes: Sequence[str], events: EventOptions | None = None,
                 listeners: Sequence[Listener] = (), *, stall_after: float = 5.0):
        self.classes = list(classes)
        self.tracker = EventTracker(self.classes, events)
        self.listeners = list(listeners)
        self.stall_after = stall_after
        self.latest: FrameResult | None = None
        self.frames = 0
        self.started = time.monotonic()
        self.last_frame = 0.0  # time.monotonic() of the latest result; 0: none yet
        self.source_name = ""
        self.source_dropped = lambda: 0  # frames the source replaced before the loop took them
        self.running = False
        self.ended = False  # the source ran out (a file, a video): no more frames will come
        self.end_reason = ""
        self.fps = 0.0  # frames per second over the last 30 frames
        self._times: deque[float] = deque(maxlen=30)
        self.snapshots = None  # a SnapshotWriter: the picture of each start event's frame (--snapshots)
        self._failed: set[int] = set()
        self._lock = threading.Lock()

    @property
    def wants_images(self) -> bool:
        return self.snapshots is not None or any(lst.wants_images for lst in self.listeners)

    @property
    def state(self) -> State:
        return self.tracker.state

    def add(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def start(self, source_name: str = "", source_dropped=None) -> None:
        self.source_name = source_name
        if source_dropped is not None:
            self.source_dropped = source_dropped
        self.started = time.monotonic()
        self.running = True
        for lst in self.listeners:  # a listener that cannot start (a port in use) stops the run: raised
            lst.start(self)

    def publish(self, result: FrameResult) -> list[Event]:
        now = time.monotonic()
        self._times.append(now)  # frames per second over the last frames: a burst after a stall is no spike
        span = now - self._times[0]
        self.fps = (len(self._times) - 1) / span if span > 0 else 0.0
        before = self.tracker.state
        events = self.tracker.update(result)
        if self.snapshots is not None and result.image is not None:
            for ev in events:
                if ev.type == "start":
                    ev.snapshot = self.snapshots.save(result.image, ev)
                    self.tracker.annotate(ev.label, ev.snapshot)
        with self._lock:
            self.latest, self.frames, self.last_frame = result, result.seq, now
        for lst in self.listeners:
            self._call(lst, "result", result)
            for ev in events:
                self._call(lst, "event", ev)
            if self.tracker.state != before:
                self._call(lst, "state", self.tracker.state)
        return events

    def health(self) -> tuple[bool, str]:
        """(healthy, reason): frames flowing, or why not."""
        if not self.running:
            return False, "the run has not started" if not self.ended else f"the run has ended: {self.end_reason}"
        now = time.monotonic()
        if not self.last_frame:  # healthy means frames flow: the first one has to come first
            return False, f"waiting for the first frame ({now - self.started:.1f} s since the source opened)"
        age = now - self.last_frame
        if age > self.stall_after:
            return False, f"source stalled: no new frame for {age:.1f} s (limit {self.stall_after:g} s)"
        return True, "frames flowing"

    def close(self, reason: str = "stopped") -> None:
        """End active labels (their end events go out), then close every listener."""
        if self.ended:
            return
        self.running, self.ended, self.end_reason = False, True, reason
        before = self.tracker.state
        for ev in self.tracker.finish():
            for lst in self.listeners:
                self._call(lst, "event", ev)
        if self.tracker.state != before:
            for lst in self.listeners:
                self._call(lst, "state", self.tracker.state)
        for lst in reversed(self.listeners):
            self._call(lst, "close")
        if self.snapshots is not None:
            self.snapshots.close()

    def _call(self, listener: Listener, method: str, *args) -> None:
        try:
            getattr(listener, method)(*args)
        except Exception as exc:  # a listener never stops inference; say so once per listener
            if id(listener) not in self._failed:
                self._failed.add(id(listener))
                log.warning(f"{type(listener).__name__}.{method} failed: {type(exc).__name__}: {exc} "
                            "(the run goes on; further failures of it are not reported)")
