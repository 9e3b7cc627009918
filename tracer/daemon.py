"""`oomtrace run`: wires kernel → decode → resolve cgroup → tags → stdout and /metrics.

One thread does the work: it polls the ring buffer (records arrive through a callback),
and once per interval reads the near-OOM counters and the loss counters. The HTTP server
runs in its own daemon thread and only reads.
"""

import os
import resource
import select
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, disable_created_metrics

from tracer import schema
from tracer.decode import DecodeError, Decoder
from tracer.kernel import probes
from tracer.resolve.cgroups import CgroupResolver
from tracer.resolve.stage import Enricher, WallClock
from tracer.sinks.metrics import HttpServer, Metrics, start_http_server
from tracer.sinks.stdout import EventWriter, diagnostics
from tracer.sinks.stream import DEFAULT_CLIENT_QUEUE, DEFAULT_MAX_CLIENTS, DEFAULT_REPLAY, StreamHub
from tracer.sources.near_oom import NearOomSummarizer

# An enrichment step: takes an event, returns it with more fields (never fewer).
Stage = Callable[[dict[str, Any]], dict[str, Any]]


class Sink(Protocol):
    """A consumer of finished events. write() must not block the event loop."""

    def write(self, event: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RunConfig:
    node: str
    metrics_address: str | None  # None: no HTTP server
    interval_s: float
    near_oom_quiet_s: float
    source: str  # "bpf" or "kmsg"
    use_btf: bool
    cgroup_root: Path
    headers_cache: Path
    duration_s: float | None  # stop after this long (tests, demos); None: until signalled
    proc_root: Path = Path("/proc")
    sys_root: Path = Path("/sys")
    stream_replay: int = DEFAULT_REPLAY  # events kept for /events clients that resume
    stream_max_clients: int = DEFAULT_MAX_CLIENTS
    stream_client_queue: int = DEFAULT_CLIENT_QUEUE  # events queued per /events client before it is dropped
    ringbuf_pages: int = 64  # size of the events ring buffer (a power of two); smaller only in tests


def default_node_name() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname()


class _Stop:
    """Set by SIGTERM/SIGINT; the loop checks it between polls."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, _signum: int, _frame: Any) -> None:
        self.requested = True


class Daemon:
    def __init__(self, config: RunConfig, writer: EventWriter | None = None) -> None:
        self.config = config
        self.log = diagnostics()
        self.writer = writer or EventWriter()
        disable_created_metrics()  # type: ignore[no-untyped-call]  # halves the series count; nobody queries *_created
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry, kernel=os.uname().release)
        self.clock = WallClock()
        self.resolver = CgroupResolver(config.cgroup_root)
        self.enricher = Enricher(self.resolver, config.node, self.clock)
        self.attached = False
        self.status = ""  # which tier each probe got and which headers bcc compiled against
        self.last_loop = time.monotonic()
        self.stop = _Stop()
        self._lost_seen: dict[str, int] = {}
        self.stages: list[Stage] = []
        self.sinks: list[Sink] = []
        self._http: HttpServer | None = None
        # The live stream (GET /events): a sink the HTTP server serves; none without a server.
        self.stream: StreamHub | None = None
        if config.metrics_address is not None:
            self.stream = StreamHub(
                self.registry, config.stream_replay, config.stream_max_clients, config.stream_client_queue
            )
            self.add_sink(self.stream)

    def health(self) -> tuple[bool, str]:
        stalled = time.monotonic() - self.last_loop
        if not self.attached:
            return False, "probes not attached"
        if stalled > max(5.0, 5 * self.config.interval_s):
            return False, f"event loop stalled for {stalled:.1f}s"
        return True, f"ok: {self.status}" if self.status else "ok"

    def add_stage(self, stage: Stage) -> None:
        """An enrichment step after the cgroup tags (e.g. Kubernetes names, VM attribution)."""
        self.stages.append(stage)

    def add_sink(self, sink: Sink) -> None:
        """Another consumer of finished events (e.g. the live stream, Loki)."""
        self.sinks.append(sink)

    def publish(self, event: dict[str, Any]) -> None:
        """kernel → decode (done) → cgroup path and tags → stages → stdout, metrics, sinks."""
        event = self.enricher.enrich(event)
        for stage in self.stages:
            event = stage(event)
        self.writer.write(event)
        self.metrics.observe(event)
        for sink in self.sinks:
            sink.write(event)

    def _close_sinks(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as err:  # a sink failing to close must not hide the others
                self.log.error("sink did not close cleanly", sink=type(sink).__name__, error=str(err))

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        if self.config.metrics_address is not None:
            self._http = start_http_server(
                self.config.metrics_address, self.registry, self.health, self.stream
            )
            self.log.info(
                "serving /metrics and /healthz", address=self.config.metrics_address, port=self._http.port
            )
        try:
            if self.config.source == "kmsg":
                return self._run_kmsg()
            return self._run_bpf()
        finally:
            self._close_sinks()
            if self._http is not None:
                self._http.close()

    def _deadline(self) -> float | None:
        return None if self.config.duration_s is None else time.monotonic() + self.config.duration_s

    def _should_stop(self, deadline: float | None) -> bool:
        return self.stop.requested or (deadline is not None and time.monotonic() >= deadline)

    def _run_bpf(self) -> int:
        from tracer.kernel import loader, offsets
        from tracer.kernel.headers import find_headers

        cfg = self.config
        self._ensure_tracefs()
        features = probes.detect(cfg.proc_root, cfg.sys_root, use_btf=cfg.use_btf)
        plan = probes.plan(features)
        for note in plan.notes:
            self.log.warning(note)
        btf = features.btf_data
        constants = offsets.kernel_constants(btf) if btf else {}
        decoder = Decoder(resource.getpagesize(), offsets.constraint_names(btf))
        headers = find_headers(features.release, cache_dir=cfg.headers_cache)
        self.log.info(
            "compiling BPF programs", headers=str(headers.path or "running kernel"), origin=headers.origin
        )

        failures: list[Exception] = []

        def on_record(data: bytes) -> None:
            if failures:
                return
            try:
                event = decoder.decode(data)
            except DecodeError as err:
                self.metrics.lost("decode_error", 1)
                self.log.error("undecodable record", error=str(err))
                return
            try:
                self.publish(event)
            except Exception as err:  # bcc would print it and go on dropping every event: stop instead
                self.log.error("cannot publish an event; stopping", error=str(err))
                failures.append(err)
                self.stop.requested = True

        tracer = loader.load(
            plan,
            features,
            constants,
            headers,
            on_record,
            cfg.near_oom_quiet_s,
            lambda m: self.log.warning(m),
            ringbuf_pages=cfg.ringbuf_pages,
        )
        try:
            self.attached = True
            self.last_loop = time.monotonic()
            self.metrics.set_probes((c.probe, c.tier, c.target or "-") for c in tracer.plan.choices)
            self.metrics.set_headers(headers.origin, btf=tracer.plan.btf)
            tiers = " ".join(f"{c.probe}={c.tier}" for c in tracer.plan.choices)
            offsets_from = "BTF" if tracer.plan.btf else "none (tracepoint fields only)"
            self.status = f"{tiers}; headers: {headers.origin}; struct offsets: {offsets_from}"
            for choice in tracer.plan.choices:
                self.log.info(
                    "probe",
                    probe=choice.probe,
                    tier=choice.tier,
                    target=choice.target or None,
                    why_not_better=choice.reason or None,
                )
            summarizer = NearOomSummarizer(
                decoder,
                tracer.plan.tier(probes.NEAR_OOM),
                charge_failures_known=tracer.plan.tier(probes.CHARGE_FAILURE) != schema.UNAVAILABLE,
            )
            memcg_known = tracer.plan.btf or features.cgroup2_memory
            self.resolver.rescan()
            self.log.info("tracing", node=cfg.node)
            self._loop(
                tracer.poll,
                lambda: self._interval_bpf(tracer, summarizer, memcg_known),
            )
            if failures:
                raise failures[0]
        finally:
            self.attached = False
            tracer.close()
        self.log.info("stopped; probes detached")
        return 0

    def _ensure_tracefs(self) -> None:
        """Tracepoint formats live in tracefs, which some hosts do not mount at boot."""
        tracing = self.config.sys_root / "kernel/tracing"
        if (tracing / "events").is_dir() or (self.config.sys_root / "kernel/debug/tracing/events").is_dir():
            return
        result = subprocess.run(
            ["mount", "-t", "tracefs", "nodev", str(tracing)], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            self.log.info("mounted tracefs", path=str(tracing))
        else:
            self.log.warning("tracefs is not mounted and mounting it failed", error=result.stderr.strip())

    def _loop(self, poll: Callable[[int], None], every_interval: Callable[[], None]) -> None:
        # Start-up (BTF parse, compile) may take seconds: the stall clock starts here.
        self.last_loop = time.monotonic()
        deadline = self._deadline()
        next_tick = time.monotonic() + self.config.interval_s
        while not self._should_stop(deadline):
            poll(100)
            self.last_loop = now = time.monotonic()
            if now >= next_tick:
                every_interval()
                next_tick = now + self.config.interval_s
        every_interval()  # counts from the last partial interval are not lost on exit

    def _interval_bpf(self, tracer: Any, summarizer: NearOomSummarizer, memcg_known: bool) -> None:
        self.clock.refresh()
        stats = tracer.near_oom_stats()
        events, stale = summarizer.summarize(stats, time.monotonic_ns(), self.config.interval_s, memcg_known)
        # A summary per cgroup that reclaimed: with hundreds of them this burst takes
        # milliseconds, and a kill that arrives meanwhile must not wait behind it.
        for event in events:
            tracer.consume()
            self.publish(event)
        if stale:
            tracer.forget_near_oom(stale)
        for reason, total in tracer.lost().items():
            new = total - self._lost_seen.get(reason, 0)
            if new > 0:
                self.metrics.lost(reason, new)
                self.log.warning("events lost in the kernel", reason=reason, count=new)
            self._lost_seen[reason] = total

    def _run_kmsg(self) -> int:
        from tracer.sources.kmsg import KmsgReader, OomReportParser, printk_offset_ns

        parser = OomReportParser()
        # /dev/kmsg stamps records with the printk clock, not CLOCK_MONOTONIC: calibrated
        # here so ktime_ns means the same in every source.
        offset_ns = printk_offset_ns()
        with KmsgReader() as reader:
            self.attached = True
            self.last_loop = time.monotonic()
            self.metrics.set_probes([("oom_report", "kmsg", "/dev/kmsg")])
            self.log.info("tracing the kernel log (no BPF)", printk_offset_ns=offset_ns)
            self.log.info("tracing", node=self.config.node)
            lost_seen = 0

            def poll(timeout_ms: int) -> None:
                select.select([reader.fileno()], [], [], timeout_ms / 1000)
                for _seq, ts_ns, message in reader.read_available():
                    for event in parser.feed(message, ts_ns - offset_ns):
                        self.publish(event)

            def every_interval() -> None:
                nonlocal lost_seen
                self.clock.refresh()
                if reader.lost_records > lost_seen:
                    self.metrics.lost("kmsg_overwritten", reader.lost_records - lost_seen)
                    lost_seen = reader.lost_records

            try:
                self._loop(poll, every_interval)
            finally:
                self.attached = False
        return 0
