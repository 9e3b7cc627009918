"""The --loki-* flags of `oomtrace run` (each also OOMTRACE_LOKI_*), and the LokiConfig they make."""

from __future__ import annotations

import argparse
from pathlib import Path

from tracer.cli import flagtypes
from tracer.sinks.loki.config import ENCODINGS, PUSH_PATH, LokiConfig, parse_size


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The --loki-* flags of `oomtrace run`; each can also be set as OOMTRACE_LOKI_*."""
    group = parser.add_argument_group(
        "Loki", "push events straight to Loki (the alternative to a log shipper reading stdout)"
    )
    group.add_argument(
        "--loki-url",
        metavar="URL",
        default=flagtypes.env("LOKI_URL"),
        help=f"Loki base URL or push endpoint, e.g. http://loki:3100 ({PUSH_PATH} is added)",
    )
    group.add_argument(
        "--loki-tenant", metavar="TENANT", default=flagtypes.env("LOKI_TENANT"), help="X-Scope-OrgID header"
    )
    group.add_argument(
        "--loki-username", metavar="USER", default=flagtypes.env("LOKI_USERNAME"), help="basic auth user"
    )
    group.add_argument(
        "--loki-password",
        metavar="PASSWORD",
        default=flagtypes.env("LOKI_PASSWORD"),
        help="basic auth password; prefer env OOMTRACE_LOKI_PASSWORD (a command line is visible to ps)",
    )
    group.add_argument(
        "--loki-bearer-token",
        metavar="TOKEN",
        default=flagtypes.env("LOKI_BEARER_TOKEN"),
        help="bearer token; prefer env OOMTRACE_LOKI_BEARER_TOKEN",
    )
    group.add_argument(
        "--loki-ca-file",
        metavar="FILE",
        type=Path,
        default=flagtypes.env("LOKI_CA_FILE"),
        help="PEM CA bundle to verify Loki's certificate (default: the system's)",
    )
    group.add_argument(
        "--loki-insecure-skip-verify",
        action="store_true",
        default=flagtypes.env("LOKI_INSECURE_SKIP_VERIFY", "") == "1",
        help="do not verify Loki's TLS certificate (testing only)",
    )
    group.add_argument(
        "--loki-encoding",
        choices=ENCODINGS,
        default=flagtypes.env("LOKI_ENCODING", "protobuf"),
        help="protobuf (snappy-compressed, Loki's native push format) or json (default %(default)s)",
    )
    group.add_argument(
        "--loki-batch-bytes",
        metavar="BYTES",
        type=_size_arg,
        default=flagtypes.env("LOKI_BATCH_BYTES", "1MiB"),
        help="send a batch when it reaches this size (default 1MiB)",
    )
    group.add_argument(
        "--loki-batch-wait",
        metavar="SECONDS",
        type=flagtypes.positive_seconds,
        default=flagtypes.env("LOKI_BATCH_WAIT", "1.0"),
        help="...or when its oldest event is this many seconds old (default 1.0)",
    )
    group.add_argument(
        "--loki-buffer-bytes",
        metavar="BYTES",
        type=_size_arg,
        default=flagtypes.env("LOKI_BUFFER_BYTES", "8MiB"),
        help="at most this much waits for Loki; past it the oldest batches are dropped and counted "
        "(default 8MiB)",
    )


def config_from_args(args: argparse.Namespace) -> LokiConfig | None:
    """The sink's configuration, None without --loki-url; ValueError (one line) for bad input."""
    url = args.loki_url
    if not url:
        given = [
            flag
            for flag, value in (
                ("--loki-tenant", args.loki_tenant),
                ("--loki-username", args.loki_username),
                ("--loki-password", args.loki_password),
                ("--loki-bearer-token", args.loki_bearer_token),
                ("--loki-ca-file", args.loki_ca_file),
                ("--loki-insecure-skip-verify", args.loki_insecure_skip_verify),
            )
            if value
        ]
        if given:
            raise ValueError(f"{', '.join(given)} given without --loki-url")
        return None
    return LokiConfig(
        url=url,
        tenant=args.loki_tenant,
        username=args.loki_username,
        password=args.loki_password,
        bearer_token=args.loki_bearer_token,
        ca_file=Path(args.loki_ca_file) if args.loki_ca_file else None,
        insecure_skip_verify=bool(args.loki_insecure_skip_verify),
        encoding=args.loki_encoding,
        batch_bytes=int(args.loki_batch_bytes),
        batch_wait_s=float(args.loki_batch_wait),
        buffer_bytes=int(args.loki_buffer_bytes),
    )
