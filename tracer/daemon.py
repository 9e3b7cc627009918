"""`oomtrace run`'s event loop: one source into one pipeline until stopped, with /metrics,
/healthz and /events served beside it.

One thread does the work: it polls the source (BPF ring buffer or /dev/kmsg), which publishes
each event through the pipeline as it arrives, and once per interval lets the source read its
counters. The HTTP server runs in its own daemon thread and only reads. What runs is built in
one place from the configuration: tracer/cli/run.py.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry

from tracer.http.address import is_loopback
from tracer.http.auth import Authorizer
from tracer.kernel.source import DEFAULT_RINGBUF_PAGES
from tracer.pipeline import Pipeline
from tracer.sinks.stream import DEFAULT_CLIENT_QUEUE, DEFAULT_MAX_CLIENTS, DEFAULT_REPLAY, StreamHub
from tracer.timefmt import WallClock

if TYPE_CHECKING:
    from tracer.http.tls import ServerTls


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
    ringbuf_pages: int = DEFAULT_RINGBUF_PAGES  # smaller only in tests
    http_auth: str = "none"  # --http-auth, for the log: tracer.http.auth.SCHEMES


def default_node_name() -> str:
    return os.environ.get("NODE_NAME") or socket.gethostname()


class Source(Protocol):
    """Where events come from: tracer.sources.bpf.BpfSource or tracer.sources.kmsg.source.KmsgSource."""

    status: str  # for /healthz: which tier each probe got

    def open(self) -> None:
        """Attaches (loads programs, opens the log); raises what the operator must fix."""

    def poll(self, timeout_ms: int) -> None:
        """Waits up to `timeout_ms` and publishes what arrived."""

    def every_interval(self) -> None:
        """Reads counters (near-OOM summaries, losses) and publishes what they say."""

    def close(self) -> None: ...


class _Stop:
    """Set by SIGTERM/SIGINT; the loop checks it between polls."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, _signum: int, _frame: Any) -> None:
        self.requested = True


class Daemon:
    def __init__(
        self,
        config: RunConfig,
        source: Source,
        pipeline: Pipeline,
        registry: CollectorRegistry,
        clock: WallClock,
        log: Any,
        stream: StreamHub | None = None,
        authorizer: Authorizer | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.pipeline = pipeline
        self.registry = registry
        self.clock = clock
        self.log = log
        self.stream = stream  # served at GET /events; also one of the pipeline's sinks
        self.authorizer = authorizer  # who may read /metrics and /events; None: anyone
        self.tls = tls
        self.attached = False
        self.last_loop = time.monotonic()
        self.stop = _Stop()

    def health(self) -> tuple[bool, str]:
        stalled = time.monotonic() - self.last_loop
        if not self.attached:
            return False, "probes not attached"
        if stalled > max(5.0, 5 * self.config.interval_s):
            return False, f"event loop stalled for {stalled:.1f}s"
        status = self.source.status
        return True, f"ok: {status}" if status else "ok"

    def run(self) -> int:
        from tracer.http.server import start_http_server

        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        http = None
        if self.config.metrics_address is not None:
            address = self.config.metrics_address
            http = start_http_server(
                address, self.registry, self.health, self.stream, authorizer=self.authorizer, tls=self.tls
            )
            auth = self.config.http_auth
            self.log.info(
                "serving /metrics and /healthz", address=address, port=http.port, auth=auth,
                tls=self.tls is not None,
            )  # fmt: skip
            if self.authorizer is None and not is_loopback(http.host):
                self.log.warning(
                    "/metrics and /events are open to anyone who can reach this address: "
                    "--http-auth token-file or kubernetes, or a loopback --metrics-address",
                    address=address,
                )
        try:
            self.pipeline.start()
            try:
                self.source.open()
                try:
                    self.attached = True
                    self.log.info("tracing", node=self.config.node)
                    self._loop()
                finally:
                    self.attached = False
                    self.source.close()
            finally:
                self.pipeline.close()
        finally:
            if http is not None:
                http.close()
        return 0

    def _loop(self) -> None:
        # What start-up built (bcc, the pipeline, its caches' first fill) lives as long as the
        # process: frozen, a full collection amid a storm walks only what events made since.
        gc.freeze()
        # Start-up (BTF parse, compile) may take seconds: the stall clock starts here.
        self.last_loop = time.monotonic()
        deadline = None if self.config.duration_s is None else self.last_loop + self.config.duration_s
        next_tick = time.monotonic() + self.config.interval_s
        while not (self.stop.requested or (deadline is not None and time.monotonic() >= deadline)):
            self.source.poll(100)
            self._flush()  # one write for what this poll delivered
            self.last_loop = now = time.monotonic()
            if now >= next_tick:
                self._every_interval()
                next_tick = now + self.config.interval_s
        self._every_interval()  # counts from the last partial interval are not lost on exit

    def _every_interval(self) -> None:
        self.clock.refresh()
        self.source.every_interval()
        self._flush()

    def _flush(self) -> None:
        try:
            self.pipeline.flush()
        except Exception as err:  # stdout gone or full: stop, as the loss would be silent
            self.log.error("cannot publish an event; stopping", error=str(err))
            raise
