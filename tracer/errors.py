"""What the command line says when something goes wrong: exit codes and the one-line error."""

import os
import sys
import traceback
from typing import Final, TextIO

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1  # something unexpected: a bug, or the machine failing under us
EXIT_USAGE: Final = 2  # the operator's to fix: flags, privileges, BPF support, headers
EXIT_INTERRUPTED: Final = 130  # SIGINT (128 + 2), as shells report it


class UsageError(Exception):
    """Something the operator can fix (a flag, a privilege, the environment): one line, exit 2."""


def report(message: str, stream: TextIO | None = None) -> None:
    """The one line every error that reaches the command line is printed as."""
    (stream or sys.stderr).write(f"oomtrace: error: {message}\n")


def describe(err: BaseException) -> str:
    """An unexpected exception as one line (OOMTRACE_DEBUG=1 adds the traceback)."""
    if os.environ.get("OOMTRACE_DEBUG") == "1":
        traceback.print_exception(err)
    if isinstance(err, OSError) and err.strerror:
        where = f" ({err.filename})" if err.filename else ""
        return f"{err.strerror}{where}"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
