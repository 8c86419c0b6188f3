"""Where frames come from: files (an image, a folder, a glob), a video file, a live camera or stream.

Every source yields :class:`Frame` objects whose ``input`` is already the model's input (RGB uint8,
height x width, through :mod:`edgeclf.imageio`, the one decoder and the one resize), prepared on a
background thread so that decoding and resizing overlap inference.

* Files and videos are read in order and nothing is dropped (a bounded queue makes the reader wait).
  Undecodable files in a folder are skipped with a warning naming them.
* Live sources (camera index, RTSP/HTTP URL, ``picamera``): :mod:`edgeclf.runtime.cameras`.
"""
from __future__ import annotations

import functools
import glob as globlib
import queue
import re
import threading
import time
from pathlib import Path
from typing import Callable, Iterator


from edgeclf.imageio import IMAGE_EXTENSIONS, ImageDecodeError, is_candidate, load_rgb
from edgeclf.runtime.cameras import LiveSource, PiCameraCapture, video_capture
from edgeclf.runtime.frames import Frame, Preprocess, Skip, Source, SourceError

URL_RE = re.compile(r"^(rtsps?|rtmp|https?|udp|tcp|srt)://", re.IGNORECASE)
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                              ".ts", ".mts", ".3gp", ".mjpeg", ".mjpg", ".h264", ".h265", ".ogv"})


_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class _OrderedSource(Source):
    """A reader thread fills a bounded queue in order; nothing is dropped."""

    def __init__(self, prefetch: int = 8):
        super().__init__()
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self.loop = False  # start again at the end, for ever (a demo, a soak test)
        self.pace: float | None = None  # at most this many frames per second, as a camera delivers them
        self._due = 0.0

    def _wait_turn(self) -> bool:
        """With a pace: sleep until this frame is due (False: stopped meanwhile)."""
        if not self.pace:
            return not self._stop.is_set()
        now = time.monotonic()
        self._due = max(self._due, now)
        delay, self._due = self._due - now, self._due + 1.0 / self.pace
        return not self._stop.wait(delay) if delay > 0 else not self._stop.is_set()

    def _put(self, item) -> bool:
        if not self._wait_turn():
            return False
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # handed to the consuming thread, which raises it
            self._put(_Failure(exc))
        finally:
            self._put(_END)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"edgeclf-{type(self).__name__}", daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[Frame]:
        if self._thread is None:
            self._start()
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            if isinstance(item, Skip):
                self.skip(item)
                continue
            yield item

    def close(self) -> None:
        self._stop.set()
        try:  # unblock a reader waiting on a full queue
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        super().close()
        try:  # the reader is gone: wake a consumer still waiting in __iter__ (an inference worker)
            self._queue.put_nowait(_END)
        except queue.Full:
            pass


class FileSource(_OrderedSource):
    """Images read in the given order; undecodable ones skipped with a warning (or an error if ``strict``)."""

    def __init__(self, paths: list[Path], prep: Preprocess, name: str = "", strict: bool = False, prefetch: int = 8):
        super().__init__(prefetch)
        self.paths, self.prep, self.strict = list(paths), prep, strict
        self.name = name or (str(self.paths[0]) if len(self.paths) == 1 else f"{len(self.paths)} images")

    def load(self, index: int) -> Frame | Skip:
        """Read, decode and prepare file ``index`` (in any thread): its Frame, or a Skip if it won't decode."""
        path = self.paths[index]
        t = time.perf_counter()
        try:
            rgb = load_rgb(path)
        except ImageDecodeError as exc:
            if self.strict:
                raise SourceError(str(exc)) from exc
            return Skip(str(path), str(exc))
        model_input, image = self.prep.from_rgb(rgb)
        return self.prep.frame(str(path), index, model_input, image, t)

    def tasks(self) -> Iterator[Callable[[], Frame | Skip]]:
        """One call per file, in order, for workers that decode and classify in the same thread."""
        while True:
            for index in range(len(self.paths)):
                if self._stop.is_set():
                    return
                yield functools.partial(self.load, index)
            if not self.loop:
                return

    def _produce(self) -> None:
        while True:
            for index in range(len(self.paths)):
                if self._stop.is_set():
                    return
                if not self._put(self.load(index)):
                    return
            if not self.loop or len(self.skipped) >= len(self.paths):
                return


class VideoSource(_OrderedSource):
    """A video file, every frame in order."""

    def __init__(self, path: Path, prep: Preprocess, prefetch: int = 8):
        super().__init__(prefetch)
        import cv2

        self.path, self.prep, self.name = path, prep, str(path)
        self._cap = cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"{path}: cannot open as a video (unsupported or corrupt file)")
        self.fps = self._cap.get(cv2.CAP_PROP_FPS) or None

    def _produce(self) -> None:
        import cv2

        index = 0
        try:
            while not self._stop.is_set():
                ok, bgr = self._cap.read()
                if (not ok or bgr is None) and self.loop and index > 0:  # from the start again
                    self._cap.release()
                    self._cap = cv2.VideoCapture(str(self.path))
                    ok, bgr = self._cap.read()
                if not ok or bgr is None:
                    break
                t = time.perf_counter()
                model_input, image = self.prep.from_bgr(bgr)
                if not self._put(self.prep.frame(self.name, index, model_input, image, t)):
                    return
                index += 1
        finally:
            self._cap.release()
        if index == 0:
            raise SourceError(f"{self.path}: opened, but no frame could be read (corrupt or empty video)")


def list_files(spec: str) -> list[Path] | None:
    """Images of a folder (recursive, sorted) or a glob (sorted); None if ``spec`` is neither."""
    path = Path(spec)
    if path.is_dir():
        return sorted((p for p in path.rglob("*") if p.is_file() and is_candidate(p)),
                      key=lambda p: p.relative_to(path).as_posix())
    if any(ch in spec for ch in "*?[") and not path.exists():
        return sorted(Path(p) for p in globlib.glob(spec, recursive=True) if Path(p).is_file() and is_candidate(Path(p)))
    return None


def open_source(spec: str | int, prep: Preprocess, *, reconnect_timeout: float | None = None,
                loop: bool = False, pace: float | None = None) -> Source:
    """``0`` (camera index), ``picamera[N]``, an RTSP/HTTP URL, a video, an image, a folder or a glob.

    Files and videos can be played as a camera would deliver them: ``pace`` frames per second at most,
    and with ``loop`` from the start again when they end.
    """
    source = _open(str(spec).strip(), prep, reconnect_timeout)
    if isinstance(source, _OrderedSource):
        source.loop, source.pace = loop, pace
    elif loop or pace:
        raise SourceError(f"{source.name}: --loop and --pace are for files and videos, not live sources")
    return source


def _open(spec: str, prep: Preprocess, reconnect_timeout: float | None) -> Source:
    if re.fullmatch(r"\d+", spec):
        index = int(spec)
        source = LiveSource(lambda: video_capture(index), f"camera {index}", prep, reconnect_timeout=reconnect_timeout,
                            hint="; a Raspberry Pi camera module opens with --source picamera")
        return source
    m = re.fullmatch(r"picamera(\d*)", spec, re.IGNORECASE)
    if m:
        index = int(m.group(1) or 0)
        return LiveSource(lambda: PiCameraCapture(index), f"picamera {index}", prep,
                          reconnect_timeout=reconnect_timeout)
    if URL_RE.match(spec):
        return LiveSource(lambda: video_capture(spec), redact_url(spec), prep, reconnect_timeout=reconnect_timeout)
    files = list_files(spec)
    if files is not None:
        if not files:
            kind = "folder" if Path(spec).is_dir() else "pattern"
            raise SourceError(f"{spec}: this {kind} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS)[:6])}, ...)")
        return FileSource(files, prep, name=spec)
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"{spec}: no such file or folder, and not a camera index or URL")
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return FileSource([path], prep, strict=True)
    if path.suffix.lower() not in VIDEO_EXTENSIONS and path.stat().st_size == 0:
        raise SourceError(f"{spec}: empty file")
    return VideoSource(path, prep)


def redact_url(url: str) -> str:
    """A URL without its user info and query string (where tokens hide): for messages, output files, the
    page, the API, metric labels and MQTT. ``rtsp://user:pw@cam:554/live?token=x`` -> ``rtsp://cam:554/live``."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:  # IPv6
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
    except ValueError:  # unparsable (a bad port): keep only the scheme and what follows the last '@'
        return re.sub(r"^([a-z0-9+.-]+://)[^/]*@", r"\1", url.split("?")[0], flags=re.IGNORECASE)
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


__all__ = ["FileSource", "VideoSource", "list_files", "open_source", "redact_url"]
