"""``edgeclf run ... --collect DIR``: keep the frames worth labelling, written by a thread of its own.

A frame is kept for one or more reasons (all of them are recorded, comma-separated, in ``reason``):

* ``low_margin``: the two best scores are closer than ``--collect-margin`` (top1 - top2 < margin);
* ``low_score``: the top score is below ``--collect-below``;
* ``event_start``: the first frame of an event (``--collect-events``, on by default);
* ``random``: a random 1 in ``--collect-every`` frames, whatever the model said: confident mistakes too.

Caps (``--collect-per-minute``, ``--collect-per-hour``, ``--collect-max-mb``) keep a camera left for a month from
filling the SD card. The disk cap stops collecting (said once) and never deletes a frame: a person may be
labelling it.

Layout of DIR (copy it anywhere with ``rsync -a pi:DIR/ DIR/``; ``edgeclf label DIR`` reads it)::

    DIR/frames/YYYYMMDD/NNNNNN-HHMMSS-LABEL.jpg   the frames (each written atomically)
    DIR/collected.jsonl                           one record per kept frame, appended after its picture
    DIR/collect.json                              the model's classes and SHA-256 (rewritten at each start)

A record: ``{"file", "time", "source", "frame", "label", "score", "margin", "top_k": [{"label", "score"}...],
"model_sha256", "reason"}``; ``file`` is relative to DIR, ``source`` never holds a password. A killed process loses
at most the last line (:func:`read_records` skips a torn line). A restart into the same DIR appends; file numbers
continue from what is on disk, so no file is ever overwritten.

The loop never waits: the listener decides on the loop's thread (a few comparisons) and hands the picture to the
writer thread through a bounded :class:`~edgeclf.runtime.hub.Mailbox`; when the writer falls behind, frames are
dropped and counted.
"""
from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgeclf import fsutil
from edgeclf.errors import ServiceError
from edgeclf.log import get_logger
from edgeclf.runtime.events import Event, FrameResult
from edgeclf.runtime.hub import Listener, Mailbox

log = get_logger(__name__)

RECORDS = "collected.jsonl"
META = "collect.json"
FRAMES = "frames"
REASONS = ("low_margin", "low_score", "event_start", "random")
_NUMBERED = re.compile(r"^(\d+)-")


@dataclass(frozen=True)
class CollectOptions:
    folder: Path
    margin: float = 0.2  # keep when top1 - top2 < margin (0: off)
    below: float = 0.6  # keep when the top score < below (0: off)
    events: bool = True  # keep the first frame of each event
    every: int = 0  # keep a random 1 in N frames (0: off)
    per_minute: int = 10  # at most this many frames in any 60 s (0: no cap)
    per_hour: int = 200  # at most this many in any hour (0: no cap)
    max_mb: float = 1000.0  # stop collecting when DIR's frames would pass this
    quality: int = 90  # JPEG quality
    seed: int | None = None  # of the 1-in-N draw (None: from the system)

    def check(self) -> None:
        if not 0.0 <= self.margin <= 1.0 or not 0.0 <= self.below <= 1.0:
            raise ServiceError("--collect-margin and --collect-below must be in [0, 1]")
        if self.every < 0 or self.per_minute < 0 or self.per_hour < 0:
            raise ServiceError("--collect-every, --collect-per-minute and --collect-per-hour must not be negative")
        if self.max_mb <= 0:
            raise ServiceError("--collect-max-mb must be above 0")
        if not (self.margin or self.below or self.events or self.every):
            raise ServiceError("--collect: every strategy is off (--collect-margin 0, --collect-below 0, "
                               "--no-collect-events, --collect-every 0): nothing would be kept")


def margin_of(probs: np.ndarray) -> tuple[float, float]:
    """(top score, top1 - top2) of a probability vector (margin 1.0 with one class)."""
    p = np.asarray(probs, np.float64).ravel()
    if p.size == 0:
        return 0.0, 0.0
    if p.size == 1:
        return float(p[0]), 1.0
    two = np.partition(p, p.size - 2)[-2:]
    return float(two[1]), float(two[1] - two[0])


def reasons_for(probs: np.ndarray, opts: CollectOptions, rng: random.Random) -> list[str]:
    """The frame-level reasons to keep a frame (``event_start`` is added by the listener)."""
    top, margin = margin_of(probs)
    out = []
    if opts.margin > 0 and margin < opts.margin:
        out.append("low_margin")
    if opts.below > 0 and top < opts.below:
        out.append("low_score")
    if opts.every > 0 and rng.randrange(opts.every) == 0:  # drawn for every frame: 1 in N whatever else holds
        out.append("random")
    return out


class RateCaps:
    """At most ``per_minute`` in any 60 s and ``per_hour`` in any 3600 s (0: no cap), by wall-clock time."""

    def __init__(self, per_minute: int, per_hour: int):
        self.limits = [(60.0, per_minute, "per_minute"), (3600.0, per_hour, "per_hour")]
        self._times: deque[float] = deque()

    def preload(self, times: list[float], now: float) -> None:
        """Frames kept by an earlier run into the same DIR count against the windows still open."""
        for t in sorted(times):
            if now - 3600.0 < t <= now:
                self._times.append(t)

    def blocked(self, now: float) -> str | None:
        """The name of the cap that keeps a frame at ``now`` out, or None."""
        while self._times and (self._times[0] <= now - 3600.0 or self._times[0] > now + 60.0):
            self._times.popleft()  # old, or from a clock that jumped back
        for window, limit, name in self.limits:
            if limit > 0 and sum(1 for t in self._times if t > now - window) >= limit:
                return name
        return None

    def take(self, now: float) -> None:
        self._times.append(now)


def read_records(folder: str | Path) -> Iterator[dict]:
    """The records of ``folder/collected.jsonl``, in order; a torn or unreadable line is skipped."""
    path = Path(folder) / RECORDS
    try:
        fh = open(path, encoding="utf-8", errors="replace")
    except OSError:
        return
    with fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("file"), str):
                yield rec


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label)[:40] or "x"


def _redact(source: str) -> str:
    if "://" in source or "@" in source:
        from edgeclf.runtime.sources import redact_url

        return redact_url(source)
    return source


@dataclass
class _Pending:
    result: FrameResult
    reasons: list[str]


class Collector(Listener):
    """The hub listener behind ``--collect``; see the module docstring."""

    wants_images = True

    def __init__(self, opts: CollectOptions, *, classes: list[str] | None = None, model_sha256: str = "",
                 model_name: str = "", echo: Callable[[str], None] = print, queue_size: int = 16):
        opts.check()
        self.opts, self.echo = opts, echo
        self.folder = Path(opts.folder)
        self.classes, self.model_sha256, self.model_name = list(classes or []), model_sha256, model_name
        self.max_bytes = int(opts.max_mb * 1024 * 1024)
        self.rng = random.Random(opts.seed)
        self.caps = RateCaps(opts.per_minute, opts.per_hour)
        self.kept = 0  # written: picture and record
        self.reasons: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()  # by cap: per_minute, per_hour, disk
        self.failed = 0  # could not be written (a full or read-only card)
        self.full = False  # the disk cap was reached: collecting has stopped
        self._pending: _Pending | None = None
        self._box: Mailbox[tuple] = Mailbox(queue_size)
        self._thread: threading.Thread | None = None
        self._warned = False
        self._closed = False
        self._queued = self._taken = 0  # handed to the writer / taken by it
        self.lost = 0
        self._prepare()

    # --- on disk ---

    def _prepare(self) -> None:
        """Create DIR, read what an earlier run left: the next file number, the bytes used, recent frame times."""
        try:
            (self.folder / FRAMES).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ServiceError(f"--collect {self.folder}: cannot create ({exc.strerror or exc})") from exc
        if not os.access(self.folder, os.W_OK):
            raise ServiceError(f"--collect {self.folder}: not writable")
        biggest, used = 0, 0
        for p in (self.folder / FRAMES).rglob("*.jpg"):
            m = _NUMBERED.match(p.name)
            if m:
                biggest = max(biggest, int(m.group(1)))
            try:
                used += p.stat().st_size
            except OSError:
                pass
        times = []
        for rec in read_records(self.folder):
            m = _NUMBERED.match(Path(rec["file"]).name)
            if m:
                biggest = max(biggest, int(m.group(1)))
            if isinstance(rec.get("time"), (int, float)):
                times.append(float(rec["time"]))
        records = self.folder / RECORDS
        try:
            used += records.stat().st_size
            with open(records, "rb+") as fh:  # a torn last line (a killed run) stays a line of its own
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
        except (OSError, ValueError):
            pass
        self.next_number, self.used = biggest + 1, used
        self.resumed = len(times)
        self.caps.preload(times, time.time())
        if self.used >= self.max_bytes:
            self.full = True
        meta = fsutil.read_json_dict(self.folder / META)
        classes = self.classes or meta.get("classes") or []
        try:
            fsutil.write_json(self.folder / META, {"classes": list(classes), "model_sha256": self.model_sha256,
                                                   "model": self.model_name})
        except OSError as exc:
            raise ServiceError(f"--collect {self.folder}: cannot write {META} ({exc.strerror or exc})") from exc

    # --- the listener side (the classify loop's thread: return at once) ---

    def start(self, hub) -> None:
        if not self.classes and hub is not None:
            self.classes = list(hub.classes)
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="edgeclf-collect", daemon=True)
            self._thread.start()
        what = [f"margin < {self.opts.margin:g}" if self.opts.margin else "",
                f"score < {self.opts.below:g}" if self.opts.below else "",
                "event starts" if self.opts.events else "",
                f"1 in {self.opts.every}" if self.opts.every else ""]
        caps = [f"{self.opts.per_minute}/min" if self.opts.per_minute else "",
                f"{self.opts.per_hour}/h" if self.opts.per_hour else "", f"{self.opts.max_mb:g} MB"]
        self.echo(f"collect: {self.folder} ({', '.join(w for w in what if w)}; caps {', '.join(c for c in caps if c)}"
                  f"{f'; {self.resumed} frames already there' if self.resumed else ''})")
        if self.full:
            self._say_full()

    def result(self, result: FrameResult) -> None:
        self._flush_pending()
        if result.image is None:
            return
        reasons = reasons_for(result.pred.probs, self.opts, self.rng)
        # held until the hub has told this frame's events (they come right after its result)
        self._pending = _Pending(result, reasons)

    def event(self, event: Event) -> None:
        if self.opts.events and event.type == "start" and self._pending is not None:
            if "event_start" not in self._pending.reasons:
                self._pending.reasons.append("event_start")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._flush_pending()
        deadline = time.monotonic() + 5.0  # briefly: what is queued gets written
        while self._taken < self._queued and self._thread is not None and self._thread.is_alive() \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        self._box.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.lost = self._queued - self._taken  # still queued when the run ended: not written
        self.echo(self.summary())

    def _flush_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None or not pending.reasons:
            return
        if self.full:  # the disk cap was reached: counted, not kept
            self.skipped["disk"] += 1
            return
        res = pending.result
        order = [r for r in REASONS if r in pending.reasons]
        blocked = self.caps.blocked(res.time)
        if blocked is not None:
            self.skipped[blocked] += 1
            return
        number = self.next_number
        if self._box.put((number, res, ",".join(order))):
            self._queued += 1
            self.next_number += 1
            self.caps.take(res.time)

    # --- the writer thread ---

    @property
    def dropped(self) -> int:
        """Frames to keep that were dropped because the writer fell behind (or was still behind at the end)."""
        return self._box.dropped + self.lost

    def _work(self) -> None:
        import cv2

        while True:
            item = self._box.get()
            if item is None:
                return
            number, res, reasons = item
            self._taken += 1
            try:
                ok, buf = cv2.imencode(".jpg", res.image, [cv2.IMWRITE_JPEG_QUALITY, self.opts.quality])
                if not ok:
                    raise OSError("JPEG encoding failed")
                data = buf.tobytes()
                pred = res.pred
                _, margin = margin_of(pred.probs)
                day = time.strftime("%Y%m%d", time.localtime(res.time))
                name = f"{number:06d}-{time.strftime('%H%M%S', time.localtime(res.time))}-{_safe(pred.label)}.jpg"
                rel = f"{FRAMES}/{day}/{name}"
                record = {"file": rel, "time": round(res.time, 3), "source": _redact(res.source),
                          "frame": res.frame, "label": pred.label, "score": round(float(pred.score), 6),
                          "margin": round(margin, 6),
                          "top_k": [{"label": lb, "score": round(float(s), 6)} for lb, s in pred.top_k],
                          "model_sha256": self.model_sha256, "reason": reasons}
                line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
                if self.used + len(data) + len(line) > self.max_bytes:
                    self.skipped["disk"] += 1
                    if not self.full:
                        self.full = True
                        self._say_full()
                    continue
                path = self.folder / rel
                if path.exists():  # never overwrite (another process into the same DIR): skip it
                    raise OSError(f"{rel} exists already")
                fsutil.write_bytes(path, data)  # the picture first: every record names an existing file
                with open(self.folder / RECORDS, "ab") as fh:
                    fh.write(line)
                    fh.flush()
                    os.fsync(fh.fileno())
                self.used += len(data) + len(line)
                self.kept += 1
                for r in reasons.split(","):
                    self.reasons[r] += 1
            except OSError as exc:
                self.failed += 1
                if not self._warned:
                    self._warned = True
                    log.warning(f"--collect: cannot write a frame ({exc}); the run goes on")

    def _say_full(self) -> None:
        self.echo(f"collect: {self.folder} holds {self.used / 1024 / 1024:.1f} MB, the --collect-max-mb cap "
                  f"({self.opts.max_mb:g}): collecting stops (no frame is deleted; label and move them, or raise "
                  "the cap)")

    def counters(self) -> dict:
        return {"kept": self.kept, "reasons": dict(self.reasons), "skipped": dict(self.skipped),
                "dropped": self.dropped, "failed": self.failed, "full": self.full}

    def summary(self) -> str:
        why = ", ".join(f"{r} {self.reasons[r]}" for r in REASONS if self.reasons[r])
        caps = sum(self.skipped.values())
        by = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in sorted(self.skipped.items()) if v)
        return (f"collect: kept {self.kept} frames in {self.folder}{f' ({why})' if why else ''}; "
                f"skipped by caps {caps}{f' ({by})' if by else ''}; dropped {self.dropped} (the writer fell behind)"
                f"{f'; {self.failed} not written' if self.failed else ''}")
