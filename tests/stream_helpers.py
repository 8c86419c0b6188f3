"""A live MJPEG-over-HTTP camera for the tests: an IP camera that a test can pause.

    frames = jpeg_frames(HYMENOPTERA / "val", count=12)     # real photos, JPEG-encoded
    with MjpegServer(frames, fps=10) as cam:
        ...  # edgeclf run EXPORT --source cam.url     (http://127.0.0.1:PORT/stream.mjpg)
        cam.pause()     # every open connection stays open but gets nothing: a camera that hangs
        cam.resume()    # the frames flow again, on the same connections
    # leaving the block closes every connection and the listening socket

API (kept stable: the device service's tests use it too):

* ``MjpegServer(jpeg_frames: list[bytes], fps: float = 10.0)``: serves, on 127.0.0.1 and a free port,
  ``GET /stream.mjpg`` as ``multipart/x-mixed-replace`` (the frames in turn, for ever, ``fps`` per second, each
  client from the first frame) and ``GET /frame.jpg`` (one frame, the next in turn); anything else is 404.
  A context manager (``start()`` / ``close()`` otherwise).
* ``.url``: ``http://127.0.0.1:PORT/stream.mjpg``; ``.port``.
* ``.pause()`` / ``.resume()`` / ``.paused``: while paused, no byte is sent on any connection (nor to new
  clients, whose request is answered only on resume), and no connection is closed.
* ``.frames_sent`` (frames written, all clients together) and ``.connections`` (stream requests so far:
  more than one means the client reconnected).

OpenCV opens the URL with its FFmpeg backend (``cv2.VideoCapture(url, cv2.CAP_FFMPEG)``), as ``edgeclf run
--source URL`` does.
"""
from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BOUNDARY = "edgeclfframe"


def jpeg_frames(folder: str | Path, count: int = 12, size: tuple[int, int] = (160, 120),
                quality: int = 85) -> list[bytes]:
    """``count`` photos of ``folder`` (recursive, sorted, taken evenly across it), resized to ``size``
    (width, height) and JPEG-encoded: frames a camera could send."""
    import cv2

    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise FileNotFoundError(f"no photos in {folder}")
    step = max(len(files) // count, 1)
    out: list[bytes] = []
    for p in files[::step]:
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            continue
        ok, buf = cv2.imencode(".jpg", cv2.resize(bgr, size, interpolation=cv2.INTER_AREA),
                               [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            out.append(buf.tobytes())
        if len(out) == count:
            break
    return out


class MjpegServer:
    """See the module docstring."""

    def __init__(self, jpeg_frames: list[bytes], fps: float = 10.0):
        if not jpeg_frames:
            raise ValueError("MjpegServer needs at least one JPEG frame")
        if fps <= 0:
            raise ValueError("fps must be above 0")
        self.frames = list(jpeg_frames)
        self.fps = float(fps)
        self.frames_sent = 0
        self.connections = 0
        self._running = threading.Event()  # set: frames flow; clear: paused
        self._running.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._next_still = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- life ---------------------------------------------------------------------------------------------
    def start(self) -> "MjpegServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection, closed by the server

            def log_message(self, fmt, *args):  # quiet
                pass

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                if path == "/stream.mjpg":
                    server._stream(self)
                elif path == "/frame.jpg":
                    server._still(self)
                else:
                    self.send_error(404)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="mjpeg-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closed.set()
        self._running.set()  # wake paused handlers: they see _closed and return
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "MjpegServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- control ------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None, "start the server first"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    # --- serving ------------------------------------------------------------------------------------------
    def _wait_running(self) -> bool:
        """Block while paused; False once the server closes."""
        while not self._running.wait(0.1):
            if self._closed.is_set():
                return False
        return not self._closed.is_set()

    def _stream(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.connections += 1
        if not self._wait_running():
            return
        try:
            h.send_response(200)
            h.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            h.send_header("Cache-Control", "no-cache, no-store")
            h.send_header("Connection", "close")
            h.end_headers()
            period, due, i = 1.0 / self.fps, time.monotonic(), 0
            while self._wait_running():
                jpeg = self.frames[i % len(self.frames)]
                h.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                              .encode("ascii") + jpeg + b"\r\n")
                h.wfile.flush()
                with self._lock:
                    self.frames_sent += 1
                i += 1
                due = max(due + period, time.monotonic())  # after a pause: no burst of late frames
                delay = due - time.monotonic()
                if delay > 0 and self._closed.wait(delay):
                    return
        except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError):
            return  # the client went away

    def _still(self, h: BaseHTTPRequestHandler) -> None:
        if not self._wait_running():
            return
        with self._lock:
            jpeg = self.frames[self._next_still % len(self.frames)]
            self._next_still += 1
        try:
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(len(jpeg)))
            h.end_headers()
            h.wfile.write(jpeg)
        except OSError:
            return


__all__ = ["MjpegServer", "jpeg_frames", "BOUNDARY"]
