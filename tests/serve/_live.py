"""A ``selfattention serve`` server in a thread of the test process (``live``), and raw HTTP.

The server is the command's own (``serve.cli.start``): the same page, app, socket and uvicorn
protocol; only the thread differs (uvicorn installs no signal handlers outside the main thread).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from selfattention.serve.app import ENDPOINT, Limits
from selfattention.serve.cli import Served, start


@dataclass
class Live:
    served: Served
    host: str
    port: int

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def ask(self, text: str, **fields: Any) -> tuple[int, bytes]:
        """POST {"text": text, **fields} as JSON; (status, body)."""
        body = json.dumps({"text": text, **fields}).encode()
        status, _, out = self.request("POST", ENDPOINT, body, {"Content-Type": "application/json"})
        return status, out

    def raw(self, data: bytes, *, wait: float = 10) -> bytes:
        """Send ``data`` as is on a new connection; everything the server answers until it closes."""
        with socket.create_connection((self.host, self.port), timeout=wait) as s:
            s.sendall(data)
            chunks = []
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            return b"".join(chunks)


@contextlib.contextmanager
def live(model: Any, limits: Limits | None = None, text: str | None = None) -> Iterator[Live]:
    """``model`` served on a free loopback port while the block runs (``limits``: default Limits())."""
    with running(start(model, text=text, limits=limits or Limits())) as server:
        yield server


@contextlib.contextmanager
def live_app(page: bytes, explore: Any, limits: Limits) -> Iterator[Live]:
    """An app of ``build_app`` around a stand-in ``explore(text, causal)`` → bytes, served."""
    from selfattention.serve import server
    from selfattention.serve.app import build_app

    sock = server.bind("127.0.0.1", 0)
    app = build_app(page, explore, limits, hosts=server.loopback_hosts(sock))
    with running(Served(server.make_server(app, limits), app, sock, server.url(sock), True)) as s:
        yield s


@contextlib.contextmanager
def running(served: Served) -> Iterator[Live]:
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not served.server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    parts = urlsplit(served.url)
    try:
        yield Live(served, parts.hostname, parts.port)
    finally:
        served.server.should_exit = True
        thread.join(30)


def one_line(body: bytes) -> str:
    """The body as its one line of text (fails if it is not exactly one)."""
    text = body.decode("utf-8").strip()
    assert text and "\n" not in text and len(text) < 400, repr(text[:300])
    return text
