"""Command line: `oomtrace run | probes | demo | watch`. Bad input is one line on stderr and exit 2."""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from tracer import __version__, errors
from tracer.cli import flagtypes
from tracer.http.address import DEFAULT_LISTEN


class UsageError(Exception):
    """Something the user can fix: printed as one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        errors.report(message)
        sys.exit(errors.EXIT_USAGE)


# Shared with the other modules that add flags (tracer/sinks/loki.py).
_env = flagtypes.env
_positive_float = flagtypes.positive_seconds
_int_at_least = flagtypes.count_at_least


def _power_of_two(text: str) -> int:
    """Ring-buffer size in pages: the kernel wants a power of two."""
    value: int = _int_at_least(1)(text)
    if value & (value - 1) or value > 1 << 16:
        raise argparse.ArgumentTypeError(f"must be a power of two from 1 to 65536: {text!r}")
    return value


def _nice(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not -20 <= value <= 19:
        raise argparse.ArgumentTypeError(f"must be from -20 to 19: {text!r}")
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
        default=_env("METRICS_ADDRESS", DEFAULT_LISTEN),
        help="host:port for /metrics, /healthz and /events; 'none' to disable "
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
    run.add_argument(
        "--nice",
        type=_nice,
        default=_env("NICE", None),
        help="run at this nice value (-20 to 19; below 0 needs CAP_SYS_NICE). In an OOM storm, "
        "reclaiming tasks fill every CPU and a tracer at the default priority waits behind them "
        "(docs/deploy.md, 'CPU priority'); default: as started",
    )
    run.add_argument("--dump-bpf", action="store_true", help=argparse.SUPPRESS)
    # Hidden: a smaller ring buffer makes overflow reachable in tests (tests/reliability).
    run.add_argument(
        "--ringbuf-pages", type=_power_of_two, default=_env("RINGBUF_PAGES", "64"), help=argparse.SUPPRESS
    )
    _add_attribution_flags(run)
    run.add_argument(
        "--stream-replay",
        type=_int_at_least(0),
        metavar="N",
        default=_env("STREAM_REPLAY", "1000"),
        help="GET /events: how many recent events are kept for clients that resume "
        "(Last-Event-ID, ?since=) (default %(default)s)",
    )
    run.add_argument(
        "--stream-max-clients",
        type=_int_at_least(1),
        metavar="N",
        default=_env("STREAM_MAX_CLIENTS", "16"),
        help="GET /events: concurrent clients; more are answered 503 (default %(default)s)",
    )
    run.add_argument(
        "--stream-client-queue",
        type=_int_at_least(1),
        metavar="N",
        default=_env("STREAM_CLIENT_QUEUE", "1000"),
        help="GET /events: events queued for one client; a client that falls this far behind is "
        "dropped and counted, never waited for (default %(default)s)",
    )

    from tracer.sinks.loki import add_arguments as add_loki_arguments

    add_loki_arguments(run)

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
    from tracer.cli.watch import add_arguments as add_watch_arguments

    add_watch_arguments(
        commands.add_parser(
            "watch",
            help="follow a node's live events (GET /events): one line per event, or --json",
            description="Follow the live event stream of an oomtrace on ADDRESS: one line per event "
            "(coloured on a terminal unless NO_COLOR is set), or JSON lines with --json. Reconnects "
            "with backoff and resumes after the last event seen (Last-Event-ID).",
        )
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


def _add_attribution_flags(parser: argparse.ArgumentParser) -> None:
    """Kubernetes names, VM attribution and overhead advice (tracer.kube, tracer.vm, tracer.overhead)."""
    from tracer.enrich import kube, overhead

    def version(text: str) -> tuple[int, int]:
        try:
            return overhead.parse_version(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    def allowlist(text: str) -> kube.Allowlist:
        try:
            return kube.Allowlist.parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    def timeout_ms(text: str) -> float:
        value = _positive_float(text)
        if value > 10_000:
            raise argparse.ArgumentTypeError(f"must be at most 10000 ms: {text!r}")
        return value

    group = parser.add_argument_group("Kubernetes and VM attribution (docs/attribution.md)")
    group.add_argument(
        "--kube",
        choices=("none", "kubelet", "apiserver"),
        default=_env("KUBE", "none"),
        help="where pod names come from: none (cgroup tags only; default), kubelet (this node's "
        "kubelet /pods) or apiserver (a watch of this node's pods) (env OOMTRACE_KUBE)",
    )
    group.add_argument(
        "--kubeconfig",
        type=Path,
        default=_env("KUBECONFIG", None),
        help="--kube apiserver outside a cluster: the kubeconfig to use (default: in-cluster "
        "service account, else $KUBECONFIG)",
    )
    group.add_argument(
        "--kubelet-url",
        default=_env("KUBELET_URL", kube.DEFAULT_KUBELET_URL),
        help="--kube kubelet: the kubelet's address (default %(default)s)",
    )
    group.add_argument(
        "--kubelet-ca",
        type=Path,
        default=_env("KUBELET_CA", None),
        help="--kube kubelet: CA bundle for the kubelet's serving certificate",
    )
    group.add_argument(
        "--kubelet-insecure-tls",
        action="store_true",
        default=_env("KUBELET_INSECURE_TLS", "") == "1",
        help="--kube kubelet: do not verify the kubelet's certificate (often self-signed)",
    )
    group.add_argument(
        "--label-allowlist",
        type=allowlist,
        default=_env("LABEL_ALLOWLIST", ",".join(kube.DEFAULT_ALLOWLIST)),
        metavar="KEYS",
        help="comma-separated pod label/annotation keys (globs allowed) copied into events "
        "(default %(default)s)",
    )
    group.add_argument(
        "--kube-deleted-grace",
        type=_positive_float,
        default=_env("KUBE_DELETED_GRACE", kube.DEFAULT_GRACE_S),
        metavar="SECONDS",
        help="keep naming a pod this long after it was deleted (default %(default)s)",
    )
    group.add_argument(
        "--enrich-timeout-ms",
        type=timeout_ms,
        default=_env("ENRICH_TIMEOUT_MS", kube.DEFAULT_TIMEOUT_S * 1000),
        metavar="MS",
        help="longest an event waits for pod metadata not yet known (default %(default)s)",
    )
    group.add_argument(
        "--kubevirt-version",
        type=version,
        default=_env("KUBEVIRT_VERSION", overhead.DEFAULT_KUBEVIRT_VERSION),
        help="KubeVirt release whose overhead formula applies (default %(default)s, as in Harvester 1.4)",
    )
    group.add_argument(
        "--vm-scan-interval",
        type=_positive_float,
        default=_env("VM_SCAN_INTERVAL", 2.0),
        metavar="SECONDS",
        help="how often new processes are checked for QEMU (default %(default)s)",
    )


def _attribution(args: argparse.Namespace, daemon: Any) -> Any:
    """Adds the attribution stages (docs/attribution.md) and starts their sources; returns a closer."""
    from tracer.enrich import kube, memsnap, overhead, vm

    memory_root, proc_root = Path(daemon.resolver.memory_root), daemon.config.proc_root
    failures = kube.enrichment_failures(daemon.registry)

    def complain(stage: str) -> Any:
        def on_error(message: str) -> None:
            failures.labels(stage, kube.ERROR).inc()
            daemon.log.error(message)

        return on_error

    def log(level: str, message: str, fields: dict[str, Any]) -> None:
        getattr(daemon.log, level)(message, **fields)

    if args.kube not in ("none", "kubelet", "apiserver"):  # argparse checks choices on the command line only
        raise UsageError(f"--kube (or OOMTRACE_KUBE) must be none, kubelet or apiserver, not {args.kube!r}")
    cache = kube.PodCache(grace_s=float(args.kube_deleted_grace))
    source: Any = None
    try:
        if args.kube == "kubelet":
            source = kube.KubeletSource(
                cache, args.label_allowlist, args.kubelet_url,
                ca_file=args.kubelet_ca, insecure=args.kubelet_insecure_tls, log=log,
            )  # fmt: skip
        elif args.kube == "apiserver":
            client = kube.api_client(args.kubeconfig)
            source = kube.ApiServerSource(cache, args.label_allowlist, client, daemon.config.node, log=log)
    except kube.KubeError as err:
        raise UsageError(str(err)) from None
    stage = kube.KubeStage(cache, source, float(args.enrich_timeout_ms) / 1000, failures) if source else None
    locator = vm.VmLocator(
        memory_root, proc_root, float(args.vm_scan_interval),
        on_found=lambda found: daemon.log.info(
            "vm found", pod_uid=found.pod_uid, vm=found.info.vm, pid=found.info.pid,
            guest_memory_bytes=found.info.guest_memory_bytes, vcpus=found.info.vcpus,
        ),
    )  # fmt: skip
    if stage is not None:
        daemon.add_stage(stage)
    daemon.add_stage(vm.VmStage(locator, proc_root, stage.pod_hint if stage else None, complain("vm")))
    daemon.add_stage(memsnap.SnapshotStage(memory_root, proc_root, on_error=complain("memsnap")))
    version, vm_info = args.kubevirt_version, locator.known
    daemon.add_stage(overhead.OverheadStage(memory_root, version, vm_info, complain("overhead"), proc_root))
    if source is not None:
        source.start()
    locator.start()

    def close() -> None:
        locator.close()
        if source is not None:
            source.close()

    return close


def set_nice(value: int) -> None:
    """This process's nice value, before it starts any thread: on Linux it is per thread, and
    threads inherit their creator's."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, value)
    except OSError as err:
        raise UsageError(
            f"--nice {value}: {err.strerror} (a nice value below 0 needs CAP_SYS_NICE)"
        ) from None


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
        stream_replay=getattr(args, "stream_replay", 1000),
        stream_max_clients=getattr(args, "stream_max_clients", 16),
        stream_client_queue=getattr(args, "stream_client_queue", 1000),
        ringbuf_pages=getattr(args, "ringbuf_pages", 64),
    )


def cmd_run(args: argparse.Namespace) -> int:
    if args.source not in ("bpf", "kmsg"):  # argparse checks choices on the command line only
        raise UsageError(f"--source (or OOMTRACE_SOURCE) must be bpf or kmsg, not {args.source!r}")
    if args.dump_bpf:
        print(dump_bpf(no_btf=args.no_btf, quiet_s=float(args.near_oom_quiet)))
        return 0
    if str(args.metrics_address).lower() != "none":
        from tracer.http.address import parse_address

        try:
            parse_address(args.metrics_address)
        except ValueError as err:
            raise UsageError(f"--metrics-address: {err}") from None
    from tracer.sinks import loki

    try:
        loki_config = loki.config_from_args(args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    _require_root()
    if args.nice is not None:
        set_nice(args.nice)
    from tracer.daemon import Daemon

    try:
        daemon = Daemon(_run_config(args))
    except ValueError as err:  # e.g. a --cgroup-root with no cgroup hierarchy: the user's to fix
        raise UsageError(str(err)) from None
    close_attribution = _attribution(args, daemon)  # may refuse its flags: before anything starts
    if loki_config is not None:
        daemon.add_sink(loki.LokiSink(loki_config, daemon.registry, daemon.log))
    try:
        return daemon.run()
    finally:
        close_attribution()


def dump_bpf(no_btf: bool, quiet_s: float) -> str:
    """The exact program text `run` would compile on this kernel."""
    from tracer.kernel import offsets, probes
    from tracer.kernel import source as bpf_source

    features = probes.detect(use_btf=not no_btf)
    plan = probes.plan(features)
    constants = offsets.kernel_constants(features.btf_data) if features.btf_data else {}
    return bpf_source.source(plan, bpf_source.defines(plan, features, constants, quiet_s))


def cmd_probes(args: argparse.Namespace) -> int:
    from tracer.kernel import probes
    from tracer.kernel.headers import HeadersError, find_headers

    features = probes.detect(use_btf=not args.no_btf)
    plan = probes.plan(features)
    try:
        tree = find_headers(features.release)
        where = {
            "running kernel": f"/lib/modules/{features.release}/build",
            "kheaders": "/sys/kernel/kheaders.tar.xz",
        }
        headers = f"{tree.origin} ({tree.path or where[tree.origin]})"
        if not tree.matching:
            headers += "; struct offsets from BTF" if features.btf else "; no BTF: tracepoint fields only"
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
    from tracer.cli.demo import run_demo

    if not 16 <= args.limit_mib <= 512:
        raise UsageError("--limit-mib must be between 16 and 512")
    return run_demo(_run_config(args, duration=60.0), args.limit_mib)


def cmd_watch(args: argparse.Namespace) -> int:
    from tracer.cli.watch import watch

    return watch(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"run": cmd_run, "probes": cmd_probes, "demo": cmd_demo, "watch": cmd_watch}
    from tracer.kernel.btf import BtfError
    from tracer.kernel.headers import HeadersError
    from tracer.kernel.loader import LoadError

    try:
        return handlers[args.command](args)
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
