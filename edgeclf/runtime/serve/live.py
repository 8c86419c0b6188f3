"""What viewers get: annotated JPEG frames at a capped rate, and a stream of results and events.

Neither costs inference time. The loop only leaves a reference to its newest result in the hub; a thread of
its own encodes the newest frame at most ``fps`` times a second, and only while somebody watches. Every
viewer takes the newest picture when it is ready for one: a slow viewer skips frames (counted), a viewer
that never reads holds one picture and its socket's buffers, never a queue. Event-stream clients get a
bounded queue each; when it is full, their messages are dropped and counted.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque

import numpy as np

from edgeclf.runtime.events import Event, FrameResult, State
from edgeclf.runtime.hub import Hub
from edgeclf.runtime.output import draw_overlay

MAX_VIEW_WIDTH = 800  # pictures wider than this are scaled down before encoding (a folder of 12 MP photos)
CLIENT_QUEUE = 64


class LiveView:
    """The newest annotated frame as JPEG, re-encoded at most ``fps`` times a second while watched."""

    def __init__(self, hub: Hub, fps: float = 5.0, quality: int = 80):
        self.hub, self.period, self.quality = hub, 1.0 / fps, quality
        self.viewers = 0  # MJPEG clients and pages watching
        self.jpeg: bytes | None = None
        self.seq = 0  # the frame `jpeg` shows (FrameResult.seq)
        self.encoded = 0  # pictures made so far; `jpeg` is picture number `encoded`
        self._gone_dropped = 0  # pictures that viewers now gone skipped
        self._watching: dict[int, list[int]] = {}  # viewer -> [pictures made when it came, pictures sent]
        self._wanted = threading.Event()  # set while somebody watches
        self._stop = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="edgeclf-liveview", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _work(self) -> None:
        import cv2

        while not self._stop.is_set():
            if not self._wanted.wait(0.5):
                continue
            started = time.monotonic()
            latest = self.hub.latest
            if latest is not None and latest.seq != self.seq and latest.image is not None:
                annotated = draw_overlay(_fit(latest.image), latest.pred, self.hub.fps or None, latest.latency_ms)
                ok, buf = cv2.imencode(".jpg", annotated, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
                if ok:
                    self.jpeg, self.seq, self.encoded = buf.tobytes(), latest.seq, self.encoded + 1
                    self._wake()
            self._stop.wait(max(0.0, self.period - (time.monotonic() - started)))

    def _wake(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that viewer's loop has closed
                pass

    async def next_jpeg(self, after: int, timeout: float = 5.0) -> tuple[int, bytes] | None:
        """(number, JPEG) of the newest picture after picture number ``after``; None when none came within
        ``timeout``. A viewer that gets a number more than one past ``after`` missed the ones between."""
        if self.jpeg is not None and self.encoded != after:
            return self.encoded, self.jpeg
        event = asyncio.Event()
        with self._lock:
            self._waiters.append((asyncio.get_running_loop(), event))
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            return None
        return (self.encoded, self.jpeg) if self.jpeg is not None else None

    @property
    def dropped_for_viewers(self) -> int:
        """Pictures made while a viewer watched that it did not get: it was still sending an older one (a slow
        link, a phone in a pocket, a client that never reads). They cost that viewer, never inference."""
        with self._lock:
            return self._gone_dropped + sum(self._missed(v) for v in self._watching.values())

    def _missed(self, viewer: list[int]) -> int:
        came, sent = viewer
        return max(0, self.encoded - came - sent)

    def join(self, viewer: int) -> None:
        with self._lock:
            # the picture there now is its first: it is owed every one from that on
            self._watching[viewer] = [self.encoded - (1 if self.jpeg is not None else 0), 0]
            self.viewers = len(self._watching)
            self._wanted.set()

    def sent(self, viewer: int) -> None:
        with self._lock:
            self._watching[viewer][1] += 1

    def leave(self, viewer: int) -> None:
        with self._lock:
            self._gone_dropped += self._missed(self._watching.pop(viewer))
            self.viewers = len(self._watching)
            if not self._watching:
                self._wanted.clear()

    def close(self) -> None:
        self._stop.set()
        self._wanted.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def _fit(bgr: np.ndarray) -> np.ndarray:
    h, w = bgr.shape[:2]
    if w <= MAX_VIEW_WIDTH:
        return bgr
    import cv2

    return cv2.resize(bgr, (MAX_VIEW_WIDTH, max(1, round(h * MAX_VIEW_WIDTH / w))), interpolation=cv2.INTER_AREA)


class EventStream:
    """Server-sent events to every subscribed client: ``result`` per frame, ``event`` and ``state``.

    The loop's thread only appends each message to a bounded deque (no wake-up of the server's thread per
    frame: that cost the loop 0.4 ms a frame at 600 frames a second); the server's loop takes them every
    ``TICK`` seconds, in order, and hands one copy to each client's bounded queue (full: dropped, counted).
    """

    TICK = 0.05

    def __init__(self, backlog: int = 4096) -> None:
        self._clients: set[asyncio.Queue] = set()
        self._pending: deque[tuple[str, dict]] = deque(maxlen=backlog)
        self._appended = 0  # messages the loop handed over; minus those taken and still pending: lost
        self._taken = 0
        self._pump: asyncio.Task | None = None
        self._closed = False
        self.dropped = 0  # messages a client was too slow for, or that the pump lost

    @property
    def clients(self) -> int:
        return len(self._clients)

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(CLIENT_QUEUE)
        self._clients.add(q)
        if self._pump is None or self._pump.done():
            self._pending.clear()  # what came while nobody listened is nobody's
            self._appended = self._taken = 0
            self._pump = asyncio.get_running_loop().create_task(self._run())
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._clients.discard(q)

    # called on the classify loop's thread: an append, nothing more
    def result(self, result: FrameResult) -> None:
        if self._clients:
            self._pending.append(("result", result.to_json()))
            self._appended += 1

    def event(self, event: Event) -> None:
        if self._clients:
            self._pending.append(("event", event.to_json()))
            self._appended += 1

    def state(self, state: State) -> None:
        if self._clients:
            self._pending.append(("state", state.to_json()))
            self._appended += 1

    async def _run(self) -> None:
        while self._clients and not self._closed:
            await asyncio.sleep(self.TICK)
            taken = 0
            while self._pending:
                kind, payload = self._pending.popleft()
                taken += 1
                message = f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"
                for q in list(self._clients):
                    try:
                        q.put_nowait(message)
                    except asyncio.QueueFull:
                        self.dropped += 1
            self._taken += taken
            lost = self._appended - self._taken - len(self._pending)
            if lost > 0:  # the backlog overflowed between two ticks
                self.dropped += lost
                self._taken += lost
        self._pump = None

    def close(self) -> None:
        self._closed = True
