"""The device's HTTP side: the live page and the API, served by Uvicorn on a thread of its own.

Starlette + Uvicorn: pure Python (Uvicorn without its optional C speed-ups), a few MB of memory, ASGI
streaming for MJPEG and server-sent events, installed from PyPI on a Raspberry Pi like anywhere else.

    GET  /              the live page (self-contained: nothing fetched from elsewhere)
    GET  /stream.mjpg   annotated frames, at most --stream-fps a second
    GET  /api/latest    the latest prediction: label, score, top_k, frame, time (+ state)
    GET  /api/status    model, source, FPS, state, recent events, counters
    GET  /api/events    server-sent events: `result` per frame, `event` (start/end), `state`
    POST /api/predict   an image's bytes in, the same JSON as /api/latest out (its own interpreter)
    GET  /metrics       Prometheus text format
    GET  /healthz       200 while frames flow, 503 with the reason when the source has stalled

With a token, every endpoint but /healthz asks for ``Authorization: Bearer TOKEN`` or the cookie the page
sets after being opened once as ``/?token=TOKEN``. No endpoint changes the run's settings.
"""
from __future__ import annotations

import asyncio
import hmac
import itertools
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Callable

from edgeclf.errors import first_line
from edgeclf.imageio import ImageDecodeError, decode_rgb
from edgeclf.log import get_logger
from edgeclf.runtime.backends import Backend
from edgeclf.runtime.events import Event, FrameResult, State
from edgeclf.runtime.hub import Hub, Listener
from edgeclf.runtime.serve.live import EventStream, LiveView
from edgeclf.runtime.serve.metrics import CONTENT_TYPE, RunMetrics

log = get_logger(__name__)
COOKIE = "edgeclf_token"
MAX_PENDING_PREDICTS = 8  # uploads waiting for the predict interpreter; more get 503
BOUNDARY = "edgeclfframe"
SEND_BUFFER = 128 * 1024  # per connection (the kernel doubles it)
ABORT_AFTER = 0.3  # seconds a connection still open at shutdown gets before it is cut
DISCARD_LIMIT = 64 * 1024 * 1024  # an upload over --max-upload-mb is read and dropped up to this, then cut off


class DeviceServer(Listener):
    """A hub listener that serves the page and the API while the run lasts."""

    wants_images = True

    def __init__(self, backend: Backend, hub: Hub, model: dict, *, host: str = "127.0.0.1", port: int = 8080,
                 token: str | None = None, stream_fps: float = 5.0, max_upload: int = 10 * 1024 * 1024,
                 top_k: int = 3, threshold: float = 0.0, echo: Callable[[str], None] = print):
        self.backend, self.hub, self.model = backend, hub, model
        self.top_k, self.threshold = top_k, threshold  # as the run's: an upload is answered as a frame is
        self.host, self.port, self.token = host, port, token
        self.max_upload, self.echo = max_upload, echo
        self.view = LiveView(hub, stream_fps)
        self.stream = EventStream()
        self.metrics = RunMetrics(hub, model, self._counters)
        self.predict_codes: dict[int, int] = {}
        self.viewer_ids = itertools.count()
        self.closing = False
        self._predictor = None  # a Classifier on its own one-thread interpreter, made on the first upload
        self._predict_lock = threading.Lock()
        self._pending = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgeclf-predict")
        self._server = None
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # --- the listener side (the classify loop's thread: return at once) ---

    def result(self, result: FrameResult) -> None:
        self.metrics.inference.observe(result.latency_ms / 1000.0)
        self.stream.result(result)

    def event(self, event: Event) -> None:
        self.metrics.run.count(event)
        self.stream.event(event)

    def state(self, state: State) -> None:
        self.stream.state(state)

    def start(self, hub: Hub) -> None:
        import uvicorn

        from edgeclf.errors import ServiceError

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted sockets inherit this: a viewer that stops reading holds a few pictures in the kernel, not
        # megabytes (autotuning grows a loopback or LAN buffer to 4 MB), and then skips pictures
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise ServiceError(f"--serve {self.host}:{self.port}: cannot listen ({exc.strerror or exc})") from exc
        sock.listen(64)
        self.port = sock.getsockname()[1]
        shown = f"[{self.host}]" if family == socket.AF_INET6 else self.host
        self.url = f"http://{shown}:{self.port}/"
        config = uvicorn.Config(build_app(self), log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2, server_header=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, args=(sock,), daemon=True, name="edgeclf-server")
        self.view.start()
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._server.started:
            raise ServiceError(f"--serve {self.host}:{self.port}: the server did not start")
        auth = " (token required)" if self.token else ""
        self.echo(f"serving: {self.url}{auth} -- page, /stream.mjpg, /api/latest, /api/events, /api/predict, "
                  "/metrics, /healthz")

    def _serve(self, sock: socket.socket) -> None:
        async def serve() -> None:
            self._aloop = asyncio.get_running_loop()
            await self._server.serve(sockets=[sock])

        asyncio.run(serve())

    def _abort_connections(self) -> None:
        """On the server's loop: cut what is still open after the grace (a viewer that never reads would
        otherwise hold the shutdown until Uvicorn's timeout, and end in a cancelled task's traceback)."""
        for connection in list(self._server.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()

    def close(self) -> None:
        self.closing = True
        self.stream.close()
        self.view.close()
        if self._server is not None:
            self._server.should_exit = True
            if self._aloop is not None:
                try:
                    self._aloop.call_soon_threadsafe(self._aloop.call_later, ABORT_AFTER, self._abort_connections)
                except RuntimeError:  # its loop has already ended
                    pass
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._predictor is not None:
            self._predictor.backend.close()

    # --- what the routes use ---

    def _counters(self) -> dict:
        return {"viewer_dropped": self.view.dropped_for_viewers, "sse_dropped": self.stream.dropped,
                "viewers": self.view.viewers + self.stream.clients, "predict_codes": dict(self.predict_codes)}

    def authorized(self, headers, cookies) -> bool:
        if not self.token:
            return True
        given = ""
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        elif cookies.get(COOKIE):
            given = cookies[COOKIE]
        return hmac.compare_digest(given.encode(), self.token.encode())

    def count(self, code: int) -> None:
        self.predict_codes[code] = self.predict_codes.get(code, 0) + 1

    def predict(self, data: bytes) -> dict:
        """Decode and classify an upload (on the predict thread). Raises ImageDecodeError for non-images."""
        rgb = decode_rgb(data, "upload")
        with self._predict_lock:
            if self._predictor is None:
                from edgeclf.runtime.loop import Classifier

                self._predictor = Classifier(self.backend.clone(1), top_k=self.top_k, threshold=self.threshold)
        t0 = time.perf_counter()
        pred = self._predictor.classify([rgb])[0]
        latency = (time.perf_counter() - t0) * 1000.0
        return FrameResult(0, "upload", 0, time.time(), pred, latency).to_json() | {"frame": None, "seq": None,
                                                                                   "width": rgb.shape[1],
                                                                                   "height": rgb.shape[0]}

    async def run_predict(self, data: bytes) -> dict:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.predict, data)

    def try_reserve(self) -> bool:
        if self._pending >= MAX_PENDING_PREDICTS:
            return False
        self._pending += 1
        return True

    def release(self) -> None:
        self._pending -= 1

    def status(self) -> dict:
        ok, reason = self.hub.health()
        latest = self.hub.latest
        return {"model": self.model, "source": self.hub.source_name, "frames": self.hub.frames,
                "fps": round(self.hub.fps, 2), "healthy": ok, "health": reason,
                "latency_ms": None if latest is None else round(latest.latency_ms, 3),
                "state": self.hub.state.to_json(), "events": [e.to_json() for e in list(self.hub.tracker.recent)[-20:]],
                "dropped": {"source": self.hub.source_dropped(), "viewer": self.view.dropped_for_viewers,
                            "events_client": self.stream.dropped},
                "stream_fps": round(1.0 / self.view.period, 2), "uptime_s": round(time.monotonic() - self.hub.started, 1),
                "auth": bool(self.token)}


def page_html() -> str:
    return resources.files("edgeclf.runtime.serve").joinpath("page.html").read_text(encoding="utf-8")


def build_app(srv: DeviceServer):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import (HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response,
                                     StreamingResponse)
    from starlette.routing import Route

    page = page_html()

    def unauthorized(request: Request) -> Response:
        if request.url.path == "/":
            return HTMLResponse(LOGIN_PAGE, status_code=401)
        return JSONResponse({"error": "a token is required: Authorization: Bearer TOKEN"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    def guard(handler):
        async def wrapped(request: Request) -> Response:
            if not srv.authorized(request.headers, request.cookies):
                return unauthorized(request)
            return await handler(request)
        return wrapped

    async def index(request: Request) -> Response:
        given = request.query_params.get("token")
        if srv.token and given is not None:  # opened once with ?token=: keep it in a cookie, out of the URL
            if not hmac.compare_digest(given.encode(), srv.token.encode()):
                return HTMLResponse(LOGIN_PAGE, status_code=401)
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, srv.token, httponly=True, samesite="strict", max_age=30 * 24 * 3600)
            return response
        if not srv.authorized(request.headers, request.cookies):
            return unauthorized(request)
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def latest(request: Request) -> Response:
        r = srv.hub.latest
        if r is None:
            return JSONResponse({"error": "no frame classified yet"}, status_code=503)
        return JSONResponse(r.to_json() | {"state": srv.hub.state.to_json(), "smoothed": r.smoothed})

    async def status(request: Request) -> Response:
        return JSONResponse(srv.status())

    async def healthz(request: Request) -> Response:
        ok, reason = srv.hub.health()
        return JSONResponse({"status": "ok" if ok else "unhealthy", "reason": reason, "frames": srv.hub.frames},
                            status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        return Response(srv.metrics.render(), media_type=CONTENT_TYPE)

    async def mjpeg(request: Request) -> Response:
        async def frames():
            viewer = next(srv.viewer_ids)
            srv.view.join(viewer)
            seen = -1
            try:
                while not srv.closing:
                    got = await srv.view.next_jpeg(seen)
                    if got is None:
                        continue
                    seen, jpeg = got
                    yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                           ).encode() + jpeg + b"\r\n"
                    srv.view.sent(viewer)  # the picture is in the socket's buffer: on its way
            finally:
                srv.view.leave(viewer)
        return StreamingResponse(frames(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                 headers={"Cache-Control": "no-store"})

    async def events(request: Request) -> Response:
        async def messages():
            q = srv.stream.subscribe()
            try:
                yield f"event: status\ndata: {_json(srv.status())}\n\n"
                while not srv.closing:
                    try:
                        msg = await asyncio.wait_for(q.get(), 10.0)
                    except asyncio.TimeoutError:
                        yield ": ping\n\n"  # keeps proxies from closing an idle stream
                        continue
                    if msg is None:
                        return
                    yield msg
            finally:
                srv.stream.unsubscribe(q)
        return StreamingResponse(messages(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def predict(request: Request) -> Response:
        too_big = {"error": f"upload over the {srv.max_upload / (1024 * 1024):g} MB limit (--max-upload-mb)"}
        cutoff = max(DISCARD_LIMIT, 2 * srv.max_upload)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > cutoff:
            return _count(srv, 413, too_big)  # not worth reading: the client may see the connection close
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= srv.max_upload:
                chunks.append(chunk)
            elif size > cutoff:
                return _count(srv, 413, too_big)
        if size > srv.max_upload:  # read to the end (and dropped), so that the client is ready for the answer
            return _count(srv, 413, too_big)
        data = b"".join(chunks)
        if not data:
            return _count(srv, 400, {"error": "empty body: send the image's bytes (curl --data-binary @photo.jpg)"})
        if not srv.try_reserve():
            return _count(srv, 503, {"error": "busy: too many uploads waiting, try again"})
        try:
            out = await srv.run_predict(data)
        except ImageDecodeError as exc:
            return _count(srv, 400, {"error": f"not an image: {first_line(exc)}"})
        finally:
            srv.release()
        return _count(srv, 200, out)

    async def not_allowed(request: Request) -> Response:
        return PlainTextResponse("method not allowed", status_code=405)

    routes = [Route("/", index), Route("/healthz", healthz),
              Route("/stream.mjpg", guard(mjpeg)), Route("/api/latest", guard(latest)),
              Route("/api/status", guard(status)), Route("/api/events", guard(events)),
              Route("/api/predict", guard(predict), methods=["POST"]), Route("/metrics", guard(metrics))]
    return Starlette(routes=routes)


def _json(obj) -> str:
    import json

    return json.dumps(obj, ensure_ascii=False)


def _count(srv: DeviceServer, code: int, body: dict):
    from starlette.responses import JSONResponse

    srv.count(code)
    return JSONResponse(body, status_code=code)


LOGIN_PAGE = """<!doctype html><html><head><meta charset="utf-8"><meta name="viewport"
content="width=device-width,initial-scale=1"><title>edgeclf: token</title><style>body{font:16px system-ui,sans-serif;
margin:3em auto;max-width:22em;padding:0 1em}input{font-size:16px;width:100%;margin:.5em 0;padding:.4em}</style>
</head><body><h1>edgeclf</h1><p>This device asks for its token.</p><form method="get" action="/">
<input type="password" name="token" autocomplete="current-password" autofocus><button>Open</button></form>
</body></html>"""
