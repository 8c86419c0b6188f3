"""``--webhook URL``: each event POSTed as JSON, by a thread of its own.

    {"device": "garden", "id": 3, "type": "start", "label": "bees", "start": 1767225600.5, "end": null, ...}

The classify loop only puts the event in a bounded :class:`~edgeclf.runtime.hub.Mailbox` (a full one drops it
and counts it). The thread POSTs with a 5 s timeout and up to 3 tries, 0.5 s then 1 s apart (longer when a
429/503 says Retry-After, up to 5 s); a 4xx other than 429, or a redirect, is not retried. When the run stops,
what is still queued gets a short grace (2 s in all), then is counted as not delivered.

User info in the URL (``https://user:pass@host/hook``) becomes an ``Authorization: Basic`` header; the query
string is sent as given. Neither is ever shown: messages carry :func:`~edgeclf.runtime.sources.redact_url`.
"""
from __future__ import annotations

import base64
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import unquote, urlsplit, urlunsplit

from edgeclf.errors import ServiceError
from edgeclf.runtime.events import Event
from edgeclf.runtime.hub import Hub, Listener, Mailbox
from edgeclf.runtime.sources import redact_url

TIMEOUT_S = 5.0
TRIES = 3
BACKOFF_S = 0.5  # before the 2nd try; doubled before each next one
MAX_RETRY_AFTER_S = 5.0
GRACE_S = 2.0  # close(): time left to what is still queued


@dataclass(frozen=True)
class WebhookTarget:
    url: str  # what is requested: the URL without its user info (the query kept)
    shown: str  # what messages show: no user info, no query
    headers: dict = field(default_factory=dict, repr=False, compare=False)  # Authorization, when user info

    def __repr__(self) -> str:
        return f"WebhookTarget({self.shown!r})"


def parse_webhook_url(url: str) -> WebhookTarget:
    """Split ``http[s]://[user[:pass]@]host[:port]/path[?query]``; raises ServiceError (one line, redacted)."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname or "", parts.port
    except ValueError:
        raise ServiceError(f"--webhook {shown}: the port is not a number in 0..65535") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise ServiceError(f"--webhook {shown}: expected an http:// or https:// URL with a host")
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    headers = {}
    if parts.username is not None:
        user, secret = unquote(parts.username), unquote(parts.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
    request_url = urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", parts.query, ""))
    return WebhookTarget(request_url, shown, headers)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A POST is never turned into a GET elsewhere: a redirect is an answer like any other (not followed)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102
        return None


def _user_agent() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"edgeclf/{version('edgeclf')}"
    except PackageNotFoundError:
        return "edgeclf"


class WebhookListener(Listener):
    """POSTs every event to a URL; never blocks the loop; at most :data:`GRACE_S` at close."""

    def __init__(self, url: str, *, device: str, echo: Callable[[str], None] = print, timeout: float = TIMEOUT_S,
                 tries: int = TRIES, backoff: float = BACKOFF_S, grace: float = GRACE_S, queue_size: int = 256):
        self.target = parse_webhook_url(url)  # raises ServiceError before anything starts
        self.device = device
        self.echo = echo
        self.timeout, self.tries, self.backoff, self.grace = timeout, max(1, tries), backoff, grace
        self.queued = 0  # put in the mailbox
        self.delivered = 0  # answered 2xx
        self.failed = 0  # given up on: every try failed, or an answer that is not retried
        self.retries = 0  # tries after a first one
        self._box: Mailbox[bytes] = Mailbox(queue_size)
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._headers = {"Content-Type": "application/json", "User-Agent": _user_agent(), **self.target.headers}
        self._thread: threading.Thread | None = None
        self._deadline = 0.0  # set by close(): give up at this time.monotonic()
        self._closing = threading.Event()  # wakes a back-off pause
        self._failing = False  # reported once until the next delivery
        self._closed = False

    @property
    def dropped(self) -> int:
        """Events the full mailbox refused (the web server slower than the events for a long while)."""
        return self._box.dropped

    # --- the loop's side: never blocks --------------------------------------------------------------
    def start(self, hub: Hub) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="edgeclf-webhook", daemon=True)
            self._thread.start()

    def event(self, event: Event) -> None:
        body = json.dumps({"device": self.device, **event.to_json()}, ensure_ascii=False).encode("utf-8")
        if self._box.put(body):
            self.queued += 1

    def close(self) -> None:
        """Give what is queued :data:`GRACE_S` in all, then stop (the thread is a daemon: it never holds the exit)."""
        if self._closed:
            return
        self._closed = True
        self._deadline = time.monotonic() + self.grace
        self._closing.set()
        self._box.close()
        if self._thread is not None:
            self._thread.join(self.grace + 0.2)
        lost = self.queued - self.delivered - self.failed
        if lost > 0 or self._box.dropped:
            self.echo(f"webhook: {lost + self._box.dropped} events not delivered to {self.target.shown} "
                      f"({lost} still queued or in flight when the run stopped"
                      + (f", {self._box.dropped} dropped by a full queue" if self._box.dropped else "") + ")")

    # --- the thread ----------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            body = self._box.get()
            if body is None:
                return
            if self._late():
                continue  # closing and out of time: counted as not delivered
            self._deliver(body)

    def _scrub(self, text: str) -> str:
        """An exception's text without the URL's query (http.client may quote the URL it refused)."""
        query = urlsplit(self.target.url).query
        return text.replace(query, "...") if query else text

    def _late(self) -> bool:
        return bool(self._deadline) and time.monotonic() >= self._deadline

    def _deliver(self, body: bytes) -> None:
        why, retry = "", True
        for attempt in range(self.tries):
            if attempt:
                self.retries += 1
            timeout = self.timeout
            if self._deadline:
                timeout = min(timeout, self._deadline - time.monotonic())
                if timeout <= 0:
                    return  # out of time: counted by close()
            wait = self.backoff * 2 ** attempt
            try:
                req = urllib.request.Request(self.target.url, data=body, headers=self._headers, method="POST")
                with self._opener.open(req, timeout=timeout) as resp:
                    resp.read(65536)
                self.delivered += 1
                if self._failing:
                    self._failing = False
                    self.echo(f"webhook: {self.target.shown} answers again")
                return
            except urllib.error.HTTPError as exc:
                code = exc.code
                why = f"HTTP {code} {exc.reason}".strip()
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                exc.close()
                if 300 <= code < 400:
                    why, retry = f"HTTP {code}: a redirect (a POST is not followed; give the final URL)", False
                elif 400 <= code < 500 and code != 429:
                    retry = False
                if retry_after and retry_after.strip().isdigit():
                    wait = max(wait, min(float(retry_after), MAX_RETRY_AFTER_S))
            except urllib.error.URLError as exc:
                reason = exc.reason
                why = ("timed out" if isinstance(reason, TimeoutError)
                       else self._scrub(str(getattr(reason, "strerror", None) or reason)))
            except TimeoutError:
                why = f"no answer within {timeout:g} s"
            except (OSError, http.client.HTTPException) as exc:
                why = type(exc).__name__ + (f": {self._scrub(str(exc))}" if str(exc) else "")
            if not retry or attempt + 1 == self.tries:
                break
            self._closing.wait(wait)  # close() cuts the pause short: the grace is spent on tries instead
            if self._late():
                return
        self.failed += 1
        if not self._failing:
            self._failing = True
            tried = "not retried" if not retry else f"tried {attempt + 1} times"
            self.echo(f"webhook: POST to {self.target.shown} failed: {why} ({tried}); the event is dropped, "
                      "the run goes on")


__all__ = ["WebhookListener", "WebhookTarget", "parse_webhook_url"]
