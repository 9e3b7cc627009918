"""Prometheus metrics for oomtrace events, and the HTTP server for /metrics, /healthz and /events.

Metrics go into a registry passed in by the caller (never the process-wide default), so each
test builds its own. Labels are bounded: the Kubernetes/VM names an enrichment step may add to
an event, never a pid, uid or cgroup id.
"""

from __future__ import annotations

import errno
import http.client
import io
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import choose_encoder

from tracer import __version__
from tracer.http.address import parse_address
from tracer.schema import (
    FIRST,
    KINDS,
    KMSG,
    LOSS_REASONS,
    MEMCG_OOM,
    NEAR_OOM,
    NEAR_OOM_PHASES,
    OOM_KILL,
    PROBE_TIERS,
    UNAVAILABLE,
)
from tracer.sinks.stream import EventsEndpoint, StreamHub

# Label names of every per-event counter; values come from enrichment keys of the same name.
LABELS: Final = ("namespace", "pod", "container", "vm")

# What oomtrace_probe_info's tier label may say: a probe tier, unavailable, or the kernel log.
INFO_TIERS: Final = (*PROBE_TIERS, UNAVAILABLE, KMSG)

# near_oom fields summed into counters, with the factor that converts them to the metric's unit.
_NEAR_OOM_AMOUNTS: Final = (
    ("reclaim_calls", 1.0),
    ("charge_failures", 1.0),
    ("reclaim_time_ns", 1e-9),
    ("reclaimed_bytes", 1.0),
)


class Metrics:
    """Counters and gauges fed by the event pipeline, registered in `registry`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        kernel: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, LABELS, registry=registry)

        self._memcg_ooms = counter("oomtrace_memcg_ooms_total", "Memory cgroup OOMs (OOM killer invoked).")
        self._oom_kills = counter("oomtrace_oom_kills_total", "Tasks killed by the OOM killer.")
        self._near_oom_events = counter(
            "oomtrace_near_oom_events_total", "Cgroups entering near-OOM (first charge failure after quiet)."
        )
        self._near_oom = {
            "reclaim_calls": counter(
                "oomtrace_near_oom_reclaims_total", "Memcg reclaims after a charge failed at the limit."
            ),
            "charge_failures": counter(
                "oomtrace_near_oom_charge_failures_total", "Charges that failed for good at the limit."
            ),
            "reclaim_time_ns": counter(
                "oomtrace_near_oom_reclaim_seconds_total", "Time spent in memcg reclaim near OOM."
            ),
            "reclaimed_bytes": counter(
                "oomtrace_near_oom_reclaimed_bytes_total", "Bytes reclaimed by memcg reclaim near OOM."
            ),
        }
        self._events = Counter(
            "oomtrace_events_total", "Events emitted, by kind.", ["event"], registry=registry
        )
        self._lost = Counter(
            "oomtrace_events_lost_total",
            "Events lost before they were emitted.",
            ["reason"],
            registry=registry,
        )
        # A VM pod's memory outside guest RAM, against what its limit leaves for it, as of its
        # last event with an overhead analysis (tracer/enrich/overhead.py).
        self._vm_non_guest = Gauge(
            "oomtrace_vm_non_guest_usage_bytes",
            "A VM pod's memory usage minus its guest RAM, at its last analysed event.",
            list(LABELS),
            registry=registry,
        )
        self._vm_budget = Gauge(
            "oomtrace_vm_overhead_budget_bytes",
            "What a VM pod's memory limit leaves beyond guest RAM (limit - guest memory).",
            list(LABELS),
            registry=registry,
        )
        self._headers_info = Gauge(
            "oomtrace_kernel_headers_info",
            "The header tree bcc compiled against (running kernel, kheaders, BCC_KERNEL_SOURCE, "
            "foreign <version>) and whether kernel struct offsets come from BTF.",
            ["origin", "btf"],
            registry=registry,
        )
        self._last_event = Gauge(
            "oomtrace_last_event_timestamp_seconds",
            "Unix time at which the last event was observed.",
            registry=registry,
        )
        self._probe_info = Gauge(
            "oomtrace_probe_info",
            "Attached probes: the tier each one runs on and its kernel target.",
            ["probe", "tier", "target"],
            registry=registry,
        )
        self._probes: set[tuple[str, str, str]] = set()
        build_info = Gauge(
            "oomtrace_build_info",
            "oomtrace version and running kernel.",
            ["version", "kernel"],
            registry=registry,
        )
        build_info.labels(__version__, kernel).set(1)

        # Series with known label values exist from the start, so rate() and absent() work before
        # the first event or loss.
        for kind in KINDS:
            self._events.labels(kind)
        for reason in LOSS_REASONS:
            self._lost.labels(reason)

    def observe(self, event: Mapping[str, Any]) -> None:
        """Count one event of tracer.schema; raise ValueError (counting nothing) if it is malformed."""
        kind = event.get("event")
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        amounts: list[tuple[Counter, float]] = []
        if kind == NEAR_OOM:
            phase = event.get("phase")
            if phase not in NEAR_OOM_PHASES:
                raise ValueError(f"unknown near_oom phase {phase!r}")
            for field, scale in _NEAR_OOM_AMOUNTS:
                value = event.get(field)
                if value is None:
                    continue
                if value < 0:
                    raise ValueError(f"near_oom {field} is negative: {value!r}")
                amounts.append((self._near_oom[field], value * scale))

        labels = [_label(event.get(name)) for name in LABELS]
        overhead = event.get("overhead")
        if isinstance(overhead, Mapping) and event.get("vm"):
            used, budget = overhead.get("non_guest_usage_bytes"), overhead.get("overhead_budget_bytes")
            if isinstance(used, int) and isinstance(budget, int):
                self._vm_non_guest.labels(*labels).set(used)
                self._vm_budget.labels(*labels).set(budget)
        self._events.labels(kind).inc()
        self._last_event.set(self._clock())
        if kind == MEMCG_OOM:
            self._memcg_ooms.labels(*labels).inc()
        elif kind == OOM_KILL:
            self._oom_kills.labels(*labels).inc()
        else:
            if event["phase"] == FIRST:
                self._near_oom_events.labels(*labels).inc()
            # The producer never reports the same reclaim in a "first" and a "summary" event.
            for metric, amount in amounts:
                metric.labels(*labels).inc(amount)

    def lost(self, reason: str, n: int) -> None:
        """Count `n` events lost for `reason`, one of schema.LOSS_REASONS."""
        if reason not in LOSS_REASONS:
            raise ValueError(f"unknown loss reason {reason!r} (expected one of {', '.join(LOSS_REASONS)})")
        if n < 0:
            raise ValueError(f"lost event count is negative: {n}")
        self._lost.labels(reason).inc(n)

    def set_headers(self, origin: str, btf: bool) -> None:
        """Which kernel header tree bcc compiled against, and whether struct offsets come from BTF."""
        self._headers_info.clear()
        self._headers_info.labels(origin, "true" if btf else "false").set(1)

    def set_probes(self, probes: Iterable[tuple[str, str, str]]) -> None:
        """Replace the probe_info series with one per (probe, tier, target)."""
        new = set(probes)
        for _probe, tier, _target in new:
            if tier not in INFO_TIERS:
                raise ValueError(f"unknown probe tier {tier!r} (expected one of {', '.join(INFO_TIERS)})")
        # Add before removing, so a concurrent scrape never sees an empty set of probes.
        for probe in new:
            self._probe_info.labels(*probe).set(1)
        for probe in self._probes - new:
            self._probe_info.remove(*probe)
        self._probes = new


def _label(value: object) -> str:
    return "" if value is None else str(value)


# --- HTTP -----------------------------------------------------------------------------------

# Scrapers and kubelet probes send a few hundred bytes; anything much larger is not one of them.
MAX_REQUEST_HEAD_BYTES: Final = 8192
# Drop idle or slow connections so they cannot pin handler threads.
REQUEST_TIMEOUT_S: Final = 10.0
# Connections served at once, each on a thread of its own, besides the /events streams the
# stream hub allows. Over it, a connection gets 503 and is closed at once.
MAX_CONNECTIONS: Final = 64
_BUSY_BODY: Final = b"too many connections; retry later\n"
_BUSY_REPLY: Final = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
# How long close() may wait for the serve loop to notice; ten idle wake-ups a second cost nothing measurable.
_POLL_INTERVAL_S: Final = 0.1

Health = Callable[[], tuple[bool, str]]


class _CappedReader(io.BufferedIOBase):
    """The request stream, cut off after MAX_REQUEST_HEAD_BYTES.

    The standard library allows 64 KiB per line and 100 header lines; this caps the whole head.
    Running over raises http.client.LineTooLong, which the handler answers with 414 or 431.
    """

    def __init__(self, raw: io.BufferedIOBase, limit: int) -> None:
        super().__init__()
        self._raw = raw
        self._left = limit

    def readable(self) -> bool:
        return True

    def readline(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0 or size > self._left + 1:
            size = self._left + 1
        line = self._raw.readline(size)
        self._left -= len(line)
        if self._left < 0:
            raise http.client.LineTooLong(f"request head over {MAX_REQUEST_HEAD_BYTES} bytes")
        return line

    def close(self) -> None:
        self._raw.close()
        super().close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S

    def setup(self) -> None:
        super().setup()
        self.rfile = _CappedReader(self.rfile, MAX_REQUEST_HEAD_BYTES)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except http.client.LineTooLong:
            # Only the request line gets here: parse_request answers 431 for headers itself.
            self.requestline = self.request_version = self.command = ""
            self.close_connection = True
            self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)

    def do_GET(self) -> None:
        self._respond(body=True)

    def do_HEAD(self) -> None:
        self._respond(body=False)

    def _respond(self, body: bool) -> None:
        path = urlsplit(self.path).path
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            try:
                payload = encoder(self.server.registry)
            except Exception as e:  # a broken collector must not kill the handler thread silently
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, f"collecting metrics failed: {e}\n", body)
                return
            self._send(HTTPStatus.OK, payload, body, content_type)
        elif path == "/events" and self.server.events is not None:
            self.server.events.serve(self, body)
        elif path == "/healthz":
            try:
                ok, message = self.server.health()
            except Exception as e:  # a probe must get an answer, and a failing check is unhealthy
                ok, message = False, f"health check failed: {e}"
            self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, message + "\n", body)
        else:
            routes = "/metrics, /healthz or /events" if self.server.events else "/metrics or /healthz"
            self._send(HTTPStatus.NOT_FOUND, f"not found; try {routes}\n", body)

    def _send(
        self,
        status: HTTPStatus,
        payload: bytes | str,
        body: bool,
        content_type: str = "text/plain; charset=utf-8",
    ) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a line per scrape on stderr would drown the tracer's own output."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must not keep the process alive or block close()

    def __init__(
        self,
        family: socket.AddressFamily,
        sockaddr: tuple[Any, ...],
        dual_stack: bool,
        registry: CollectorRegistry,
        health: Health,
        stream: StreamHub | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.address_family = family
        self.registry = registry
        self.health = health
        self.events = EventsEndpoint(stream) if stream is not None else None
        self._dual_stack = dual_stack
        streams = stream.max_clients if stream is not None else 0
        self._slots = threading.BoundedSemaphore(max_connections + streams)
        super().__init__(sockaddr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            # Every slot is taken (slow, idle or streaming clients): answer without a thread,
            # so a flood of connections costs no more than this.
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY_REPLY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # the thread did not start
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def server_bind(self) -> None:
        if self._dual_stack:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # Skip HTTPServer.server_bind: its getfqdn() is a reverse DNS lookup that can hang start-up.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A scraper hanging up mid-response is routine; print tracebacks for anything else.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class HttpServer:
    """A running /metrics and /healthz server; close() stops it."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._closed = False
        self._thread = threading.Thread(
            target=server.serve_forever, args=(_POLL_INTERVAL_S,), name="oomtrace-http", daemon=True
        )
        self._thread.start()

    @property
    def host(self) -> str:
        return self._server.server_name

    @property
    def port(self) -> int:
        return self._server.server_port

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._server.events is not None:
            self._server.events.close()  # end the /events streams this server serves
        self._server.shutdown()  # waits for serve_forever's poll loop
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> HttpServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def start_http_server(
    address: str,
    registry: CollectorRegistry,
    health: Health,
    stream: StreamHub | None = None,
    max_connections: int = MAX_CONNECTIONS,
) -> HttpServer:
    """Serve /metrics and /healthz (and /events from `stream`, if given) on `address` from a
    daemon thread, and return at once.

    Raises ValueError for an address that does not parse or resolve, OSError if it cannot be bound
    (e.g. in use). `:port` listens on IPv6 and IPv4 where the host has IPv6, else on IPv4 only.
    """
    host, port = parse_address(address)
    if host == "":
        try:
            return _listen(
                address, socket.AF_INET6, ("::", port), True, registry, health, stream, max_connections
            )
        except OSError as e:
            # No IPv6 on this host: fall back to IPv4 only. Anything else is the caller's to see.
            if e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
        return _listen(
            address, socket.AF_INET, ("0.0.0.0", port), False, registry, health, stream, max_connections
        )
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(f"bad listen address {address!r}: cannot resolve {host!r}: {e.strerror}") from None
    family, _type, _proto, _name, sockaddr = infos[0]
    return _listen(address, family, sockaddr, False, registry, health, stream, max_connections)


def _listen(
    address: str,
    family: socket.AddressFamily,
    sockaddr: tuple[Any, ...],
    dual_stack: bool,
    registry: CollectorRegistry,
    health: Health,
    stream: StreamHub | None = None,
    max_connections: int = MAX_CONNECTIONS,
) -> HttpServer:
    try:
        server = _Server(family, sockaddr, dual_stack, registry, health, stream, max_connections)
    except OSError as e:
        raise OSError(e.errno, f"cannot listen on {address!r}: {e.strerror}") from e
    return HttpServer(server)
