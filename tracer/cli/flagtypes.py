"""Parsers for command-line values and their OOMTRACE_* environment defaults, shared by every
module that adds flags (tracer/cli/__init__.py, tracer/sinks/loki/flags.py): one set of bounds
and messages."""

import argparse
import os
from collections.abc import Callable
from typing import Any

MAX_SECONDS = 1e6  # eleven days: longer than any interval or quiet period makes sense
MAX_COUNT = 1_000_000_000  # more events, clients or pages than this is a typo, and would overflow


def env(name: str, default: Any = None) -> Any:
    """The value of OOMTRACE_<name>, the default of flag --<name>."""
    return os.environ.get(f"OOMTRACE_{name}", default)


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    # Also bounds what reaches the BPF programs as nanoseconds in a __u64.
    if not value > 0:  # also NaN
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    if not value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SECONDS:g} seconds: {text!r}")
    return value


def count_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}: {text!r}")
        if value > MAX_COUNT:
            raise argparse.ArgumentTypeError(f"must be at most {MAX_COUNT}: {text!r}")
        return value

    return parse


def power_of_two_pages(text: str) -> int:
    """Ring-buffer size in pages: the kernel wants a power of two."""
    value: int = count_at_least(1)(text)
    if value & (value - 1) or value > 1 << 16:
        raise argparse.ArgumentTypeError(f"must be a power of two from 1 to 65536: {text!r}")
    return value


def nice_value(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not -20 <= value <= 19:
        raise argparse.ArgumentTypeError(f"must be from -20 to 19: {text!r}")
    return value
