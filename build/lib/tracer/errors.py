"""One line for any error that reaches the command line (OOMTRACE_DEBUG=1 adds the traceback)."""

import os
import traceback


def describe(err: BaseException) -> str:
    if os.environ.get("OOMTRACE_DEBUG") == "1":
        traceback.print_exception(err)
    if isinstance(err, OSError) and err.strerror:
        where = f" ({err.filename})" if err.filename else ""
        return f"{err.strerror}{where}"
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
