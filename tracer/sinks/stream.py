"""The live event stream: `GET /events` as Server-Sent Events or NDJSON.

StreamHub is a Sink (tracer.daemon): it numbers every finished event, keeps the last N for
replay, and hands each to the bounded queue of every client whose filter matches. write()
never waits for a client: a client whose queue is full is dropped at once (its connection is
shut down, its queue freed) and counted, so a stuck reader costs at most one queue and never
slows the pipeline or the other clients.

EventsEndpoint serves `GET /events` for the HTTP server in tracer.metrics: each client has its
own server thread, which reads only that client's queue and writes to its socket.

Event ids are integers that increase by one per event. The first id of a run is the wall-clock
time in microseconds at start, so ids from an earlier run of the tracer are smaller than any of
this run's, and a client resuming with one of them is recognised and replayed everything kept.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from itertools import islice
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge

from tracer.schema import KINDS, MEMCG_OOM, NEAR_OOM, OOM_KILL
from tracer.timefmt import now_rfc3339, parse_rfc3339

# min_kind: an event kind passes if it is at least this severe.
SEVERITY: Final = {NEAR_OOM: 0, MEMCG_OOM: 1, OOM_KILL: 2}

DEFAULT_REPLAY: Final = 1000
DEFAULT_MAX_CLIENTS: Final = 16
DEFAULT_CLIENT_QUEUE: Final = 1000
DEFAULT_HEARTBEAT_S: Final = 15.0
# What SSE clients wait before reconnecting (the `retry:` field); `oomtrace watch` backs off from it.
SSE_RETRY_MS: Final = 2000
# Retry-After for a client refused because the server has its maximum of clients.
RETRY_AFTER_S: Final = 5

# Why a client was dropped: its queue overflowed, or a write to it made no progress for the
# socket timeout.
DROP_REASONS: Final = ("overflow", "stalled")

# Events a client thread takes from its queue per socket write.
_BATCH: Final = 64
# How often a quiet client's thread checks whether the client hung up, so its slot frees soon
# rather than at the next heartbeat.
_HANGUP_CHECK_S: Final = 1.0

SSE: Final = "sse"
NDJSON: Final = "ndjson"
CONTENT_TYPES: Final = {SSE: "text/event-stream; charset=utf-8", NDJSON: "application/x-ndjson"}
# Media types each format answers to in Accept (besides */*).
_MEDIA_TYPES: Final = {
    SSE: ("text/event-stream", "text/*"),
    NDJSON: (
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/json",
        "application/*",
    ),
}
# Response headers: the heartbeat interval, so clients can tell a dead connection from a quiet
# one; and the id of the newest event when the stream started, so a client that has received
# nothing yet can still resume from where it started (Last-Event-ID) without a gap.
HEARTBEAT_HEADER: Final = "Oomtrace-Heartbeat-Seconds"
POSITION_HEADER: Final = "Oomtrace-Last-Event-Id"

QUERY_PARAMS: Final = ("kind", "min_kind", "namespace", "pod", "vm", "since", "format")


# --- events and filters ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One published event: what the filters look at, and its JSON, serialised once."""

    id: int
    kind: str
    namespace: str | None
    pod: str | None
    vm: str | None
    ts_s: float | None  # the event's `ts` as Unix time
    json: str


class QueryError(ValueError):
    """A bad /events query: answered 400 with this one-line message."""


@dataclass(frozen=True)
class EventFilter:
    """Which events a client gets. None: no condition on that field."""

    kinds: frozenset[str] | None = None
    namespaces: frozenset[str] | None = None
    pods: frozenset[str] | None = None
    vms: frozenset[str] | None = None

    def matches(self, entry: Entry) -> bool:
        return (
            (self.kinds is None or entry.kind in self.kinds)
            and (self.namespaces is None or entry.namespace in self.namespaces)
            and (self.pods is None or entry.pod in self.pods)
            and (self.vms is None or entry.vm in self.vms)
        )


@dataclass(frozen=True)
class StreamQuery:
    filter: EventFilter
    after_id: int | None  # replay events after this id (Last-Event-ID, or ?since=<id>)
    since_s: float | None  # replay events at or after this Unix time (?since=<RFC 3339>)
    format: str | None  # from ?format=; None: by the Accept header


def parse_time(text: str) -> float:
    """RFC 3339 (`2026-11-26T17:05:34.671Z`, `…+01:00`; no offset means UTC) → Unix time."""
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise QueryError(f"not an event id or an RFC 3339 time: {text!r}") from None


def _values(params: dict[str, list[str]], name: str) -> frozenset[str] | None:
    """Repeated (`?pod=a&pod=b`) and comma-separated (`?pod=a,b`) values alike."""
    if name not in params:
        return None
    values = [v.strip() for raw in params[name] for v in raw.split(",")]
    if any(not v for v in values):
        raise QueryError(f"{name}: empty value")
    return frozenset(values)


def _kind_values(params: dict[str, list[str]], name: str) -> frozenset[str] | None:
    kinds = _values(params, name)
    for kind in sorted(kinds or ()):
        if kind not in KINDS:
            raise QueryError(f"{name}: unknown event kind {kind!r} (expected {', '.join(KINDS)})")
    return kinds


def parse_query(query: str, last_event_id: str | None = None) -> StreamQuery:
    """The /events query string (and Last-Event-ID header) → StreamQuery; QueryError if bad."""
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=False, max_num_fields=64)
    except ValueError as err:
        raise QueryError(f"bad query string: {err}") from None
    for name in params:
        if name not in QUERY_PARAMS:
            raise QueryError(f"unknown parameter {name!r} (expected one of {', '.join(QUERY_PARAMS)})")
    kinds = _kind_values(params, "kind")
    min_kind = _kind_values(params, "min_kind")
    if min_kind is not None:
        if len(min_kind) != 1:
            raise QueryError("min_kind: give one event kind")
        floor = SEVERITY[next(iter(min_kind))]
        severe = frozenset(k for k in KINDS if SEVERITY[k] >= floor)
        kinds = severe if kinds is None else kinds & severe
        if not kinds:
            raise QueryError("kind and min_kind together match no event kind")

    fmt: str | None = None
    if "format" in params:
        (fmt,) = params["format"][-1:]
        if fmt not in CONTENT_TYPES:
            raise QueryError(f"format: expected sse or ndjson, not {fmt!r}")

    after_id: int | None = None
    since_s: float | None = None
    if last_event_id is not None and last_event_id.strip():
        after_id = _event_id(last_event_id.strip(), "Last-Event-ID")
    elif "since" in params:
        since = params["since"][-1].strip()
        if since.isdigit():
            after_id = _event_id(since, "since")
        else:
            since_s = parse_time(since)
    return StreamQuery(
        EventFilter(kinds, _values(params, "namespace"), _values(params, "pod"), _values(params, "vm")),
        after_id,
        since_s,
        fmt,
    )


def _event_id(text: str, name: str) -> int:
    if not text.isdigit() or len(text) > 19:
        raise QueryError(f"{name}: not an event id: {text[:40]!r}")
    return int(text)


def negotiate(accept: str) -> str | None:
    """The stream format an Accept header asks for (RFC 9110 q-values); None if neither fits.

    No Accept, `*/*` and JSON types get NDJSON; `text/event-stream` (what EventSource sends)
    gets SSE. At equal q the more specific match wins, then NDJSON.
    """
    if not accept.strip():
        return NDJSON
    best: dict[str, tuple[int, float]] = {}  # format → (specificity of its best match, q)
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        media = media.lower()
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        for fmt, types in _MEDIA_TYPES.items():
            if media == "*/*":
                specificity = 0
            elif media in types:
                specificity = 1 if media.endswith("/*") else 2
            else:
                continue
            if fmt not in best or specificity > best[fmt][0]:
                best[fmt] = (specificity, q)
    ranked = sorted(
        ((q, specificity, fmt == NDJSON, fmt) for fmt, (specificity, q) in best.items() if q > 0),
        reverse=True,
    )
    return ranked[0][3] if ranked else None


# --- wire formats ---------------------------------------------------------------------------


def sse_event(entry: Entry) -> str:
    # json.dumps escapes newlines, so the event is one `data:` line.
    return f"id: {entry.id}\ndata: {entry.json}\n\n"


def ndjson_event(entry: Entry) -> str:
    # The id goes first, spliced into the JSON serialised once at write() time (always `{"event": …`).
    return f'{{"id": {entry.id}, {entry.json[1:]}\n'


@dataclass(frozen=True)
class Gap:
    """Events a resuming client asked for that the replay buffer no longer has."""

    after_id: int | None  # the client's last id (None when it resumed by time)
    next_id: int  # the first id it can still get
    missed: int | None  # events of any kind it missed (before filtering); None: unknown
    restarted: bool  # the client's id is from an earlier run of the tracer

    def as_dict(self) -> dict[str, Any]:
        return {
            "after_id": self.after_id,
            "next_id": self.next_id,
            "missed": self.missed,
            "restarted": self.restarted,
        }


def sse_gap(gap: Gap) -> str:
    return f"event: gap\ndata: {json.dumps(gap.as_dict())}\n\n"


def ndjson_gap(gap: Gap) -> str:
    return json.dumps({"gap": gap.as_dict()}) + "\n"


# --- the hub --------------------------------------------------------------------------------


class StreamFull(Exception):
    """The server already has its maximum of stream clients."""


class StreamClosed(Exception):
    """The hub is closed (the tracer is stopping)."""


class Subscription:
    """One client's bounded queue. The hub appends; the client's thread takes."""

    def __init__(
        self, flt: EventFilter, capacity: int, on_drop: Callable[[], None], position: int = 0
    ) -> None:
        self.filter = flt
        self.position = position  # the newest event's id when it subscribed
        self.capacity = capacity
        self._on_drop = on_drop
        self._items: deque[Entry] = deque()
        self._cond = threading.Condition(threading.Lock())
        self.ended: str | None = None  # None while live; else "overflow", "stalled", "closed", "gone"

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, entry: Entry) -> bool:
        """Queue `entry`; False if that overflowed the queue (the subscription is then ended)."""
        with self._cond:
            if self.ended is not None:
                return True
            if len(self._items) >= self.capacity:
                self._end("overflow")
                return False
            self._items.append(entry)
            self._cond.notify()
            return True

    def take(self, timeout_s: float, limit: int = _BATCH) -> list[Entry] | None:
        """Up to `limit` queued entries, waiting up to `timeout_s` for one; [] on timeout,
        None once the subscription has ended."""
        with self._cond:
            if not self._items and self.ended is None:
                self._cond.wait(timeout_s)
            if self.ended is not None:
                return None
            n = min(limit, len(self._items))
            return [self._items.popleft() for _ in range(n)]

    def end(self, reason: str) -> bool:
        """End the subscription; True if this call ended it."""
        with self._cond:
            return self._end(reason)

    def _end(self, reason: str) -> bool:
        if self.ended is not None:
            return False
        self.ended = reason
        self._items.clear()  # a dropped client's backlog is freed at once, not when its thread wakes
        self._cond.notify_all()
        if reason == "overflow":
            self._on_drop()
        return True


class StreamHub:
    """The Sink behind /events: event ids, the replay buffer, and the clients' queues."""

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        replay: int = DEFAULT_REPLAY,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        client_queue: int = DEFAULT_CLIENT_QUEUE,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
        first_id: int | None = None,
    ) -> None:
        if replay < 0 or max_clients < 1 or client_queue < 1 or not heartbeat_s > 0:
            raise ValueError("replay must be >= 0, max_clients and client_queue >= 1, heartbeat_s > 0")
        self.replay = replay
        self.max_clients = max_clients
        self.client_queue = client_queue
        self.heartbeat_s = heartbeat_s
        self.first_id = first_id if first_id is not None else time.time_ns() // 1000
        self._next_id = self.first_id
        self._ring: deque[Entry] = deque(maxlen=replay)
        self._evicted_ts: float | None = None  # ts of the newest event gone from the ring
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._closed = False
        registry = registry if registry is not None else CollectorRegistry()
        self._clients = Gauge("oomtrace_stream_clients", "Clients connected to /events.", registry=registry)
        self._dropped = Counter(
            "oomtrace_stream_clients_dropped_total",
            "/events clients dropped for not keeping up: overflow (queue full) or stalled (write timed out).",
            ["reason"],
            registry=registry,
        )
        self._rejected = Counter(
            "oomtrace_stream_clients_rejected_total",
            "/events connections refused because the server had its maximum of clients.",
            registry=registry,
        )
        for reason in DROP_REASONS:
            self._dropped.labels(reason)

    @property
    def last_id(self) -> int:
        """The id of the newest event (first_id - 1 before any)."""
        return self._next_id - 1

    def write(self, event: dict[str, Any]) -> None:
        """Publish one event to the replay buffer and every matching client. Never blocks on a client."""
        kind = event.get("event")
        if not isinstance(kind, str):
            raise ValueError(f"not an event: {kind!r}")
        text = json.dumps(event, default=str)
        ts_s = _ts(event.get("ts"))
        with self._lock:
            if self._closed:
                return
            entry = Entry(
                self._next_id,
                kind,
                _str_or_none(event.get("namespace")),
                _str_or_none(event.get("pod")),
                _str_or_none(event.get("vm")),
                ts_s,
                text,
            )
            self._next_id += 1
            if self.replay:
                if len(self._ring) == self.replay:
                    self._evicted_ts = self._ring[0].ts_s
                self._ring.append(entry)
            overflowed = [s for s in self._subs if s.filter.matches(entry) and not s.offer(entry)]
            for sub in overflowed:
                self._subs.discard(sub)
            if overflowed:
                self._clients.set(len(self._subs))
        if overflowed:
            self._dropped.labels("overflow").inc(len(overflowed))

    def subscribe(
        self,
        flt: EventFilter,
        after_id: int | None = None,
        since_s: float | None = None,
        on_drop: Callable[[], None] = lambda: None,
    ) -> tuple[Subscription, list[Entry], Gap | None]:
        """A new client: its queue, the events to replay first, and what it missed if anything.

        Replay and subscription happen under one lock, so nothing falls between them.
        Raises StreamFull at the client limit, StreamClosed after close().
        """
        with self._lock:
            if self._closed:
                raise StreamClosed("the tracer is stopping")
            if len(self._subs) >= self.max_clients:
                self._rejected.inc()
                raise StreamFull(f"already {self.max_clients} /events clients; try again later")
            replay, gap = self._replay(after_id, since_s)
            sub = Subscription(flt, self.client_queue, on_drop, self.last_id)
            self._subs.add(sub)
            self._clients.set(len(self._subs))
        return sub, [e for e in replay if flt.matches(e)], gap

    def _replay(self, after_id: int | None, since_s: float | None) -> tuple[list[Entry], Gap | None]:
        ring = self._ring
        oldest = ring[0].id if ring else self._next_id
        if after_id is not None:
            if self.first_id - 1 <= after_id < self._next_id:
                replay = list(islice(ring, max(0, after_id - oldest + 1), None))
                missed = oldest - after_id - 1
                return replay, Gap(after_id, oldest, missed, False) if missed > 0 else None
            # An id from another run of the tracer: everything this run still has.
            return list(ring), Gap(after_id, oldest, oldest - self.first_id, True)
        if since_s is not None:
            replay = [e for e in ring if e.ts_s is not None and e.ts_s >= since_s]
            if self._evicted_ts is not None and self._evicted_ts >= since_s:
                return replay, Gap(None, oldest, None, False)
            return replay, None
        return [], None

    def unsubscribe(self, sub: Subscription, reason: str = "gone") -> None:
        """The client's thread is done with it; reason "stalled" counts it as dropped."""
        ended_now = sub.end(reason)
        with self._lock:
            present = sub in self._subs
            self._subs.discard(sub)
            self._clients.set(len(self._subs))
        if ended_now and present and reason in DROP_REASONS:
            self._dropped.labels(reason).inc()

    def close(self) -> None:
        """Ends every client's stream now (the tracer is stopping) and refuses new ones."""
        with self._lock:
            self._closed = True
            subs = list(self._subs)
            self._subs.clear()
            self._clients.set(0)
        for sub in subs:
            sub.end("closed")

    def queued(self) -> int:
        """Events waiting in all clients' queues together."""
        with self._lock:
            return sum(len(s) for s in self._subs)

    def clients(self) -> int:
        with self._lock:
            return len(self._subs)


def _str_or_none(value: object) -> str | None:
    return None if value is None else str(value)


def _ts(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value)
    except QueryError:
        return None


# --- HTTP -----------------------------------------------------------------------------------


def _shutdown(conn: socket.socket) -> None:
    """Wake a client thread blocked writing to a client that stopped reading."""
    with contextlib.suppress(OSError):  # already closed
        conn.shutdown(socket.SHUT_RDWR)


def _hung_up(conn: socket.socket) -> bool:
    """True if the client closed its end (a stream client sends nothing after its request)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        return bool(readable) and conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except (OSError, ValueError):
        return True


class EventsEndpoint:
    """GET /events for one HTTP server. close() ends the streams it serves (not the hub)."""

    def __init__(self, hub: StreamHub) -> None:
        self.hub = hub
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._closed = False

    def serve(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        """Answer one request, on its handler thread; returns when the stream ends."""
        try:
            query = parse_query(urlsplit(handler.path).query, handler.headers.get("Last-Event-ID"))
        except QueryError as err:
            _plain(handler, HTTPStatus.BAD_REQUEST, f"{err}\n", body)
            return
        fmt = query.format or negotiate(handler.headers.get("Accept", ""))
        if fmt is None:
            message = "not acceptable: /events speaks text/event-stream and application/x-ndjson\n"
            _plain(handler, HTTPStatus.NOT_ACCEPTABLE, message, body)
            return
        if not body:  # HEAD: the headers a GET would get, without taking a client slot
            self._start(handler, fmt, self.hub.last_id)
            return
        conn = handler.connection
        try:
            sub, replay, gap = self.hub.subscribe(
                query.filter, query.after_id, query.since_s, on_drop=lambda: _shutdown(conn)
            )
        except (StreamFull, StreamClosed) as err:
            _plain(handler, HTTPStatus.SERVICE_UNAVAILABLE, f"{err}\n", body, retry_after=RETRY_AFTER_S)
            return
        with self._lock:
            if self._closed:
                self.hub.unsubscribe(sub, "closed")
                _plain(handler, HTTPStatus.SERVICE_UNAVAILABLE, "server closing\n", body)
                return
            self._subs.add(sub)
        try:
            self._stream(handler, fmt, sub, replay, gap)
        except TimeoutError:
            self.hub.unsubscribe(sub, "stalled")
        except OSError:
            pass  # the client went away, or was dropped and its socket shut down
        finally:
            self.hub.unsubscribe(sub)
            with self._lock:
                self._subs.discard(sub)

    def _start(self, handler: BaseHTTPRequestHandler, fmt: str, position: int) -> None:
        handler.close_connection = True
        handler.send_response(HTTPStatus.OK)
        handler.send_header("Content-Type", CONTENT_TYPES[fmt])
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("X-Accel-Buffering", "no")  # tell nginx-style proxies not to buffer
        handler.send_header(HEARTBEAT_HEADER, f"{self.hub.heartbeat_s:g}")
        handler.send_header(POSITION_HEADER, str(position))
        handler.send_header("Connection", "close")
        handler.end_headers()

    def _stream(
        self,
        handler: BaseHTTPRequestHandler,
        fmt: str,
        sub: Subscription,
        replay: Sequence[Entry],
        gap: Gap | None,
    ) -> None:
        event = sse_event if fmt == SSE else ndjson_event
        out = handler.wfile
        self._start(handler, fmt, sub.position)
        head = f"retry: {SSE_RETRY_MS}\n\n" if fmt == SSE else ""
        if gap is not None:
            head += sse_gap(gap) if fmt == SSE else ndjson_gap(gap)
        if head:
            out.write(head.encode())
        for start in range(0, len(replay), _BATCH):
            out.write("".join(event(e) for e in replay[start : start + _BATCH]).encode())
        heartbeat = self.hub.heartbeat_s
        last_write = time.monotonic()
        while True:
            wait = min(_HANGUP_CHECK_S, max(0.0, last_write + heartbeat - time.monotonic()))
            entries = sub.take(wait)
            if entries is None:
                return
            if entries:
                out.write("".join(event(e) for e in entries).encode())
            elif time.monotonic() - last_write >= heartbeat:
                beat = b": heartbeat\n\n" if fmt == SSE else f'{{"heartbeat": "{now_rfc3339()}"}}\n'.encode()
                out.write(beat)
            else:
                if _hung_up(handler.connection):
                    return
                continue
            last_write = time.monotonic()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            subs = list(self._subs)
        for sub in subs:
            self.hub.unsubscribe(sub, "closed")


def _plain(
    handler: BaseHTTPRequestHandler,
    status: HTTPStatus,
    message: str,
    body: bool,
    retry_after: int | None = None,
) -> None:
    data = message.encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "text/plain; charset=utf-8")
    handler.send_header("Content-Length", str(len(data)))
    if retry_after is not None:
        handler.send_header("Retry-After", str(retry_after))
    handler.end_headers()
    if body:
        handler.wfile.write(data)


def severity_kinds(min_kind: str) -> Iterable[str]:
    """The kinds at least as severe as `min_kind`, least severe first."""
    return [k for k in KINDS if SEVERITY[k] >= SEVERITY[min_kind]]
