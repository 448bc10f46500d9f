"""The Starlette app of ``selfattention serve``: two routes and the limits every request meets.

- ``GET /``: the explorer page (``viz.html.render_html`` with ``live``), rendered once at start.
- ``POST /api/attention``, body ``{"text": "…", "causal": false}`` (JSON, ``causal`` optional):
  that sentence's data, ``viz.html.payload`` plus ``"warning"`` (``sentences.explore``).

Limits: a body of at most ``Limits.max_body`` bytes (413; a larger Content-Length is refused before
reading), all of it within ``timeout`` seconds (408), JSON of that shape in UTF-8 (400, 415 for
another Content-Type), ``max_chars`` characters (400). The model runs in one thread, one sentence at
a time; at most ``queue`` requests are held (running or waiting), more get 503 at once; a request
that waits and runs longer than ``timeout`` gets 503 (its work, if begun, finishes and frees its
place). Every error is one line of text/plain. Nothing a request sends names a file: the server
reads the model once, at start, and writes nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .._text import clip
from ..errors import InputError, ModelError, UserError
from .sentences import Answer, check_text

ENDPOINT = "/api/attention"
FIELDS = {"text": "the sentence", "causal": "true or false (optional)"}
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Content-Security-Policy": "frame-ancestors 'none'", "X-Frame-Options": "DENY"}


@dataclass(frozen=True)
class Limits:
    """What one request may ask: ``max_chars`` characters of text; a JSON body of at most
    ``max_body`` bytes (default: the longest text written as \\uXXXX escapes, 12 bytes for a
    character outside the BMP's pair of escapes, plus 1 KiB); ``timeout`` seconds for all of a request
    (its headers, body, wait and run); ``queue`` requests held at once; ``connections`` open at once."""

    max_chars: int = 300  # MiniLM: ≤ 302 word pieces, a ~45 MB answer (512: 120 MB, 5 s)
    timeout: float = 10.0
    queue: int = 8
    connections: int = 64

    @property
    def max_body(self) -> int:
        return 1024 + 12 * self.max_chars


class Busy(Exception):
    """The queue is full: 503."""


class Queue:
    """At most ``size`` jobs held (running or waiting) for one worker thread; ``submit`` raises Busy
    beyond that. A place is freed when its job ends (or is cancelled before it starts)."""

    def __init__(self, size: int):
        self.size, self.held = size, 0
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="selfattention-model")

    def submit(self, job: Callable[[], Any]) -> concurrent.futures.Future:
        with self._lock:
            if self.held >= self.size:
                raise Busy(f"the server is busy: {self.held} sentences are already being worked on or "
                           f"waiting (--queue {self.size}); try again in a moment")
            self.held += 1
        future = self._pool.submit(job)
        future.add_done_callback(self._release)
        return future

    def _release(self, _future: concurrent.futures.Future) -> None:
        with self._lock:
            self.held -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def first_page(answer: Answer, text: str, limits: Limits) -> bytes:
    """The explorer page of ``answer`` (the sentence ``text``) with its text box: ``render_html``,
    the template and data builder of ``explain --html``, in its live mode."""
    from ..viz.html import render_html

    live = {"endpoint": ENDPOINT, "text": text, "max_chars": limits.max_chars, "causal": False,
            "warning": answer.warning}
    layer, head, word = answer.opening
    return render_html(answer.attention, layer=layer, head=head, word=word, live=live).encode("utf-8")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> PlainTextResponse:
    """One line of text: ``message`` (never more than one line, whatever it quotes)."""
    line = " ".join(message.split())
    return PlainTextResponse(line + "\n", status, headers={**HEADERS, **(headers or {})})


def _parse(body: bytes, limits: Limits) -> tuple[str, bool]:
    """(text, causal) from a request body; InputError (400) naming what is wrong with it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"the body is not valid UTF-8 (byte 0x{body[e.start]:02x} at byte {e.start + 1})"
                         ) from None
    try:
        obj = json.loads(text)
    except RecursionError:
        raise InputError("the body's JSON is nested too deeply; send {\"text\": \"…\"}") from None
    except ValueError as e:
        raise InputError(f"the body is not JSON ({str(e).split(':')[0]}); send {{\"text\": \"…\"}}") from None
    if not isinstance(obj, dict):
        raise InputError(f'the body must be a JSON object such as {{"text": "I am here"}}, got '
                         f"{type(obj).__name__ if obj is not None else 'null'}")
    unknown = [k for k in obj if k not in FIELDS]
    if unknown:
        raise InputError(f"unknown field {clip(unknown[0])!r}: the body takes "
                         + ", ".join(f'"{k}" ({what})' for k, what in FIELDS.items()))
    if "text" not in obj:
        raise InputError('the body has no "text": send {"text": "a sentence"}')
    causal = obj.get("causal", False)
    if not isinstance(causal, bool):
        raise InputError(f'"causal" must be true or false, got {clip(json.dumps(causal))}')
    return check_text(obj["text"], limits.max_chars), causal


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes; HTTPException 413 past it (before reading, when the
    Content-Length says so)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise HTTPException(413, f"the body is larger than this server takes ({limit:,} bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the body is larger than this server takes ({limit:,} bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def build_app(page: bytes, explore: Callable[[str, bool], bytes], limits: Limits,
              *, hosts: list[str] | None = None) -> Starlette:
    """The app: ``page`` at /, ``explore(text, causal)`` → a JSON body at ENDPOINT (run in the
    model's thread), under ``limits``. ``hosts``: the Host names accepted (None: any), so that a web
    page elsewhere cannot reach a loopback server through a name that resolves to it."""
    queue = Queue(limits.queue)

    async def index(_request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=HEADERS)

    async def attention(request: Request) -> Response:
        deadline = time.monotonic() + limits.timeout
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return error(415, "send the sentence as JSON (Content-Type: application/json), e.g. "
                              '{"text": "I am enjoying this lecture"}')
        try:
            body = await asyncio.wait_for(_read_body(request, limits.max_body), limits.timeout)
        except asyncio.TimeoutError:
            return error(408, f"the request's body did not arrive within {limits.timeout:g} s",
                         {"Connection": "close"})
        try:
            text, causal = _parse(body, limits)
            future = queue.submit(lambda: explore(text, causal))
        except InputError as e:
            return error(400, str(e))
        except Busy as e:
            return error(503, str(e), {"Retry-After": "1"})
        try:
            left = max(0.0, deadline - time.monotonic())
            answer = await asyncio.wait_for(asyncio.wrap_future(future), left)
        except asyncio.TimeoutError:
            return error(503, f"this sentence took more than {limits.timeout:g} s (--timeout); try a shorter "
                              "one", {"Retry-After": "1"})
        except ModelError as e:
            return error(422, str(e))
        except UserError as e:
            return error(400, str(e))
        except Exception as e:  # a bug: said in one line here and on the server's stderr
            print(f"selfattention: error: serve: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            return error(500, f"the server failed on this sentence (a bug): {type(e).__name__}")
        return Response(answer, media_type="application/json", headers=HEADERS)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return error(404, f"no such page: {clip(request.url.path, 80)} (the explorer is at /)")
        if exc.status_code == 405:
            allow = {k.lower(): v for k, v in (exc.headers or {}).items()}.get("allow", "")
            return error(405, f"{clip(request.method, 20)} is not allowed on {request.url.path}; use {allow}",
                         {"Allow": allow})
        return error(exc.status_code, str(exc.detail))

    routes = [Route("/", index, methods=["GET", "HEAD"]), Route(ENDPOINT, attention, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    if hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    app.state.queue = queue
    return app
