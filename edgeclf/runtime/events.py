"""Events, not frames: per-frame results turned into "a bee arrived at 14:02, left at 14:05".

One :class:`EventTracker` per run; every output (the page, ``/api/events``, MQTT, the webhook) reads the
events it makes, so they never disagree. For each tracked label:

* its score is **smoothed**: the mean of its probability over the last ``smooth`` frames;
* it **enters** (a ``start`` event) when the smoothed score stays at or above ``enter`` for ``min_frames``
  consecutive frames, and **leaves** (an ``end`` event) the first frame it falls below ``exit`` -- a lower
  threshold, so one noisy frame near the line does not make it flap;
* after it leaves, it cannot start again for ``cooldown`` seconds.

The **state** is the active label with the highest smoothed score, or ``none`` when no label is active; it
changes only through events.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from edgeclf.runtime.output import Prediction

NO_STATE = "none"


@dataclass(frozen=True)
class EventOptions:
    # measured on a video of real photos with planted wrong frames (benchmarks/results/event_defaults.md): these
    # make 35 errors on 80 runs where the hand-picked 5 / 0.7 / 0.5 made 72; enter 0.9 made 30 there, but a
    # model of more classes spreads its scores, and 0.8 leaves it room
    smooth: int = 9  # frames averaged
    enter: float = 0.8  # smoothed score at which a label enters ...
    exit: float = 0.3  # ... and below which it leaves
    min_frames: int = 3  # consecutive frames at or above `enter` before it starts
    cooldown: float = 2.0  # seconds before the same label can start again
    labels: tuple[str, ...] | None = None  # tracked labels (None: every class)

    def check(self, classes: Sequence[str]) -> None:
        """Raise ValueError with a one-line reason for settings that cannot work."""
        if self.smooth < 1 or self.min_frames < 1:
            raise ValueError("--event-smooth and --event-min-frames must be at least 1")
        if not 0.0 < self.enter <= 1.0 or not 0.0 <= self.exit <= 1.0:
            raise ValueError("--event-enter must be in (0, 1] and --event-exit in [0, 1]")
        if self.exit > self.enter:
            raise ValueError(f"--event-exit ({self.exit:g}) must not be above --event-enter ({self.enter:g}): "
                             "a label would leave as soon as it entered")
        if self.cooldown < 0:
            raise ValueError("--event-cooldown must not be negative")
        unknown = [lb for lb in self.labels or () if lb not in classes]
        if unknown:
            raise ValueError(f"--event-labels: {', '.join(unknown)} not among the model's classes "
                             f"({', '.join(classes)})")


@dataclass
class FrameResult:
    """One classified frame, as every listener sees it."""

    seq: int  # frames classified in this run so far, this one included
    source: str  # the file, video, camera or URL (never with a password)
    frame: int  # position in the source
    time: float  # wall-clock time, seconds since the epoch
    pred: Prediction
    latency_ms: float  # inference alone
    image: np.ndarray | None = field(default=None, repr=False)  # the original picture, BGR, when kept
    smoothed: dict[str, float] = field(default_factory=dict)  # tracked labels' smoothed scores

    def to_json(self) -> dict:
        return {"label": self.pred.label, "score": round(self.pred.score, 6),
                "top_k": [{"label": lb, "score": round(s, 6)} for lb, s in self.pred.top_k],
                "frame": self.frame, "seq": self.seq, "time": round(self.time, 3), "source": self.source,
                "latency_ms": round(self.latency_ms, 3)}


@dataclass
class Event:
    """A label that started (``type="start"``) or ended (``type="end"``). ``end`` is None on a start."""

    id: int  # the start and end of one appearance share it
    type: str
    label: str
    start: float  # time of the first frame at or above `enter`
    end: float | None
    peak: float  # highest smoothed score so far
    frames: int  # frames from start to end (so far, on a start)
    snapshot: str | None = None  # file name of the start frame's picture, under --snapshots

    def to_json(self) -> dict:
        return {"id": self.id, "type": self.type, "label": self.label, "start": round(self.start, 3),
                "end": None if self.end is None else round(self.end, 3),
                "duration": None if self.end is None else round(self.end - self.start, 3),
                "peak": round(self.peak, 6), "frames": self.frames, "snapshot": self.snapshot}


@dataclass(frozen=True)
class State:
    label: str  # the active label, or NO_STATE
    score: float  # its smoothed score when the state changed
    since: float  # when it changed, seconds since the epoch

    def to_json(self) -> dict:
        return {"label": self.label, "score": round(self.score, 6), "since": round(self.since, 3)}


@dataclass
class _Track:
    above: int = 0  # consecutive frames at or above `enter`
    first_above: float = 0.0
    active: Event | None = None
    last_above_exit: float = 0.0
    quiet_until: float = 0.0  # cooldown


class EventTracker:
    """Feed it every frame's result (:meth:`update`); it returns the events that frame completed."""

    def __init__(self, classes: Sequence[str], options: EventOptions | None = None, *, start_time: float | None = None):
        self.options = opts = options or EventOptions()
        opts.check(classes)
        self.classes = list(classes)
        tracked = opts.labels or tuple(self.classes)
        self._index = {lb: self.classes.index(lb) for lb in tracked}
        self._window: deque[np.ndarray] = deque(maxlen=opts.smooth)
        self._sum = np.zeros(len(self.classes), np.float64)
        self._tracks = {lb: _Track() for lb in tracked}
        self._next_id = 1
        self.state = State(NO_STATE, 0.0, time.time() if start_time is None else start_time)
        self.recent: deque[Event] = deque(maxlen=50)  # the page's list

    def smoothed(self) -> dict[str, float]:
        n = max(len(self._window), 1)
        return {lb: float(self._sum[i] / n) for lb, i in self._index.items()}

    def update(self, result: FrameResult) -> list[Event]:
        probs = np.asarray(result.pred.probs, np.float64)
        if len(self._window) == self._window.maxlen:
            self._sum -= self._window[0]
        self._window.append(probs)
        self._sum += probs
        smoothed = self.smoothed()
        result.smoothed = smoothed
        opts, now, events = self.options, result.time, []
        for label, track in self._tracks.items():
            score = smoothed[label]
            event = track.active
            if event is not None:
                if score >= opts.exit:
                    event.frames += 1
                    event.peak = max(event.peak, score)
                    track.last_above_exit = now
                    continue
                ended = Event(event.id, "end", label, event.start, track.last_above_exit, event.peak, event.frames,
                              event.snapshot)
                track.active, track.above = None, 0
                track.quiet_until = track.last_above_exit + opts.cooldown
                events.append(ended)
                continue
            if score < opts.enter or now < track.quiet_until:
                track.above = 0
                continue
            if track.above == 0:
                track.first_above = now
            track.above += 1
            if track.above >= opts.min_frames:
                track.active = Event(self._next_id, "start", label, track.first_above, None, score, track.above)
                track.last_above_exit = now
                self._next_id += 1
                events.append(Event(**vars(track.active)))
        if events:
            self.recent.extend(events)
            self._update_state(smoothed, now)
        return events

    def _update_state(self, smoothed: dict[str, float], now: float) -> None:
        active = [lb for lb, t in self._tracks.items() if t.active is not None]
        label = max(active, key=lambda lb: smoothed[lb]) if active else NO_STATE
        if label != self.state.label:
            self.state = State(label, smoothed.get(label, 0.0), now)

    def annotate(self, label: str, snapshot: str | None) -> None:
        """Name the picture of ``label``'s active appearance (its end event carries it too)."""
        track = self._tracks.get(label)
        if track is not None and track.active is not None:
            track.active.snapshot = snapshot

    def finish(self, now: float | None = None) -> list[Event]:
        """End every active label (the run stops): the events that closes."""
        now = time.time() if now is None else now
        events = []
        for label, track in self._tracks.items():
            if track.active is not None:
                a = track.active
                events.append(Event(a.id, "end", label, a.start, track.last_above_exit, a.peak, a.frames, a.snapshot))
                track.active = None
        if events:
            self.recent.extend(events)
            self.state = State(NO_STATE, 0.0, now)
        return events
