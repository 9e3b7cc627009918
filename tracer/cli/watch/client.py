"""The watch client: connects, follows the stream, reconnects with backoff and resumes after the
last event seen (Last-Event-ID)."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import random
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TextIO
from urllib.parse import urlencode, urlsplit

from tracer.cli.watch.render import render, terminal_safe
from tracer.cli.watch.sse import sse_messages
from tracer.http.address import DEFAULT_PORT

DEFAULT_ADDRESS: Final = f"127.0.0.1:{DEFAULT_PORT}"
CONNECT_TIMEOUT_S: Final = 5.0
# Without a heartbeat header from the server: how long a silent connection is trusted.
IDLE_TIMEOUT_S: Final = 60.0


class WatchError(Exception):
    """Something retrying will not fix (bad address, bad filter, not an oomtrace): exit 2."""


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str
    port: int
    path: str  # …/events

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def parse_endpoint(address: str) -> Endpoint:
    """The /events URL of a tracer named by `address`; WatchError if it is not an address."""
    text = address.strip()
    if not text:
        raise WatchError("empty address")
    parts = urlsplit(text if "://" in text else f"http://{text}")
    if parts.scheme not in ("http", "https"):
        raise WatchError(f"bad address {address!r}: only http:// and https:// are spoken")
    if parts.query or parts.fragment or parts.username:
        raise WatchError(f"bad address {address!r}: give filters as flags, not in the address")
    try:
        port = parts.port
    except ValueError:
        raise WatchError(f"bad address {address!r}: port must be a number from 0 to 65535") from None
    host = parts.hostname or "127.0.0.1"
    if any(c.isspace() for c in host):
        raise WatchError(f"bad address {address!r}")
    if port is None:
        port = 443 if parts.scheme == "https" and "://" in text else DEFAULT_PORT
    path = parts.path.rstrip("/")
    if not path.endswith("/events"):
        path += "/events"
    return Endpoint(parts.scheme, host, port, path)


def query_string(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The server-side filters for /events, from the command line."""
    query: list[tuple[str, str]] = []
    for name in ("kind", "namespace", "pod", "vm"):
        for value in getattr(args, name) or ():
            query.append((name, value))
    if args.min_kind:
        query.append(("min_kind", args.min_kind))
    return query


class Backoff:
    """Exponential backoff with jitter: about initial, twice that, four times, … up to maximum seconds."""

    def __init__(
        self, initial_s: float = 0.5, maximum_s: float = 30.0, rand: Callable[[], float] = random.random
    ) -> None:
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self._rand = rand
        self.attempt = 0

    def next(self, at_least_s: float = 0.0) -> float:
        base: float = min(self.maximum_s, self.initial_s * 2.0 ** min(self.attempt, 32))
        self.attempt += 1
        # Jitter in [base/2, base): many watchers of one restarted tracer do not return in step.
        return max(at_least_s, base * (0.5 + self._rand() / 2))

    def reset(self) -> None:
        self.attempt = 0


class OutputClosed(Exception):
    """Whoever reads our stdout has gone (e.g. `| head`): not an error, and no reason to retry."""


class _Retry(Exception):
    def __init__(self, reason: str, at_least_s: float = 0.0) -> None:
        super().__init__(reason)
        self.at_least_s = at_least_s


def _json_escaped(c: str) -> str:
    return c if c.isprintable() else json.dumps(c)[1:-1]


class Watcher:
    """Connects, prints events, reconnects; run() returns the exit code."""

    def __init__(
        self,
        endpoint: Endpoint,
        query: list[tuple[str, str]],
        out: TextIO,
        err: TextIO,
        json_lines: bool = False,
        colour: bool = False,
        since: str | None = None,
        count: int | None = None,
        backoff: Backoff | None = None,
        token: Callable[[], str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.query = query
        self.out = out
        self.err = err
        self.json_lines = json_lines
        self.colour = colour
        self.since = since
        self.count = count
        self.backoff = backoff or Backoff()
        self.token = token  # the bearer token to send, read anew for each connection
        self.tls = tls  # https://: whom to trust (None: the system's CAs)
        self.last_id: str | None = None
        self.shown = 0
        self.connections = 0
        self._stopped = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        # The connection's socket: http.client hands it to the response (and forgets it) when
        # the server will close the connection, as a stream's does.
        self._sock: socket.socket | None = None

    def stop(self) -> None:
        """From another thread: end run() soon."""
        self._stopped.set()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> int:
        while not self._stopped.is_set():
            try:
                if self._follow():
                    return 0
                reason, at_least = "the tracer ended the stream", 0.0
            except _Retry as retry:
                reason, at_least = str(retry), retry.at_least_s
            except socket.gaierror as err:
                if self.connections == 0:  # a mistyped name: say so rather than retry forever
                    raise WatchError(f"cannot resolve {self.endpoint.host!r}: {err.strerror}") from None
                reason, at_least = _describe(err), 0.0
            except (OSError, http.client.HTTPException) as err:
                reason, at_least = _describe(err), 0.0
            finally:
                self._close()
            if self._stopped.is_set():
                break
            delay = self.backoff.next(at_least)
            where = f"after event {self.last_id}" if self.last_id else "from now"
            self._note(f"{reason}; reconnecting in {delay:.1f}s (resuming {where})")
            self._stopped.wait(delay)
        return 0

    def _path(self) -> str:
        query = list(self.query)
        if self.last_id is None and self.since is not None:
            query.append(("since", self.since))
        return self.endpoint.path + (f"?{urlencode(query)}" if query else "")

    def _connect(self) -> http.client.HTTPResponse:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.token is not None:
            try:
                headers["Authorization"] = f"Bearer {self.token()}"
            except WatchError as err:
                if self.connections == 0:
                    raise
                raise _Retry(str(err)) from None  # mid-rotation, say: the next attempt may find it
        conn: http.client.HTTPConnection
        where = (self.endpoint.host, self.endpoint.port)
        if self.endpoint.scheme == "https":
            conn = http.client.HTTPSConnection(*where, timeout=CONNECT_TIMEOUT_S, context=self.tls)
        else:
            conn = http.client.HTTPConnection(*where, timeout=CONNECT_TIMEOUT_S)
        self._conn = conn
        if self.last_id is not None:
            headers["Last-Event-ID"] = self.last_id
        conn.request("GET", self._path(), headers=headers)
        self._sock = conn.sock
        if self._stopped.is_set():
            raise _Retry("stopped")
        response = conn.getresponse()
        if response.status == 200:
            if not response.getheader("Content-Type", "").startswith("text/event-stream"):
                raise WatchError(f"{self.endpoint.url} is not an oomtrace event stream")
            return response
        message = response.read(4096).decode("utf-8", "replace").strip().splitlines()
        first = message[0] if message else response.reason
        if response.status == 404:
            raise WatchError(f"{self.endpoint.url}: no event stream there (404): is it an oomtrace?")
        if response.status in (429, 503) or response.status >= 500:
            raise _Retry(f"the tracer answered {response.status}: {first}", _retry_after(response))
        hint = ""
        if response.status == 401:
            hint = (
                "; it wants a bearer token: --token-file or --kubeconfig"
                if self.token is None
                else "; the token was not accepted"
            )
        elif response.status == 403:
            hint = "; the token's user may not get this path (RBAC nonResourceURLs)"
        raise WatchError(f"the tracer refused the request ({response.status}): {first}{hint}")

    def _follow(self) -> bool:
        """One connection; True once --count events are shown."""
        response = self._connect()
        self.connections += 1
        self.backoff.reset()
        heartbeat = _float(response.getheader("Oomtrace-Heartbeat-Seconds"))
        idle_s = 3 * heartbeat + 1 if heartbeat else IDLE_TIMEOUT_S
        if self._sock is not None:
            self._sock.settimeout(idle_s)
        position = response.getheader("Oomtrace-Last-Event-Id")
        resumed = self.last_id
        if self.last_id is None and self.since is None and position and position.isdigit():
            # Nothing seen yet: a reconnect resumes from where this stream started.
            self.last_id = position
        self._note(
            f"connected to {self.endpoint.url}"
            + (f", resuming after event {resumed}" if resumed is not None else "")
        )
        for message in sse_messages(response.readline, self.last_id):
            if isinstance(message, int):
                continue  # `retry:`: our own backoff decides
            if message.type == "gap":
                self._gap(message.data)
                continue
            if message.type != "message":
                continue
            self.last_id = message.id
            self._show(message.data)
            if self.count is not None and self.shown >= self.count:
                return True
        if self._stopped.is_set():
            return False
        raise _Retry("the tracer closed the connection")

    def _show(self, data: str) -> None:
        if self.json_lines:
            # Our server escapes control characters (json.dumps), another one might not: JSON
            # strings may not hold them raw, and \u-escaping keeps the line valid JSON.
            line = data if data.isprintable() else "".join(_json_escaped(c) for c in data)
        else:
            try:
                event = json.loads(data)
            except ValueError:
                self._note(f"not an event, skipped: {data[:80]!r}")
                return
            line = render(event, self.colour)
        try:
            self.out.write(line + "\n")
            self.out.flush()
        except BrokenPipeError:
            raise OutputClosed from None
        self.shown += 1

    def _gap(self, data: str) -> None:
        try:
            gap = json.loads(data)
        except ValueError:
            return
        missed = gap.get("missed")
        if gap.get("restarted"):
            lost = f"{missed} events of its new run were no longer kept" if missed else "replaying all of it"
            self._note(f"the tracer restarted since the last event seen; {lost}")
        else:
            count = f"{missed} events" if missed is not None else "events"
            self._note(f"missed {count} (any kind) that the tracer no longer kept for replay")

    def _note(self, message: str) -> None:
        self.err.write(f"watch: {terminal_safe(message)}\n")
        self.err.flush()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        sock, self._sock = self._sock, None
        if conn is not None:
            conn.close()
        if sock is not None:
            sock.close()


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None


def _retry_after(response: http.client.HTTPResponse) -> float:
    value = response.getheader("Retry-After", "")
    return float(value) if value.isdigit() else 0.0


def _describe(err: BaseException) -> str:
    if isinstance(err, TimeoutError | socket.timeout):
        return "no data or heartbeat from the tracer in time"
    if isinstance(err, OSError) and err.strerror:
        return f"connection failed: {err.strerror}"
    return f"connection failed: {err or type(err).__name__}"
