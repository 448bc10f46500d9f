"""The ``selfattention`` command's entry point: how every command ends.

- Done: exit 0. A user's mistake (``errors.UserError``): one line on stderr, ``selfattention:
  error: …``, exit 2. Anything else is a bug: one line too, exit 1 (SELFATTENTION_TRACEBACK=1
  shows the traceback).
- stdout that cannot be written — a full disk, an I/O error, a closed stdout — is one line naming
  stdout (and the file it goes to) and the cause, exit 2. A reader that went away (a broken pipe,
  ``selfattention explain … | head``) ends quietly with 141, 128 + SIGPIPE, as the shell's own
  tools do.
- Ctrl-C is answered at any instant with one line: a SIGINT ends the process at once —
  "selfattention: interrupted", exit 130 — whatever it is doing: importing torch (where an
  interrupt inside a C extension would otherwise surface as a misleading ImportError: numpy turns
  it into a page about a broken install), loading a model, computing. Files are the exception:
  while ``_io.write_atomic`` writes one, Ctrl-C raises KeyboardInterrupt there instead, so the
  temporary file is removed and an old file kept, and then the process ends the same way.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from typing import TextIO

BROKEN_PIPE = 128 + signal.SIGPIPE  # the status of a shell tool whose reader went away
CLOSED = "stdout is closed, and the command prints its result there; redirect it to a file or to /dev/null"


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


class StdoutError(RuntimeError):
    """stdout cannot be written (``broken_pipe``: its reader went away). Not an OSError, so that
    no handler of a file's errors takes it for its own file's."""

    def __init__(self, message: str, *, broken_pipe: bool = False):
        super().__init__(message)
        self.broken_pipe = broken_pipe


class _Stdout:
    """``sys.stdout`` while a command runs: a write or flush that fails raises ``StdoutError``
    naming stdout and the cause; everything else is the stream's own."""

    def __init__(self, stream: TextIO | None):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._call("write", text)

    def writelines(self, lines: list[str]) -> None:
        self._call("writelines", lines)

    def flush(self) -> None:
        self._call("flush")

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)

    def _call(self, name: str, *args: object):
        if self._stream is None:
            raise StdoutError(CLOSED)
        try:
            return getattr(self._stream, name)(*args)
        except BrokenPipeError:
            raise StdoutError("stdout: broken pipe", broken_pipe=True) from None
        except OSError as err:
            why = err.strerror or err
            raise StdoutError(f"cannot write to {_stdout_name(self._stream)}: {why}") from None


def _stdout_name(stream: TextIO) -> str:
    """'stdout (/path/it/goes/to)' where the system says, else 'stdout'."""
    from ._text import printable

    try:
        path = os.readlink(f"/proc/self/fd/{stream.fileno()}")
    except (AttributeError, OSError, ValueError):
        return "stdout"
    return f"stdout ({printable(path)})" if os.path.isabs(path) else "stdout"


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Exit status: 0 done; 2 a usage error, bad input, a model that cannot be loaded or a stdout that
    cannot be written (one line on stderr, ``selfattention: error: …``); 1 an unexpected failure
    (one line too; set SELFATTENTION_TRACEBACK=1 to see the traceback); 130 interrupted (Ctrl-C,
    at any moment); 141 stdout's reader went away (a broken pipe), quietly.
    """
    try:
        return _main(argv)
    except KeyboardInterrupt:
        say("selfattention: interrupted")
        return 130


def _main(argv: list[str] | None) -> int:
    from .errors import UserError

    _tolerant_streams()
    stdout = sys.stdout
    sys.stdout = _Stdout(stdout)  # type: ignore[assignment]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            try:
                if stdout is None:  # refused before any work: the result would go nowhere
                    raise StdoutError(CLOSED)
                status = _command(argv)
                sys.stdout.flush()  # what is still buffered fails here, said, not at exit
                return status
            except UserError as err:
                say(f"selfattention: error: {_one_line(err)}")
                return 2
            except StdoutError as err:
                if err.broken_pipe:
                    return BROKEN_PIPE
                say(f"selfattention: error: {_one_line(err)}")
                return 2
            except BrokenPipeError:  # a file written through to a pipe (--out /dev/stdout | head)
                return BROKEN_PIPE
            except Exception as err:
                return _unexpected(err)
    finally:
        sys.stdout = stdout


def _command(argv: list[str] | None) -> int:
    from .cli import COMMANDS, build_parser, check_texts

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2), already printed
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    check_texts(args)
    return COMMANDS[args.command](args)


def _unexpected(err: Exception) -> int:
    from ._text import printable

    if os.environ.get("SELFATTENTION_TRACEBACK"):
        raise err
    if isinstance(err, OSError) and err.filename is not None:  # a file named by the user
        say(f"selfattention: error: {printable(os.fsdecode(err.filename))}: {_one_line(err.strerror or err)}")
        return 2
    say(f"selfattention: error: unexpected {type(err).__name__}: {_one_line(err)} "
        "(set SELFATTENTION_TRACEBACK=1 for the traceback)")
    return 1


def say(line: str) -> None:
    """One line on stderr; nothing at all when stderr is closed or cannot be written (never on
    stdout instead)."""
    if sys.stderr is not None:
        try:
            print(line, file=sys.stderr)
        except (OSError, ValueError):
            pass


def _one_line(text: object) -> str:
    """A message as one line, with anything that could steer the terminal escaped."""
    from ._text import printable

    return printable(" ".join(str(text).split()))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ARG001
    """Python warnings as one line each, like the errors (not Python's two-line format)."""
    say(f"selfattention: warning: {_one_line(message)}")


def _tolerant_streams() -> None:
    """A terminal that cannot show a character (LANG=…ISO-8859-1 and an α) gets an escape, not a crash."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and getattr(stream, "errors", "") == "strict":
            stream.reconfigure(errors="backslashreplace")
