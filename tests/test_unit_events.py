"""The event layer's rules, frame by frame (fast: no model; the end-to-end checks on real photos are in
tests/test_mqtt.py and tests/test_serve.py)."""
from __future__ import annotations

import numpy as np
import pytest

from edgeclf.runtime.events import NO_STATE, EventOptions, EventTracker, FrameResult
from edgeclf.runtime.hub import Hub, Listener, Mailbox
from edgeclf.runtime.output import make_prediction

CLASSES = ["ants", "bees", "wasps"]


def frames(seq: list[str], score: float = 0.95, t0: float = 1000.0, dt: float = 0.1):
    """FrameResults whose top class is each entry of ``seq`` with ``score`` (the rest shared by the others)."""
    out = []
    for i, label in enumerate(seq):
        probs = np.full(len(CLASSES), (1 - score) / (len(CLASSES) - 1), np.float32)
        probs[CLASSES.index(label)] = score
        out.append(FrameResult(i + 1, "test", i, t0 + i * dt, make_prediction(probs, CLASSES), 1.0))
    return out


def run(tracker: EventTracker, results) -> list:
    events = []
    for r in results:
        events += [(r.frame, e.type, e.label) for e in tracker.update(r)]
    return events


def test_one_start_and_one_end_per_run_and_no_event_for_a_planted_frame():
    seq = ["ants"] * 12 + ["bees"] + ["ants"] * 12 + ["bees"] * 15 + ["ants"] + ["bees"] * 10
    tracker = EventTracker(CLASSES, EventOptions(smooth=5, enter=0.7, exit=0.5, min_frames=3, cooldown=0.0))
    events = run(tracker, frames(seq))
    assert [(t, lb) for _, t, lb in events] == [("start", "ants"), ("end", "ants"), ("start", "bees")]
    assert tracker.state.label == "bees"
    ends = tracker.finish(now=2000.0)
    assert [(e.type, e.label) for e in ends] == [("end", "bees")] and tracker.state.label == NO_STATE


def test_min_frames_and_start_time_of_the_first_frame():
    tracker = EventTracker(CLASSES, EventOptions(smooth=1, enter=0.7, exit=0.5, min_frames=4))
    results = frames(["ants", "ants", "ants", "bees", "ants", "ants", "ants", "ants"])
    events = []
    for r in results:
        events += tracker.update(r)
    starts = [e for e in events if e.type == "start" and e.label == "ants"]
    assert len(starts) == 1
    assert starts[0].start == results[4].time  # the first of the four frames in a row, not the one that fired
    assert starts[0].frames == 4


def test_hysteresis_keeps_a_label_between_exit_and_enter():
    tracker = EventTracker(["a", "b"], EventOptions(smooth=1, enter=0.8, exit=0.4, min_frames=1))

    def at(score, i):
        return FrameResult(i, "t", i, float(i), make_prediction(np.array([score, 1 - score], np.float32), ["a", "b"]), 1.0)

    kinds = [(e.type, e.label) for i, s in enumerate([0.9, 0.6, 0.5, 0.45, 0.6, 0.3, 0.7, 0.85]) for e in
             tracker.update(at(s, i))]
    # a enters at 0.9, stays through 0.6/0.5/0.45/0.6 (above exit), leaves at 0.3, and 0.7 is not enough to
    # enter again; 0.85 is. b (0.7 at the 0.3 frame) never reaches 0.8.
    assert kinds == [("start", "a"), ("end", "a"), ("start", "a")]


def test_cooldown_holds_a_label_back():
    opts = EventOptions(smooth=1, enter=0.7, exit=0.5, min_frames=1, cooldown=1.0)
    seq = ["ants"] * 3 + ["bees"] * 2 + ["ants"] * 3 + ["bees"] * 10 + ["ants"] * 3
    events = run(EventTracker(CLASSES, opts), frames(seq, dt=0.1))
    ant_starts = [f for f, t, lb in events if t == "start" and lb == "ants"]
    # ants ends at frame 3 (last seen at frame 2, t=0.2 s); frames 5-7 are within 1 s of that; frame 18 is not
    assert ant_starts == [0, 18]


def test_labels_tracked_and_settings_checked():
    tracker = EventTracker(CLASSES, EventOptions(labels=("bees",), smooth=1, min_frames=1))
    events = run(tracker, frames(["ants"] * 5 + ["bees"] * 5))
    assert [(t, lb) for _, t, lb in events] == [("start", "bees")]
    with pytest.raises(ValueError, match="wasp"):
        EventTracker(CLASSES, EventOptions(labels=("wasp",)))
    with pytest.raises(ValueError, match="must not be above"):
        EventTracker(CLASSES, EventOptions(enter=0.5, exit=0.6))


def test_event_json_fields():
    tracker = EventTracker(CLASSES, EventOptions(smooth=1, min_frames=2))
    events = []
    for r in frames(["wasps"] * 4 + ["ants"] * 3):
        events += tracker.update(r)
    start, end = events[0].to_json(), events[1].to_json()
    assert start["type"] == "start" and start["end"] is None and start["duration"] is None
    assert end["type"] == "end" and end["id"] == start["id"] and end["label"] == "wasps"
    assert end["duration"] == pytest.approx(0.3) and end["frames"] == 4 and end["peak"] == pytest.approx(0.95)


class _Recorder(Listener):
    def __init__(self):
        self.calls = []

    def result(self, r):
        self.calls.append(("result", r.seq))

    def event(self, e):
        self.calls.append((e.type, e.label))

    def state(self, s):
        self.calls.append(("state", s.label))


class _Broken(Listener):
    def result(self, r):
        raise RuntimeError("a broken listener")


def test_hub_fans_out_in_order_and_a_broken_listener_does_not_stop_it():
    rec = _Recorder()
    hub = Hub(CLASSES, EventOptions(smooth=1, min_frames=1), [_Broken(), rec])
    hub.start("test")
    for r in frames(["ants", "ants", "bees"]):
        hub.publish(r)
    hub.close()
    assert rec.calls == [("result", 1), ("start", "ants"), ("state", "ants"), ("result", 2),
                         ("result", 3), ("end", "ants"), ("start", "bees"), ("state", "bees"),
                         ("end", "bees"), ("state", NO_STATE)]
    assert hub.ended and not hub.health()[0]


def test_mailbox_drops_instead_of_blocking():
    box: Mailbox[int] = Mailbox(2)
    assert box.put(1) and box.put(2) and not box.put(3)
    assert box.dropped == 1
    box.close()  # full: the oldest makes room for the wake-up
    assert [box.get(0.1), box.get(0.1)] == [2, None]
