"""StreamHub, the Sink behind /events: it numbers every finished event, keeps the last N for
replay, and hands each to the bounded queue of every client whose filter matches. write()
never waits for a client: a client whose queue is full is dropped at once (its connection is
shut down, its queue freed) and counted, so a stuck reader costs at most one queue and never
slows the pipeline or the other clients.

Event ids are integers that increase by one per event. The first id of a run is the wall-clock
time in microseconds at start, so ids from an earlier run of the tracer are smaller than any of
this run's, and a client resuming with one of them is recognised and replayed everything kept.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from tracer.sinks.event_json import EventJson
from tracer.sinks.stream.query import EventFilter, QueryError, parse_time
from tracer.sinks.stream.wire import Entry, Gap

DEFAULT_REPLAY: Final = 1000
DEFAULT_MAX_CLIENTS: Final = 16
DEFAULT_CLIENT_QUEUE: Final = 1000
DEFAULT_HEARTBEAT_S: Final = 15.0


# Why a client was dropped: its queue overflowed, or a write to it made no progress for the
# socket timeout.
DROP_REASONS: Final = ("overflow", "stalled")

# Events a client thread takes from its queue per socket write.
WRITE_BATCH: Final = 64


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

    def take(self, timeout_s: float, limit: int = WRITE_BATCH) -> list[Entry] | None:
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
        render: EventJson | None = None,
    ) -> None:
        if replay < 0 or max_clients < 1 or client_queue < 1 or not heartbeat_s > 0:
            raise ValueError("replay must be >= 0, max_clients and client_queue >= 1, heartbeat_s > 0")
        self.replay = replay
        self.max_clients = max_clients
        self.client_queue = client_queue
        self.heartbeat_s = heartbeat_s
        self._render = render or EventJson()  # shared with stdout: one rendering per event
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

    def start(self) -> None:
        """Nothing to start: the HTTP server's handler threads serve the subscriptions."""

    def flush(self) -> None:
        """Nothing buffered here: write() hands each event on at once."""

    def write(self, event: dict[str, Any]) -> None:
        """Publish one event to the replay buffer and every matching client. Never blocks on a client."""
        kind = event.get("event")
        if not isinstance(kind, str):
            raise ValueError(f"not an event: {kind!r}")
        text = self._render(event)
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
