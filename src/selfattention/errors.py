"""The user-facing errors: mistakes in what was asked for, not bugs.

Every one is a ``ValueError`` whose message is one line naming the bad value and what was expected;
the command line prints it as ``selfattention: error: …`` and exits with status 2. Anything else
that escapes is a bug (exit 1).
"""

from __future__ import annotations


class UserError(ValueError):
    """Base of every error the command line reports as a user mistake (exit status 2)."""


class UsageError(UserError):
    """A mistake in the options or arguments (a bad combination, an unknown word, …)."""


class OptionError(UsageError):
    """An option the model cannot take, e.g. a layer or head out of its range."""


class InputError(UserError):
    """Input that cannot be used: texts that cannot be embedded, a file that cannot be read or written."""


class ModelError(UserError):
    """A model directory, config or weights file this project cannot run."""


__all__ = ["InputError", "ModelError", "OptionError", "UsageError", "UserError"]
