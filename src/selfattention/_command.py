"""What every command of ``selfattention`` shares, whatever it does: how it ends, and what it may
write. ``cli.main`` runs each command inside ``finish``.

- Done: exit 0. A user's mistake (``errors.UserError``): one line on stderr, ``selfattention:
  error: …``, exit 2. Anything else is a bug: one line too, exit 1 (SELFATTENTION_TRACEBACK=1
  shows the traceback).
- stdout that cannot be written — a full disk, an I/O error, a closed stdout — is one line naming
  stdout (and the file it goes to) and the cause, exit 2. A reader that went away (a broken pipe,
  ``selfattention explain … | head``) ends quietly with 141, 128 + SIGPIPE, as the shell's own
  tools do.
- Python warnings (e.g. a text cut to the model's length) are one line each, ``selfattention:
  warning: …``.
- An output never destroys what the command reads (``check_outputs``): a model's files, a run's
  checkpoints, the text read, stdin redirected from a file.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from collections.abc import Callable
from typing import TextIO

BROKEN_PIPE = 128 + signal.SIGPIPE  # the status of a shell tool whose reader went away
CLOSED = "stdout is closed, and the command prints its result there; redirect it to a file or to /dev/null"


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


def finish(command: Callable[[], int]) -> int:
    """Run ``command()`` (a command: its exit status) and end it as the module's docstring says;
    returns the exit status: 0 done; 2 a usage error, bad input, a model that cannot be loaded or a
    stdout that cannot be written; 1 an unexpected failure; 130 interrupted (Ctrl-C); 141 stdout's
    reader went away (a broken pipe), quietly."""
    try:
        return _finish(command)
    except KeyboardInterrupt:
        say("selfattention: interrupted")
        return 130


def _finish(command: Callable[[], int]) -> int:
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
                status = command()
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
        try:  # one write, the newline with it: torchrun's ranks share one stderr and must not interleave
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
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


# --- what a command may write ------------------------------------------------------------------


def model_read(name: str | None) -> dict[str, str]:
    """What ``--model NAME`` reads (None: the default), as ``check_outputs`` takes it: the model's
    folder, and a checkpoint's run folder (its other checkpoints, its metrics); nothing for toy."""
    from .models import DEFAULT_MODEL, PRETRAINED, display_name

    name = DEFAULT_MODEL if name is None else name
    if name in PRETRAINED:
        from .errors import ModelError
        from .models.pretrained import default_model_path

        try:
            path = str(default_model_path())
        except ModelError:  # said when it is loaded
            return {}
        return {path: f"the model {display_name(name)} ({path})"}
    if name == "toy" or not os.path.exists(name):
        return {}
    read = {name: f"--model {name}"}
    real = os.path.realpath(name)
    folder = os.path.dirname(real)
    if os.path.isfile(os.path.join(real, "state.json")) and os.path.basename(folder) == "checkpoints":
        run = os.path.dirname(folder)
        read[run] = f"the run of --model {name} ({run})"
    return read


def stdin_read() -> dict[str, str]:
    """stdin, for ``check_outputs``, when it is redirected from a file."""
    from ._io import stream_file

    path = stream_file(sys.stdin)
    return {path: f"stdin (read from {path})"} if path is not None else {}


def check_outputs(outputs: dict[str, str], read: dict[str, str]) -> None:
    """UsageError, before any work, when an output would destroy a file the command reads or
    another output. ``outputs``: option → path (``{"--out": "e.npy"}``); stdout joins them when it
    is redirected to a file. ``read``: path → how to name it (``{"in.txt": "--file in.txt"}``);
    a folder counts with everything in it (``_io.read_by_command``)."""
    from ._io import read_by_command, stream_file
    from .errors import UsageError

    named = [(f"{opt} {path}", path) for opt, path in outputs.items()]
    if (stdout := stream_file(sys.stdout)) is not None:
        named.append((f"stdout (redirected to {stdout})", stdout))
    for n, (label, path) in enumerate(named):
        hit = read_by_command(path, read)
        if hit is not None:
            folder = os.path.isdir(hit)
            fix = ("redirect it elsewhere" if label.startswith("stdout") else
                   "give a path outside it" if folder else "give another name")
            verb = "write into" if folder else "overwrite"
            raise UsageError(f"{label} would {verb} {read[hit]}, which this command reads; {fix}")
        same = read_by_command(path, [p for _, p in named[:n]])
        if same is not None:
            other = next(lab for lab, p in named if p == same)
            raise UsageError(f"{label} and {other} are the same file; give two names")
