"""The ``selfattention`` console script's entry point (``run``): ``cli.main`` with Ctrl-C answered at
once. How a command ends otherwise (exit statuses, stdout, warnings) is ``_command``'s.

Ctrl-C is answered at any instant with one line: a SIGINT ends the process at once —
"selfattention: interrupted", exit 130 — whatever it is doing: importing torch (where an
interrupt inside a C extension would otherwise surface as a misleading ImportError: numpy turns it
into a page about a broken install), loading a model, computing. Files are the exception: while
``_io.write_atomic`` writes one, Ctrl-C raises KeyboardInterrupt there instead, so the temporary
file is removed and an old file kept, and then the process ends the same way.
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupted(_signum: int, _frame: object) -> None:
    try:
        sys.stdout.flush()  # what was already printed is kept
    except Exception:  # noqa: BLE001 (interrupted inside a write to stdout: nothing more to save)
        pass
    erase = b"\r\x1b[K" if sys.stderr is not None and sys.stderr.isatty() else b""  # a progress bar
    os.write(2, erase + b"selfattention: interrupted\n")
    os._exit(130)


def run() -> int:
    """Run ``selfattention`` with ``sys.argv``; returns the exit status."""
    signal.signal(signal.SIGINT, _interrupted)
    try:
        from .cli import main  # after the handler: Ctrl-C during the imports is answered too

        return main()
    finally:
        # The answer is given; a Ctrl-C now (while Python flushes and exits) would only add noise.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _drop_unwritten()


def _drop_unwritten() -> None:
    """What stdout could not take (said already) goes nowhere: Python's flush at exit would
    otherwise fail again, with a message of its own and another exit status."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
            except (OSError, ValueError):
                pass
