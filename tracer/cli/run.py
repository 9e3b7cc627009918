"""`oomtrace run`: the composition root. Builds the one pipeline from the configuration —
source → resolve → enrich → sinks — and the daemon that runs it."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from prometheus_client import CollectorRegistry, disable_created_metrics

from tracer.daemon import Daemon, RunConfig, Source, default_node_name
from tracer.diagnostics import stderr_log
from tracer.errors import UsageError
from tracer.http.auth import Authorizer
from tracer.pipeline import Pipeline, Sink, Stage
from tracer.resolve.cgroups import CgroupResolver
from tracer.resolve.containerd import ContainerdTasks
from tracer.resolve.lineage import Lineage
from tracer.resolve.stage import ResolveStage
from tracer.sinks.event_json import EventJson
from tracer.sinks.metrics import Metrics
from tracer.sinks.stdout import StdoutSink
from tracer.sinks.stream import DEFAULT_CLIENT_QUEUE, DEFAULT_MAX_CLIENTS, DEFAULT_REPLAY, StreamHub
from tracer.sources.bpf import BpfConfig, BpfSource, Load, load_with_bcc
from tracer.sources.kmsg.source import KmsgSource
from tracer.timefmt import WallClock

if TYPE_CHECKING:
    from tracer.http.tls import ServerTls


def run_config(args: argparse.Namespace, duration: float | None = None) -> RunConfig:
    """The RunConfig of parsed `run` (or `demo`) flags."""
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
        stream_replay=getattr(args, "stream_replay", DEFAULT_REPLAY),
        stream_max_clients=getattr(args, "stream_max_clients", DEFAULT_MAX_CLIENTS),
        stream_client_queue=getattr(args, "stream_client_queue", DEFAULT_CLIENT_QUEUE),
        ringbuf_pages=getattr(args, "ringbuf_pages", RunConfig.ringbuf_pages),
        http_auth=getattr(args, "http_auth", RunConfig.http_auth),
    )


def command(args: argparse.Namespace) -> int:
    if args.source not in ("bpf", "kmsg"):  # argparse checks choices on the command line only
        raise UsageError(f"--source (or OOMTRACE_SOURCE) must be bpf or kmsg, not {args.source!r}")
    if args.dump_bpf:
        from tracer.cli.probes import dump_bpf

        print(dump_bpf(no_btf=args.no_btf, quiet_s=float(args.near_oom_quiet)))
        return 0
    if str(args.metrics_address).lower() != "none":
        from tracer.http.address import parse_address

        try:
            parse_address(args.metrics_address)
        except ValueError as err:
            raise UsageError(f"--metrics-address: {err}") from None
    daemon = build_daemon(run_config(args), args)  # checks every flag; starts nothing
    require_root()
    if args.nice is not None:
        set_nice(args.nice)
    return daemon.run()


def build_daemon(
    config: RunConfig,
    args: argparse.Namespace,
    stdout: TextIO | None = None,
    load: Load = load_with_bcc,
    attribution: bool = True,
) -> Daemon:
    """The daemon `oomtrace run` runs: the one place the pipeline is put together.

    Every flag is checked here and nothing is started (no thread, no probe: Daemon.run starts
    them); a bad flag raises UsageError. `stdout` and `load` stand in for the process's stdout
    and for bcc in tests and benchmarks; `attribution=False` leaves out the stages after the cgroup
    tags (the pipeline benchmark's baseline).
    """
    from tracer.sinks import loki

    try:
        loki_config = loki.config_from_args(args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    log = stderr_log()
    disable_created_metrics()  # type: ignore[no-untyped-call]  # halves the series count; nobody queries *_created
    registry = CollectorRegistry()
    metrics = Metrics(registry, kernel=os.uname().release)
    try:
        resolver = CgroupResolver(config.cgroup_root)
    except ValueError as err:  # e.g. a --cgroup-root with no cgroup hierarchy: the user's to fix
        raise UsageError(str(err)) from None
    clock = WallClock()
    stages: list[Stage] = [ResolveStage(resolver, config.node, clock, ContainerdTasks().tags)]
    event_sinks: list[Sink] = []
    if attribution:
        enrich, event_sinks = attribution_stages(args, config, Path(resolver.memory_root), registry, log)
        stages += enrich
    render = EventJson()
    sinks: list[Sink] = [StdoutSink(stdout, render), metrics]
    # The live stream (GET /events): a sink the HTTP server serves; none without a server.
    stream = None
    if config.metrics_address is not None:
        stream = StreamHub(
            registry, config.stream_replay, config.stream_max_clients, config.stream_client_queue,
            render=render,
        )
        sinks.append(stream)
    if loki_config is not None:
        sinks.append(loki.LokiSink(loki_config, registry, log))
    sinks += event_sinks  # last: the stdout line never waits for the API server

    def on_close_error(part: str, err: Exception) -> None:
        log.error("did not close cleanly", part=part, error=str(err))

    pipeline = Pipeline(stages, sinks, on_close_error)
    source: Source
    if config.source == "kmsg":
        source = KmsgSource(pipeline.publish, metrics, log)
    else:
        bpf = BpfConfig(
            proc_root=config.proc_root,
            sys_root=config.sys_root,
            use_btf=config.use_btf,
            headers_cache=config.headers_cache,
            near_oom_quiet_s=config.near_oom_quiet_s,
            interval_s=config.interval_s,
            ringbuf_pages=config.ringbuf_pages,
        )
        lineage = Lineage(resolver.path)
        source = BpfSource(
            bpf, pipeline.publish, metrics, log, load, flush=pipeline.flush, overtakes=lineage.overtakes
        )
    authorizer, tls = http_access(args, config, registry) if config.metrics_address else (None, None)
    return Daemon(config, source, pipeline, registry, clock, log, stream, authorizer, tls)


def http_access(
    args: argparse.Namespace, config: RunConfig, registry: CollectorRegistry
) -> tuple[Authorizer | None, ServerTls | None]:
    """Who may read /metrics and /events (--http-auth), and the TLS pair if one is given."""
    from tracer.http import auth

    scheme = getattr(args, "http_auth", auth.NONE)
    token_file = getattr(args, "http_token_file", None)
    if scheme not in auth.SCHEMES:  # argparse checks choices on the command line only
        choices = ", ".join(auth.SCHEMES)
        raise UsageError(f"--http-auth (or OOMTRACE_HTTP_AUTH) must be one of {choices}, not {scheme!r}")
    if (scheme == auth.TOKEN_FILE) != (token_file is not None):
        raise UsageError("--http-token-file goes with --http-auth token-file, and only with it")
    inner: Authorizer | None = None
    if token_file is not None:  # the scheme is token-file: checked above
        try:
            inner = auth.TokenFileAuth(token_file)
        except ValueError as err:
            raise UsageError(str(err)) from None
    elif scheme == auth.KUBERNETES:
        from tracer.enrich import kube

        try:
            client = kube.api_client(args.kubeconfig)
        except kube.KubeError as err:
            raise UsageError(f"--http-auth kubernetes: {err}") from None
        inner = auth.KubernetesAuth(auth.ApiReviews(client))
    cert, key = getattr(args, "http_tls_cert", None), getattr(args, "http_tls_key", None)
    tls = None
    if (cert is None) != (key is None):
        raise UsageError("--http-tls-cert and --http-tls-key go together")
    if cert is not None and key is not None:
        from tracer.http.tls import ServerTls

        try:
            tls = ServerTls(cert, key)
        except ValueError as err:
            raise UsageError(str(err)) from None
    return (auth.Counted(inner, registry) if inner is not None else None), tls


def set_nice(value: int) -> None:
    """This process's nice value, before it starts any thread: on Linux it is per thread, and
    threads inherit their creator's."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, value)
    except OSError as err:
        raise UsageError(
            f"--nice {value}: {err.strerror} (a nice value below 0 needs CAP_SYS_NICE)"
        ) from None


def require_root() -> None:
    if os.geteuid() != 0:
        raise UsageError("needs root (CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN) to load BPF programs")


def attribution_stages(
    args: argparse.Namespace, config: RunConfig, memory_root: Path, registry: CollectorRegistry, log: Any
) -> tuple[list[Stage], list[Sink]]:
    """Kubernetes names, VM attribution, the memory snapshot and overhead advice (docs/attribution.md),
    in that order: each may read what the ones before it added. And, with --kube-events, the sink
    that posts Kubernetes Events through the same API client."""
    from tracer.enrich import kube, memsnap, overhead, vm
    from tracer.enrich.failures import ERROR, enrichment_failures

    proc_root = config.proc_root
    failures = enrichment_failures(registry)

    def complain(stage: str) -> Any:
        def on_error(message: str) -> None:
            failures.labels(stage, ERROR).inc()
            log.error(message)

        return on_error

    def log_to(level: str, message: str, fields: dict[str, Any]) -> None:
        getattr(log, level)(message, **fields)

    if args.kube not in ("none", "kubelet", "apiserver"):  # argparse checks choices on the command line only
        raise UsageError(f"--kube (or OOMTRACE_KUBE) must be none, kubelet or apiserver, not {args.kube!r}")
    if args.kube_events and args.kube != "apiserver":
        raise UsageError("--kube-events (OOMTRACE_KUBE_EVENTS) needs --kube apiserver: Events go there")
    sinks: list[Sink] = []
    cache = kube.PodCache(grace_s=float(args.kube_deleted_grace))
    source: Any = None
    try:
        if args.kube == "kubelet":
            source = kube.KubeletSource(
                cache, args.label_allowlist, args.kubelet_url,
                ca_file=args.kubelet_ca, insecure=args.kubelet_insecure_tls, log=log_to,
            )  # fmt: skip
        elif args.kube == "apiserver":
            client = kube.api_client(args.kubeconfig)
            source = kube.ApiServerSource(cache, args.label_allowlist, client, config.node, log=log_to)
            if args.kube_events:
                from tracer.sinks import kube_events

                planner = kube_events.EventPlanner(config.node)
                writer = kube_events.ApiEventWriter(client)
                sinks.append(kube_events.KubeEventsSink(planner, writer, registry, log_to))
    except kube.KubeError as err:
        raise UsageError(str(err)) from None
    stages: list[Stage] = []
    pods = kube.KubeStage(cache, source, float(args.enrich_timeout_ms) / 1000, failures) if source else None
    if pods is not None:
        stages.append(pods)
    def vm_found(found: vm.FoundVm) -> None:
        machine = found.key.removeprefix("machine/") if found.key.startswith("machine/") else None
        who = {"machine": machine} if machine is not None else {"pod_uid": found.key}
        log.info(
            "vm found", vm=found.info.vm or found.info.guest_name, **who, pid=found.info.pid,
            guest_memory_bytes=found.info.guest_memory_bytes, vcpus=found.info.vcpus,
        )  # fmt: skip

    locator = vm.VmLocator(memory_root, proc_root, float(args.vm_scan_interval), on_found=vm_found)
    stages.append(vm.VmStage(locator, proc_root, pods.pod_hint if pods else None, complain("vm")))
    stages.append(memsnap.SnapshotStage(memory_root, proc_root, on_error=complain("memsnap")))
    version, vm_info = args.kubevirt_version, locator.known
    stages.append(overhead.OverheadStage(memory_root, version, vm_info, complain("overhead"), proc_root))
    return stages, sinks
