"""The ``selfattention`` command's entry point: Ctrl-C is answered from the first instant.

Until ``cli.main`` takes over (it turns KeyboardInterrupt into "interrupted", exit 130), a SIGINT
ends the process at once with the same line — no traceback from the middle of an import.
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupted(_signum: int, _frame: object) -> None:
    os.write(2, b"selfattention: interrupted\n")
    os._exit(130)


def run() -> int:
    """Run ``selfattention`` with ``sys.argv``; returns the exit status."""
    signal.signal(signal.SIGINT, _interrupted)
    try:
        from .cli import main

        signal.signal(signal.SIGINT, signal.default_int_handler)
        return main()
    except KeyboardInterrupt:  # between the two lines above
        sys.stderr.write("selfattention: interrupted\n")
        return 130
    finally:
        # The answer is given; a Ctrl-C now (while Python flushes and exits) would only add noise.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
