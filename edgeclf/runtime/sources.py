"""Where frames come from: files (an image, a folder, a glob), a video file, a live camera or stream.

Every source yields :class:`Frame` objects whose ``input`` is already the model's input (RGB uint8,
height x width, through :mod:`edgeclf.imageio`, the one decoder and the one resize), prepared on a
background thread so that decoding and resizing overlap inference.

* Files and videos are read in order and nothing is dropped (a bounded queue makes the reader wait).
  Undecodable files in a folder are skipped with a warning naming them.
* Live sources (camera index, RTSP/HTTP URL, ``picamera``) have a grabber thread that reads every
  frame the device delivers and keeps only the newest (no lag builds up); frames replaced before the
  loop took them are counted as dropped. A device or stream that stops delivering is reopened with
  exponential backoff while the loop waits.
"""
from __future__ import annotations

import functools
import glob as globlib
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np

from edgeclf.errors import EdgeclfError
from edgeclf.log import get_logger
from edgeclf.imageio import IMAGE_EXTENSIONS, ImageDecodeError, bgr_to_rgb, is_candidate, load_rgb, resize_rgb

URL_RE = re.compile(r"^(rtsps?|rtmp|https?|udp|tcp|srt)://", re.IGNORECASE)
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                              ".ts", ".mts", ".3gp", ".mjpeg", ".mjpg", ".h264", ".h265", ".ogv"})


log = get_logger(__name__)


class SourceError(EdgeclfError):
    """A source that does not open or yields nothing."""


def warn(message: str) -> None:
    log.warning(message)


@dataclass
class Frame:
    source: str  # the file, video, camera or URL it came from
    index: int  # position in the source: file number in a folder, frame number in a video or stream
    input: np.ndarray  # the model input: RGB uint8, height x width x 3
    image: np.ndarray | None  # the original picture as BGR (for drawing/saving); None when not asked for
    time: float  # time.perf_counter() when it was captured or read
    tensor: np.ndarray | None = None  # the backend's input batch (1, H, W, 3), made in the reader thread


class Preprocess:
    """Original picture -> model input, exactly as training and calibration did it.

    ``prepare`` (a backend's :meth:`~edgeclf.runtime.backends.Backend.prepare`) also casts or quantizes
    the input to the model's tensor in the reader thread, so the loop's thread only runs inference.
    """

    def __init__(self, height: int, width: int, resize: str = "bilinear", keep_image: bool = False,
                 prepare: Callable[[np.ndarray], np.ndarray] | None = None):
        self.height, self.width, self.resize, self.keep_image = height, width, resize, keep_image
        self.prepare = prepare

    def frame(self, source: str, index: int, model_input: np.ndarray, image: np.ndarray | None, t: float) -> Frame:
        tensor = self.prepare(model_input[None]) if self.prepare is not None else None
        return Frame(source, index, model_input, image, t, tensor)

    def from_rgb(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        image = None
        if self.keep_image:
            import cv2

            image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        return resize_rgb(rgb, self.height, self.width, self.resize), image

    def from_bgr(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        rgb = bgr_to_rgb(bgr)
        return resize_rgb(rgb, self.height, self.width, self.resize), (bgr if self.keep_image else None)


class Capture(Protocol):
    """What live sources read from: cv2.VideoCapture, or anything with the same four methods."""

    def isOpened(self) -> bool: ...
    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def release(self) -> None: ...
    def get(self, prop: int) -> float: ...


class Source:
    """Iterable of :class:`Frame`; ``close()`` stops and joins its thread. Use as a context manager."""

    live = False
    name = ""

    def __init__(self) -> None:
        self.dropped = 0  # live: frames replaced by a newer one before the loop took them
        self.skipped: list[str] = []  # files that did not decode
        self.reconnects = 0
        self.fps: float | None = None  # frames per second the source delivers, when known
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def skip(self, item: "Skip") -> None:
        """Record and report a file that did not decode."""
        self.skipped.append(item.path)
        warn(f"skipped {item.reason}")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_END = object()


class Skip:
    """A file that did not decode, in its place in the order."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason


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


class LiveSource(Source):
    """A camera or stream: a grabber thread keeps only the newest frame; lost devices are reopened.

    ``opener`` returns a fresh :class:`Capture` each call (``cv2.VideoCapture(0)``, a URL, picamera2).
    The first open must succeed (else :class:`SourceError`); later failures are retried with backoff
    (``backoff`` seconds, doubling up to ``max_backoff``), for ever unless ``reconnect_timeout`` seconds
    pass without a frame, which ends the source.
    """

    live = True

    def __init__(self, opener: Callable[[], Capture], name: str, prep: Preprocess, *,
                 reconnect_timeout: float | None = None, backoff: float = 0.5, max_backoff: float = 8.0,
                 hint: str = ""):
        super().__init__()
        self.opener, self.name, self.prep = opener, name, prep
        self.reconnect_timeout, self.backoff, self.max_backoff = reconnect_timeout, backoff, max_backoff
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._ended = False
        self._failure: BaseException | None = None
        self._cap = self._open()
        if self._cap is None:
            raise SourceError(f"{name}: cannot open (no such camera, stream unreachable, or in use by another "
                              f"program){hint}")
        self.fps = self._cap_fps(self._cap)

    @staticmethod
    def _cap_fps(cap: Capture) -> float | None:
        try:
            import cv2

            fps = float(cap.get(cv2.CAP_PROP_FPS))
        except Exception:
            return None
        return fps if 0 < fps < 1000 else None  # cameras often report 0

    def _open(self) -> Capture | None:
        try:
            cap = self.opener()
        except SourceError:
            raise
        except Exception:
            return None
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            return None
        return cap

    def _grab(self) -> None:
        cap, index = self._cap, 0
        try:
            while not self._stop.is_set():
                ok, bgr = cap.read() if cap is not None else (False, None)
                if ok and bgr is not None:
                    t = time.perf_counter()
                    model_input, image = self.prep.from_bgr(bgr)
                    with self._cond:
                        if self._latest is not None:
                            self.dropped += 1
                        self._latest = self.prep.frame(self.name, index, model_input, image, t)
                        self._cond.notify()
                    index += 1
                    continue
                if cap is not None:
                    cap.release()
                    cap = self._cap = None
                    warn(f"{self.name}: lost, reopening")
                cap = self._cap = self._reopen()
                if cap is None:
                    return
                self.reconnects += 1
                warn(f"{self.name}: reopened")
        except BaseException as exc:
            self._failure = exc
        finally:
            if cap is not None:
                cap.release()
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _reopen(self) -> Capture | None:
        delay, started = self.backoff, time.monotonic()
        while not self._stop.is_set():
            if self.reconnect_timeout is not None and time.monotonic() - started > self.reconnect_timeout:
                warn(f"{self.name}: not back after {self.reconnect_timeout:g} s, giving up")
                return None
            if self._stop.wait(delay):
                return None
            cap = self._open()
            if cap is not None:
                return cap
            delay = min(delay * 2, self.max_backoff)
        return None

    def __iter__(self) -> Iterator[Frame]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._grab, name="edgeclf-grabber", daemon=True)
            self._thread.start()
        while True:
            with self._cond:
                while self._latest is None and not self._ended:
                    self._cond.wait(timeout=0.5)
                frame, self._latest = self._latest, None
                if frame is None:  # ended and nothing left
                    if self._failure is not None:
                        raise self._failure
                    return
            yield frame

    def close(self) -> None:
        super().close()
        cap = self._cap
        if cap is not None and (self._thread is None or not self._thread.is_alive()):
            cap.release()


class PiCameraCapture:
    """A Raspberry Pi camera through picamera2, with the cv2.VideoCapture methods LiveSource uses.

    The "RGB888" format of libcamera is stored B, G, R in memory: the same order as OpenCV frames.
    """

    def __init__(self, index: int = 0, size: tuple[int, int] = (640, 480)):
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise SourceError("picamera2 is not installed (on Raspberry Pi OS: sudo apt install python3-picamera2, "
                              "and create the venv with --system-site-packages)") from exc
        self._cam = Picamera2(index)
        self._cam.configure(self._cam.create_video_configuration(main={"size": size, "format": "RGB888"}))
        self._cam.start()
        self._open = True

    def isOpened(self) -> bool:
        return self._open

    def read(self) -> tuple[bool, np.ndarray | None]:
        try:
            return True, self._cam.capture_array("main")
        except Exception:
            return False, None

    def release(self) -> None:
        if self._open:
            self._open = False
            try:
                self._cam.stop()
                self._cam.close()
            except Exception:
                pass

    def get(self, prop: int) -> float:
        return 0.0


def _video_capture(target: int | str) -> Capture:
    import cv2

    if isinstance(target, str):  # a network stream: do not hang for ever on a dead host
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 10000]
        return cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
    cap = cv2.VideoCapture(target)
    cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return cap


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
        source = LiveSource(lambda: _video_capture(index), f"camera {index}", prep, reconnect_timeout=reconnect_timeout,
                            hint="; a Raspberry Pi camera module opens with --source picamera")
        return source
    m = re.fullmatch(r"picamera(\d*)", spec, re.IGNORECASE)
    if m:
        index = int(m.group(1) or 0)
        return LiveSource(lambda: PiCameraCapture(index), f"picamera {index}", prep,
                          reconnect_timeout=reconnect_timeout)
    if URL_RE.match(spec):
        return LiveSource(lambda: _video_capture(spec), redact_url(spec), prep, reconnect_timeout=reconnect_timeout)
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


__all__ = ["Frame", "Preprocess", "Source", "FileSource", "VideoSource", "LiveSource", "PiCameraCapture",
           "SourceError", "open_source", "list_files", "redact_url"]
