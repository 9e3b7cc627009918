"""GET /events for tracer.http.server: each client has its own server thread, which reads only
that client's queue in the stream hub and writes to its socket.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Final
from urllib.parse import urlsplit

from tracer.sinks.stream.hub import WRITE_BATCH, StreamClosed, StreamFull, StreamHub, Subscription
from tracer.sinks.stream.query import QueryError, parse_query
from tracer.sinks.stream.wire import (
    CONTENT_TYPES,
    HEARTBEAT_HEADER,
    POSITION_HEADER,
    SSE,
    SSE_RETRY_MS,
    Entry,
    Gap,
    ndjson_event,
    ndjson_gap,
    negotiate,
    sse_event,
    sse_gap,
)
from tracer.timefmt import now_rfc3339

# Retry-After for a client refused because the server has its maximum of clients.
RETRY_AFTER_S: Final = 5


# How often a quiet client's thread checks whether the client hung up, so its slot frees soon
# rather than at the next heartbeat.
_HANGUP_CHECK_S: Final = 1.0


# --- HTTP -----------------------------------------------------------------------------------


def _shutdown(conn: socket.socket) -> None:
    """Wake a client thread blocked writing to a client that stopped reading."""
    with contextlib.suppress(OSError):  # already closed
        # The plain socket's shutdown also for TLS: SSLSocket.shutdown drops its TLS state, under
        # the feet of the thread writing to it.
        socket.socket.shutdown(conn, socket.SHUT_RDWR)


def _hung_up(conn: socket.socket) -> bool:
    """True if the client closed its end (a stream client sends nothing after its request)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        if readable and isinstance(conn, ssl.SSLSocket):
            return True  # TLS cannot peek; all a stream client sends after its request is close_notify
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
        for start in range(0, len(replay), WRITE_BATCH):
            out.write("".join(event(e) for e in replay[start : start + WRITE_BATCH]).encode())
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
