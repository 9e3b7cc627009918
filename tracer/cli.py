"""Command line: `oomtrace run | probes | demo`. Bad input is one line on stderr and exit 2."""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from tracer import __version__

EXIT_USAGE = 2


class UsageError(Exception):
    """Something the user can fix: printed as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"oomtrace: error: {message}\n")
        sys.exit(EXIT_USAGE)


def _env(name: str, default: Any) -> Any:
    return os.environ.get(f"OOMTRACE_{name}", default)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="oomtrace",
        description="eBPF tracer for memory-cgroup OOMs, OOM kills and near-OOM charge failures.",
    )
    parser.add_argument("--version", action="version", version=f"oomtrace {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser(
        "run",
        help="trace this node: JSON events on stdout, Prometheus metrics on --metrics-address",
        description="Trace this node. Every flag can also be set as OOMTRACE_<FLAG> "
        "(e.g. OOMTRACE_INTERVAL=2).",
    )
    _add_tracing_flags(run)
    run.add_argument(
        "--metrics-address",
        default=_env("METRICS_ADDRESS", ":9700"),
        help="host:port for /metrics and /healthz; 'none' to disable "
        "(env OOMTRACE_METRICS_ADDRESS; default %(default)s)",
    )
    run.add_argument(
        "--source",
        choices=("bpf", "kmsg"),
        default=_env("SOURCE", "bpf"),
        help="bpf: kernel probes (default); kmsg: parse the kernel's OOM report from /dev/kmsg, "
        "a fallback when BPF is unavailable (env OOMTRACE_SOURCE)",
    )
    run.add_argument(
        "--duration",
        type=_positive_float,
        default=_env("DURATION", None),
        help="stop after this many seconds (default: run until SIGTERM/SIGINT)",
    )
    run.add_argument("--dump-bpf", action="store_true", help=argparse.SUPPRESS)

    show = commands.add_parser(
        "probes", help="print which tier each probe would use on this kernel, and why, without attaching"
    )
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.add_argument(
        "--no-btf",
        action="store_true",
        default=_env("NO_BTF", "") == "1",
        help="plan as if the kernel had no BTF",
    )

    demo = commands.add_parser(
        "demo",
        help="OOM a throwaway pod-shaped cgroup while tracing, and show near_oom → memcg_oom → oom_kill",
    )
    _add_tracing_flags(demo)
    demo.add_argument(
        "--limit-mib", type=int, default=64, help="memory limit of the demo cgroup (default %(default)s)"
    )
    return parser


def _add_tracing_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME") or _env("NODE_NAME", None),
        help="node name put on every event (env NODE_NAME, e.g. from the downward API; default: hostname)",
    )
    parser.add_argument(
        "--interval",
        type=_positive_float,
        default=_env("INTERVAL", 1.0),
        help="seconds between near_oom summaries (default %(default)s)",
    )
    parser.add_argument(
        "--near-oom-quiet",
        type=_positive_float,
        default=_env("NEAR_OOM_QUIET", 10.0),
        help="a cgroup's first charge failure after this many quiet seconds is sent at once "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--no-btf",
        action="store_true",
        default=_env("NO_BTF", "") == "1",
        help="do not read kernel structs through BTF: tracepoint fields only (env OOMTRACE_NO_BTF=1)",
    )
    parser.add_argument(
        "--cgroup-root",
        type=Path,
        default=Path(_env("CGROUP_ROOT", "/sys/fs/cgroup")),
        help="where cgroupfs is mounted (default %(default)s)",
    )
    parser.add_argument(
        "--headers-cache",
        type=Path,
        default=Path(_env("HEADERS_CACHE", "/var/cache/oomtrace")),
        help="where a merged kernel header tree for bcc is kept (default %(default)s)",
    )


def _require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("needs root (CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN) to load BPF programs")


def _run_config(args: argparse.Namespace, duration: float | None = None) -> Any:
    from tracer.daemon import RunConfig, default_node_name

    address = getattr(args, "metrics_address", "none")
    return RunConfig(
        node=args.node_name or default_node_name(),
        metrics_address=None if str(address).lower() == "none" else address,
        interval_s=float(args.interval),
        near_oom_quiet_s=float(args.near_oom_quiet),
        source=getattr(args, "source", "bpf"),
        use_btf=not args.no_btf,
        cgroup_root=args.cgroup_root,
        headers_cache=args.headers_cache,
        duration_s=duration if duration is not None else (float(args.duration) if args.duration else None),
    )


def cmd_run(args: argparse.Namespace) -> int:
    if args.dump_bpf:
        print(dump_bpf(no_btf=args.no_btf, quiet_s=float(args.near_oom_quiet)))
        return 0
    if str(args.metrics_address).lower() != "none":
        from tracer.metrics import parse_address

        try:
            parse_address(args.metrics_address)
        except ValueError as err:
            raise UsageError(f"--metrics-address: {err}") from None
    _require_root()
    from tracer.daemon import Daemon

    return Daemon(_run_config(args)).run()


def dump_bpf(no_btf: bool, quiet_s: float) -> str:
    """The exact program text `run` would compile on this kernel."""
    from tracer import bpf_source, offsets, probes
    from tracer.btf import Btf

    features = probes.detect(use_btf=not no_btf)
    plan = probes.plan(features)
    constants = offsets.kernel_constants(Btf.from_file()) if features.btf else {}
    return bpf_source.source(plan, bpf_source.defines(plan, features, constants, quiet_s))


def cmd_probes(args: argparse.Namespace) -> int:
    from tracer import probes
    from tracer.headers import HeadersError, find_headers

    features = probes.detect(use_btf=not args.no_btf)
    plan = probes.plan(features)
    try:
        tree = find_headers(features.release)
        headers = f"{tree.origin} ({tree.path or '/lib/modules/' + features.release + '/build'})"
    except HeadersError as err:
        headers = f"none: {err}"
    report = {
        "kernel": features.release,
        "btf": features.btf,
        "btf_error": features.btf_error,
        "headers": headers,
        "probes": [
            {"probe": c.probe, "tier": c.tier, "target": c.target or None, "why_not_better": c.reason or None}
            for c in plan.choices
        ],
        "notes": list(plan.notes),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"kernel   {features.release}")
    print(
        "btf      "
        + ("yes: struct offsets from /sys/kernel/btf/vmlinux" if features.btf else str(features.btf_error))
    )
    print(f"headers  {headers}")
    print()
    print(f"{'PROBE':<16}{'TIER':<13}TARGET")
    for c in plan.choices:
        print(f"{c.probe:<16}{c.tier:<13}{c.target or '-'}")
        if c.reason:
            print(f"{'':<16}why not better: {c.reason}")
    for note in plan.notes:
        print(f"\nnote: {note}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    _require_root()
    from tracer.demo import run_demo

    if not 16 <= args.limit_mib <= 512:
        raise UsageError("--limit-mib must be between 16 and 512")
    return run_demo(_run_config(args, duration=60.0), args.limit_mib)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"run": cmd_run, "probes": cmd_probes, "demo": cmd_demo}
    from tracer.btf import BtfError
    from tracer.headers import HeadersError
    from tracer.loader import LoadError

    try:
        return handlers[args.command](args)
    except (UsageError, LoadError, HeadersError, BtfError) as err:
        # Things the operator must fix (privileges, BPF support, headers): exit 2, one line.
        sys.stderr.write(f"oomtrace: error: {err}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # anything unexpected still ends as one line, not a traceback
        from tracer.errors import describe

        sys.stderr.write(f"oomtrace: error: {describe(err)}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
