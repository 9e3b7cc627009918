"""Command line: `oomtrace run | probes | demo | watch`. Bad input is one line on stderr and exit 2."""

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from tracer import errors
from tracer.cli.flags import build_parser

# Each command's module, imported only when it runs: `watch` needs none of the tracer.
_COMMANDS = {
    "run": "tracer.cli.run",
    "probes": "tracer.cli.probes",
    "demo": "tracer.cli.demo",
    "watch": "tracer.cli.watch",
}


def _command(name: str) -> Callable[[argparse.Namespace], int]:
    handler: Callable[[argparse.Namespace], int] = importlib.import_module(_COMMANDS[name]).command
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tracer.errors import UsageError
    from tracer.kernel.btf import BtfError
    from tracer.kernel.headers import HeadersError
    from tracer.kernel.loader import LoadError

    try:
        return _command(args.command)(args)
    except (UsageError, LoadError, HeadersError, BtfError) as err:
        # Things the operator must fix (privileges, BPF support, headers): exit 2, one line.
        errors.report(str(err))
        return errors.EXIT_USAGE
    except KeyboardInterrupt:
        return errors.EXIT_INTERRUPTED
    except Exception as err:  # anything unexpected still ends as one line, not a traceback
        errors.report(errors.describe(err))
        return errors.EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
