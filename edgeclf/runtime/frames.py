"""What every source makes: :class:`Frame` (the model's input, prepared on the reader's thread), the
:class:`Source` interface, and :class:`Preprocess` (original picture -> model input, as training did it).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from edgeclf.errors import EdgeclfError
from edgeclf.imageio import bgr_to_rgb, resize_rgb
from edgeclf.log import get_logger

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


class Skip:
    """A file that did not decode, in its place in the order."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = path, reason
