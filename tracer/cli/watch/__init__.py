"""`oomtrace watch`: follow a node's live events from its `GET /events` stream.

One line per event for people (coloured on a terminal, never when piped or when NO_COLOR is
set), or the events' JSON with --json. Speaks Server-Sent Events; when the connection drops
it reconnects with exponential backoff and resumes after the last event it saw
(Last-Event-ID), so nothing the tracer still keeps is missed, and says so on stderr when the
tracer no longer had some of what was missed. Messages about the connection go to stderr, so
stdout carries only events.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TextIO

from tracer import errors
from tracer.cli.watch.client import (
    DEFAULT_ADDRESS,
    OutputClosed,
    Watcher,
    WatchError,
    parse_endpoint,
    query_string,
)
from tracer.cli.watch.credentials import credentials, tls_context
from tracer.cli.watch.render import use_colour
from tracer.http.address import DEFAULT_PORT, is_loopback
from tracer.schema import KINDS


def _names(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",")]
    if any(not v for v in values):
        raise argparse.ArgumentTypeError(f"empty name in {text!r}")
    return values


def _kinds(text: str) -> list[str]:
    values = _names(text)
    for value in values:
        if value not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown event kind {value!r} (expected {', '.join(KINDS)})")
    return values


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1: {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "address",
        nargs="?",
        default=os.environ.get("OOMTRACE_WATCH_ADDRESS", DEFAULT_ADDRESS),
        help="the tracer's HTTP server (its --metrics-address): host:port, [ipv6]:port, host "
        f"(port {DEFAULT_PORT}) or http(s)://host:port[/prefix] (env OOMTRACE_WATCH_ADDRESS; "
        "default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print each event as one JSON line")
    parser.add_argument(
        "--kind",
        action="extend",
        type=_kinds,
        metavar="KIND[,KIND]",
        help=f"only these kinds ({', '.join(KINDS)}); repeatable",
    )
    parser.add_argument(
        "--min-kind",
        choices=KINDS,
        help="only kinds at least this severe: near_oom < memcg_oom < oom_kill",
    )
    for name in ("namespace", "pod", "vm"):
        parser.add_argument(
            f"--{name}",
            action="extend",
            type=_names,
            metavar=f"{name.upper()}[,{name.upper()}]",
            help=f"only events of this {name} (repeatable)",
        )
    parser.add_argument(
        "--since",
        metavar="TIME|ID",
        help="first replay the recent events the tracer still keeps from this RFC 3339 time or "
        "after this event id (0: all it keeps)",
    )
    parser.add_argument("--count", type=_count, metavar="N", help="exit after N events")
    credentials = parser.add_mutually_exclusive_group()
    credentials.add_argument(
        "--token-file",
        type=Path,
        default=os.environ.get("OOMTRACE_WATCH_TOKEN_FILE") or None,
        metavar="PATH",
        help="send this file's token as `Authorization: Bearer` (a tracer run with --http-auth; "
        "re-read at each reconnect; env OOMTRACE_WATCH_TOKEN_FILE)",
    )
    credentials.add_argument(
        "--kubeconfig",
        type=Path,
        metavar="PATH",
        help="send the bearer token of this kubeconfig's current user, as kubectl would (a tracer "
        "run with --http-auth kubernetes)",
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        default=os.environ.get("OOMTRACE_WATCH_CA_FILE") or None,
        metavar="PATH",
        help="https://: trust this PEM CA bundle for the tracer's certificate (default: the "
        "system's; env OOMTRACE_WATCH_CA_FILE)",
    )
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="auto (default): colour on a terminal unless NO_COLOR is set",
    )


def watch(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`oomtrace watch`: runs until interrupted (or --count events); bad input exits 2."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        endpoint = parse_endpoint(args.address)
        if args.since is not None and not args.since.strip():
            raise WatchError("--since: empty value")
        watcher = Watcher(
            endpoint,
            query_string(args),
            out,
            err,
            json_lines=args.json,
            colour=use_colour(args.color, out),
            since=args.since,
            count=args.count,
            token=credentials(args.token_file, args.kubeconfig),
            tls=tls_context(endpoint, args.ca_file),
        )
        if watcher.token is not None and endpoint.scheme == "http" and not is_loopback(endpoint.host):
            err.write(
                "watch: note: the bearer token goes over plain http; use https:// where the tracer has TLS\n"
            )
        return watcher.run()
    except WatchError as error:
        errors.report(str(error), err)
        return errors.EXIT_USAGE
    except OutputClosed:
        # Piped into `head` and so on: the reader has gone, which is not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 0


def command(args: argparse.Namespace) -> int:
    return watch(args)
