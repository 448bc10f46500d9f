"""uvicorn for ``selfattention serve``: the listening socket, the connection limits, and a deadline
on a request's headers.

uvicorn closes a connection idle after a response (``timeout_keep_alive``) and answers 503 past
``limit_concurrency`` connections, but waits forever for headers that arrive a byte at a time (a
"slowloris" client holds its connection, and enough of them fill ``limit_concurrency``).
``_Protocol`` adds that deadline: a connection that has not sent a whole request's headers within
``timeout`` seconds of opening (or of its last response) gets 408 and is closed.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import UsageError
from .app import Limits

HEADER_BYTES = 16 * 1024  # a request's line and headers: far more than a browser sends


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port); UsageError naming the problem."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise UsageError(f"--host {host!r}: not an address of this machine ({e})") from None
    family, kind, proto, _, address = sorted(infos, key=lambda i: i[0] != socket.AF_INET)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host} port {port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def url(sock: socket.socket) -> str:
    """http://host:port/ of a bound socket (IPv6 in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def is_loopback(sock: socket.socket) -> bool:
    """Whether only this machine can reach the socket (127.0.0.0/8, ::1)."""
    return ipaddress.ip_address(sock.getsockname()[0]).is_loopback


def loopback_hosts(sock: socket.socket) -> list[str]:
    """The Host names a loopback server answers to: its address and localhost."""
    return [sock.getsockname()[0], "localhost"]


class _Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on each request's headers (see the module)."""

    headers_timeout = 10.0

    def connection_made(self, transport: Any) -> None:  # noqa: D102
        super().connection_made(transport)
        self._headers_timer = None
        self._arm()

    def on_response_complete(self) -> None:  # noqa: D102
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102
        if self._headers_timer is not None:
            self._headers_timer.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
        waiting_since = self.cycle  # a new request replaces it; until then the deadline runs
        self._headers_timer = self.loop.call_later(self.headers_timeout, self._too_slow, waiting_since)

    def _too_slow(self, waiting_since: object) -> None:
        busy = waiting_since is not None and not waiting_since.response_complete  # a pipelined request
        if busy or self.cycle is not waiting_since or self.transport.is_closing():
            return  # a request arrived in time (or the connection is gone)
        line = f"the request's headers did not arrive within {self.headers_timeout:g} s\n".encode()
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                             b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(line), line))
        self.transport.close()


def make_server(app: Any, limits: Limits) -> uvicorn.Server:
    """A uvicorn server for ``app`` under ``limits`` (run it with ``server.run(sockets=[bind(…)])``)."""
    protocol = type("Protocol", (_Protocol,), {"headers_timeout": limits.timeout})
    config = uvicorn.Config(app, http=protocol, ws="none", lifespan="off", log_level="error",
                            access_log=False, server_header=False, limit_concurrency=limits.connections,
                            timeout_keep_alive=5, h11_max_incomplete_event_size=HEADER_BYTES)
    return uvicorn.Server(config)
