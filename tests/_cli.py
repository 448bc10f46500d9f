"""The command line in this process (``run_cli``), what a user's mistake must look like
(``one_error``), and model folders for error tests
(``model_dir_copy``: the default model's files symlinked, some left out or replaced).

``run_cli`` is the cheap way to test a command: no interpreter to start, no torch to import
again, the model loaded once per test process. A test starts a real process only where the
process is the thing tested (signals, stdin, exit codes seen by a shell, memory, a lock between
two processes); such a test carries the mark ``subprocess`` (conftest.py checks that it does).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path


def one_error(rc: int, out: str, err: str, match: str = "") -> str:
    """Exit 2, nothing on stdout, one line on stderr that says what went wrong (and matches ``match``)."""
    assert rc == 2, (rc, err)
    assert out == "", out[:200]
    assert err.startswith("selfattention: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "unexpected" not in err, err
    if match:
        assert re.search(match, err), err
    return err


def model_dir_copy(tmp_path: Path, *, without: tuple[str, ...] = (), replace: dict | None = None) -> Path:
    """tmp_path/model: the default model's files symlinked, less ``without``, with ``replace``d ones."""
    from selfattention.models.pretrained import default_model_path

    src, dst = default_model_path(), tmp_path / "model"
    dst.mkdir()
    replace = replace or {}
    for entry in src.iterdir():
        if entry.name not in without and entry.name not in replace:
            os.symlink(entry, dst / entry.name)
    for name, content in replace.items():
        (dst / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return dst


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_cli(*argv: str, stdin: str | None = None, tty: bool = False) -> tuple[int, str, str]:
    """``selfattention.cli.main(argv)`` in this process → (exit status, stdout, stderr)."""
    from selfattention.cli import main

    out, err = io.StringIO(), _Tty() if tty else io.StringIO()
    old_stdin = sys.stdin
    try:
        if stdin is not None:
            sys.stdin = io.StringIO(stdin)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(list(argv))
    finally:
        sys.stdin = old_stdin
    return rc, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def no_hang(seconds: int = 30) -> Iterator[None]:
    """Fail (instead of hanging the test run) if the body blocks, e.g. opening a FIFO no one writes:
    what a subprocess's timeout gives, for a command run in this process."""
    def stop(signum, frame):  # noqa: ARG001
        raise TimeoutError(f"hung for {seconds} s")
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
