"""``selfattention serve``: its options and its handler. Heavy modules (torch, the model, uvicorn)
are imported when the command runs, not when the parser is built."""

from __future__ import annotations

import argparse
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any

from .._options import integer, number, seed

MAX_CHARS = 20_000  # the most --max-chars allows (a request's body is ~12 bytes per character at most)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``serve`` subcommand and its options."""
    from ..explain.cli import MAX_DIM, MODEL_HELP

    s = sub.add_parser("serve", help="the explorer as a local web app: type a sentence, see its attention",
                       description="Serve the attention explorer (the page of explain --html) with a text "
                                   "box: each sentence typed is run through the model, loaded once, and "
                                   "drawn with the same numbers explain --json gives for it. Ctrl-C stops.")
    s.add_argument("--model", default=None, metavar="NAME|PATH", help=MODEL_HELP)
    s.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on (default 127.0.0.1: this machine only; another address "
                        "lets anyone who can reach it use the server, and is warned about)")
    s.add_argument("--port", type=integer(0, 65535), default=0,
                   help="the port (default 0: a free one; the URL is printed)")
    s.add_argument("--open", action="store_true", help="open the page in a web browser once it is served")
    s.add_argument("--text", default=None, help='the sentence the page opens on (default "I am enjoying this '
                                                'lecture")')
    s.add_argument("--max-chars", type=integer(1, MAX_CHARS), default=300,
                   help=f"the longest sentence taken, in characters (default 300, at most {MAX_CHARS:,}); a "
                        "sentence longer than the model takes is cut with a warning, as explain does")
    s.add_argument("--timeout", type=number(0.0, 600.0, above=True, expected="a number of seconds such as 10",
                                            rule="must be above 0 and at most 600 seconds"), default=10.0,
                   help="seconds a request may take, from its first byte to its answer (default 10)")
    s.add_argument("--queue", type=integer(1, 1000), default=8,
                   help="sentences held at once, one run by the model and the rest waiting (default 8); "
                        "more get 503, the server is busy")
    s.add_argument("--dim", type=integer(1, MAX_DIM), default=None, help="toy model only: D (default 64)")
    s.add_argument("--seed", type=seed, default=None, help="toy model only: the seed of its W's (default 0)")
    s.add_argument("--positions", choices=("none", "sinusoidal"), default=None,
                   help="toy model only: none (default) or sinusoidal positions")


def run(args: argparse.Namespace) -> int:
    """The ``serve`` command: load the model, render the first page, serve until Ctrl-C."""
    import torch

    from .._command import say
    from .._text import printable
    from ..explain.cli import load_model
    from .app import Limits

    # One sentence is a tiny problem: one thread runs it fastest on a shared machine (explain's
    # reasoning); the model runs in one thread of this process, one sentence at a time.
    torch.set_num_threads(1)
    limits = Limits(max_chars=args.max_chars, timeout=args.timeout, queue=args.queue)
    model = load_model(args.model, dim=args.dim, seed=args.seed, positions=args.positions)
    served = start(model, text=args.text, limits=limits, host=args.host, port=args.port)
    if not served.loopback:
        say(f"selfattention: warning: serve: {printable(args.host)} is not a loopback address: anyone on the "
            "network who can reach this machine can use this server (it has no login); --host 127.0.0.1 "
            "keeps it to this machine")
    print(f"serving the attention explorer of {model.label} at {served.url} (Ctrl-C stops)", flush=True)
    if args.open:
        threading.Thread(target=_open_when_started, args=(served.server, served.url), daemon=True).start()
    served.run()
    return 0


@dataclass
class Served:
    """A server ready to run: ``run()`` serves on ``sock`` (at ``url``) until stopped
    (``server.should_exit = True``, or Ctrl-C in the main thread)."""

    server: Any  # uvicorn.Server
    app: Any  # the Starlette app
    sock: socket.socket
    url: str
    loopback: bool

    def run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.app.state.queue.close()
            self.sock.close()


def start(model: Any, *, text: str | None, limits: Any, host: str = "127.0.0.1", port: int = 0) -> Served:
    """Everything ``serve`` does before it serves: the first page (of ``text``, default
    ``sentences.DEFAULT_TEXT``), the app, the socket and the server. UsageError for a ``text`` the
    model does not take, or an address that cannot be listened on."""
    from ..errors import InputError, UsageError
    from . import server
    from .app import build_app, first_page
    from .sentences import DEFAULT_TEXT, check_text, explore

    shown = DEFAULT_TEXT if text is None else text
    try:
        first = explore(model, check_text(shown, limits.max_chars))
    except InputError as e:
        raise UsageError(f"--text: {e}" if text is not None else f"{e}; give --text a sentence this model "
                         "takes") from None
    page = first_page(first, shown, limits)
    sock = server.bind(host, port)
    loopback = server.is_loopback(sock)
    app = build_app(page, lambda t, causal: explore(model, t, causal=causal).body, limits,
                    hosts=server.loopback_hosts(sock) if loopback else None)
    return Served(server.make_server(app, limits), app, sock, server.url(sock), loopback)


def _open_when_started(uv, address: str) -> None:
    import time
    import webbrowser

    while not uv.started and not uv.should_exit:
        time.sleep(0.05)
    if uv.started and not webbrowser.open(address):
        print(f"selfattention: warning: serve: no web browser could be opened; open {address}",
              file=sys.stderr, flush=True)
