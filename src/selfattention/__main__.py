"""``python -m selfattention`` is the ``selfattention`` command."""

from selfattention.cli import main

raise SystemExit(main())
