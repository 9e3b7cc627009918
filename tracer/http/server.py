"""The HTTP server for /metrics, /healthz and /events (tracer.http.events), on a thread of its own.

Bounded so no client can hurt the tracer: capped request heads, a timeout per connection, and a
fixed number of connections served at once (the rest get 503 without a thread).
"""

from __future__ import annotations

import errno
import http.client
import io
import socket
import socketserver
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from tracer.http.address import parse_address
from tracer.http.auth import Authorizer
from tracer.http.events import EventsEndpoint
from tracer.http.tls import ServerTls
from tracer.sinks.stream import StreamHub

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
        if path != "/healthz" and not self._authorized(path, body):
            return
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

    def _authorized(self, path: str, body: bool) -> bool:
        """True to serve `path`; else the refusal is sent. /healthz never gets here: kubelet's
        probes carry no token."""
        if self.server.authorizer is None:
            return True
        verdict = self.server.authorizer.check(self.headers.get("Authorization"), path)
        if verdict.status == HTTPStatus.OK:
            return True
        challenge = {"WWW-Authenticate": 'Bearer realm="oomtrace"'} if verdict.status == 401 else {}
        self._send(HTTPStatus(verdict.status), f"{verdict.reason}\n", body, headers=challenge)
        return False

    def _send(
        self,
        status: HTTPStatus,
        payload: bytes | str,
        body: bool,
        content_type: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
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
        authorizer: Authorizer | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self.address_family = family
        self.authorizer = authorizer
        self.tls = tls
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
            if self.tls is None:  # a TLS client would read plain text as a bad record: just close
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

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        # The handshake runs here, on the connection's own thread, under the request timeout:
        # a client that stalls it holds one slot, never the accept loop.
        request.settimeout(REQUEST_TIMEOUT_S)
        try:
            secured = self.tls.context().wrap_socket(request, server_side=True)
        except (OSError, ValueError):
            return  # not TLS, a bad handshake, or gone: nothing to answer
        try:
            super().finish_request(secured, client_address)
        finally:
            secured.close()

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
    authorizer: Authorizer | None = None,
    tls: ServerTls | None = None,
) -> HttpServer:
    """Serve /metrics and /healthz (and /events from `stream`, if given) on `address` from a
    daemon thread, and return at once.

    Raises ValueError for an address that does not parse or resolve, OSError if it cannot be bound
    (e.g. in use). With `authorizer`, every path but /healthz needs its verdict (tracer.http.auth);
    with `tls`, every connection is HTTPS (tracer.http.tls).
    `:port` listens on IPv6 and IPv4 where the host has IPv6, else on IPv4 only.
    """

    def listen(family: socket.AddressFamily, sockaddr: tuple[Any, ...], dual_stack: bool) -> HttpServer:
        try:
            server = _Server(
                family, sockaddr, dual_stack, registry, health, stream, max_connections, authorizer, tls
            )
        except OSError as e:
            raise OSError(e.errno, f"cannot listen on {address!r}: {e.strerror}") from e
        return HttpServer(server)

    host, port = parse_address(address)
    if host == "":
        try:
            return listen(socket.AF_INET6, ("::", port), True)
        except OSError as e:
            # No IPv6 on this host: fall back to IPv4 only. Anything else is the caller's to see.
            if e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
        return listen(socket.AF_INET, ("0.0.0.0", port), False)
    try:
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(f"bad listen address {address!r}: cannot resolve {host!r}: {e.strerror}") from None
    family, _type, _proto, _name, sockaddr = infos[0]
    return listen(family, sockaddr, False)
