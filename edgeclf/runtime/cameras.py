"""Live sources: a camera (OpenCV's V4L2 or a Pi camera module through picamera2) or a network stream.

A grabber thread reads every frame the device delivers and keeps only the newest (no lag builds up); frames
replaced before the loop took them are counted as dropped. A device or stream that stops delivering is
reopened with exponential backoff while the loop waits.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterator, Protocol

import numpy as np

from edgeclf.runtime.frames import Frame, Preprocess, Source, SourceError, warn


class Capture(Protocol):
    """What live sources read from: cv2.VideoCapture, or anything with the same four methods."""

    def isOpened(self) -> bool: ...
    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def release(self) -> None: ...
    def get(self, prop: int) -> float: ...


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


def video_capture(target: int | str) -> Capture:
    import cv2

    if isinstance(target, str):  # a network stream: do not hang for ever on a dead host
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 10000]
        return cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
    cap = cv2.VideoCapture(target)
    cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return cap
