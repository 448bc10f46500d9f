"""The ``train`` and ``generate`` commands of ``selfattention`` (argument parsing only: heavy
modules are imported by the handlers, not here)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_parsers(sub: argparse._SubParsersAction) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add this package's subcommands to ``sub``; returns {command: handler(args) -> exit status}."""
    return {}
