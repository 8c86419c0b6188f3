"""``edgeclf label DIR``: a local page to label the frames ``edgeclf run --collect DIR`` kept.

Starlette + Uvicorn, as the device's own server (:mod:`edgeclf.runtime.serve.app`), so it runs on the device too
(``edgeclf label DIR --serve 0.0.0.0:8090 --token ...``) or on a laptop after ``rsync -a pi:DIR/ DIR/``.

    GET  /              the page (self-contained: nothing fetched from elsewhere)
    GET  /api/items     classes, the frames (unanswered first, most uncertain first), the count done
    POST /api/label     {"file", "label"}: the answer ("" discards); labels.csv is rewritten at once
    POST /api/undo      takes the last answer back
    GET  /frames/...    the pictures (only those collected.jsonl names)

With a token, every endpoint asks for it as ``edgeclf run --serve`` does (Bearer header, or the cookie the page
sets once opened as ``/?token=TOKEN``).
"""
from __future__ import annotations

import hmac
import signal
import socket
from importlib import resources
from pathlib import Path
from typing import Callable

from edgeclf.errors import ServiceError
from edgeclf.label.store import Store, open_store

DEFAULT_BIND = "127.0.0.1:8090"


def page_html() -> str:
    return resources.files("edgeclf.label").joinpath("page.html").read_text(encoding="utf-8")


def build_app(store: Store, token: str | None = None):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Route

    from edgeclf.runtime.serve.app import COOKIE, LOGIN_PAGE, DeviceServer

    page = page_html()

    class _Auth:  # the device server's check, on this server's token
        def __init__(self, token):
            self.token = token
    auth = _Auth(token)

    def authorized(request: Request) -> bool:
        return DeviceServer.authorized(auth, request.headers, request.cookies)

    def guard(handler):
        async def wrapped(request: Request) -> Response:
            if not authorized(request):
                if request.url.path == "/":
                    return HTMLResponse(LOGIN_PAGE, status_code=401)
                return JSONResponse({"error": "a token is required: Authorization: Bearer TOKEN"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            return await handler(request)
        return wrapped

    async def index(request: Request) -> Response:
        given = request.query_params.get("token")
        if token and given is not None:
            if not hmac.compare_digest(given.encode(), token.encode()):
                return HTMLResponse(LOGIN_PAGE, status_code=401)
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", max_age=30 * 24 * 3600)
            return response
        if not authorized(request):
            return HTMLResponse(LOGIN_PAGE, status_code=401)
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    async def items(request: Request) -> Response:
        return JSONResponse(store.view(), headers={"Cache-Control": "no-store"})

    async def label(request: Request) -> Response:
        try:
            body = await request.json()
            file, lab = body["file"], body["label"]
            if not isinstance(file, str) or not isinstance(lab, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'expected JSON {"file": "...", "label": "..."}'}, status_code=400)
        try:
            return JSONResponse(store.answer(file, lab))
        except KeyError:
            return JSONResponse({"error": f"{file}: not a collected frame"}, status_code=404)
        except ValueError:
            return JSONResponse({"error": f"{lab}: not a class ({', '.join(store.classes)})"}, status_code=400)
        except OSError as exc:
            return JSONResponse({"error": f"cannot write labels.csv ({exc.strerror or exc})"}, status_code=500)

    async def undo(request: Request) -> Response:
        try:
            done = store.undo()
        except OSError as exc:
            return JSONResponse({"error": f"cannot write labels.csv ({exc.strerror or exc})"}, status_code=500)
        if done is None:
            return JSONResponse({"error": "nothing to undo", **store.progress()}, status_code=409)
        return JSONResponse(done)

    async def frame(request: Request) -> Response:
        rel = "frames/" + request.path_params["path"]
        if rel not in store.files:
            return JSONResponse({"error": "not a collected frame"}, status_code=404)
        return FileResponse(store.folder / rel, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    routes = [Route("/", index), Route("/api/items", guard(items)),
              Route("/api/label", guard(label), methods=["POST"]), Route("/api/undo", guard(undo), methods=["POST"]),
              Route("/frames/{path:path}", guard(frame))]
    return Starlette(routes=routes)


def serve_labels(folder: str | Path, *, bind: str = DEFAULT_BIND, token: str | None = None,
                 classes: list[str] | None = None, echo: Callable[[str], None] = print) -> None:
    """Serve the labelling page for ``folder`` until Ctrl-C (or SIGTERM). Raises ServiceError/LabelError first."""
    from edgeclf.runtime.device import DeviceOptions, check, parse_bind

    check(DeviceOptions(serve=bind, token=token), [])  # a non-loopback address needs a token, as for run --serve
    host, port = parse_bind(bind)
    store = open_store(folder, classes)
    try:
        import uvicorn
    except ImportError as exc:
        raise ServiceError(f"edgeclf label needs packages that are not installed ({exc.name or exc}): "
                           "pip install 'edgeclf[serve]'") from exc
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServiceError(f"--serve {host}:{port}: cannot listen ({exc.strerror or exc})") from exc
    sock.listen(64)
    port = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    view = store.view()
    echo(f"labelling: {view['total']} frames in {store.folder} ({view['done']} done), classes "
         f"{', '.join(store.classes)}; answers go to {store.labels_path}")
    echo(f"serving: http://{shown}:{port}/{' (token required)' if token else ''} -- Ctrl-C to stop")
    config = uvicorn.Config(build_app(store, token), log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=2, server_header=False)
    server = uvicorn.Server(config)

    def on_term(signum, frame):  # systemd/docker stop: the same clean stop as Ctrl-C
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        previous = None
    try:
        server.run(sockets=[sock])  # Uvicorn re-raises the signal that stopped it once it has shut down
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    done = store.progress()
    echo(f"labelled: {done['done']} of {done['total']} frames in {store.labels_path}")
