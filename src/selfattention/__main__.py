"""``python -m selfattention`` is the ``selfattention`` command."""

from selfattention._entry import run

raise SystemExit(run())
