"""`oomtrace watch`: follow a node's live events from its `GET /events` stream.

One line per event for people (coloured on a terminal, never when piped or when NO_COLOR is
set), or the events' JSON with --json. Speaks Server-Sent Events; when the connection drops
it reconnects with exponential backoff and resumes after the last event it saw
(Last-Event-ID), so nothing the tracer still keeps is missed, and says so on stderr when the
tracer no longer had some of what was missed. Messages about the connection go to stderr, so
stdout carries only events.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TextIO
from urllib.parse import urlencode, urlsplit

from tracer import errors
from tracer.http.address import DEFAULT_PORT
from tracer.schema import KINDS, MEMCG_OOM, NEAR_OOM, OOM_KILL, SUMMARY
from tracer.timefmt import parse_rfc3339

DEFAULT_ADDRESS: Final = f"127.0.0.1:{DEFAULT_PORT}"
CONNECT_TIMEOUT_S: Final = 5.0
# Without a heartbeat header from the server: how long a silent connection is trusted.
IDLE_TIMEOUT_S: Final = 60.0
# A line longer than this is not from an oomtrace (an event is about 1.5 KB).
MAX_LINE_BYTES: Final = 1 << 20



class WatchError(Exception):
    """Something retrying will not fix (bad address, bad filter, not an oomtrace): exit 2."""


# --- command line ---------------------------------------------------------------------------


def _names(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",")]
    if any(not v for v in values):
        raise argparse.ArgumentTypeError(f"empty name in {text!r}")
    return values


def _kinds(text: str) -> list[str]:
    values = _names(text)
    for value in values:
        if value not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown event kind {value!r} (expected {', '.join(KINDS)})")
    return values


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1: {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "address",
        nargs="?",
        default=os.environ.get("OOMTRACE_WATCH_ADDRESS", DEFAULT_ADDRESS),
        help="the tracer's HTTP server (its --metrics-address): host:port, [ipv6]:port, host "
        f"(port {DEFAULT_PORT}) or http(s)://host:port[/prefix] (env OOMTRACE_WATCH_ADDRESS; "
        "default %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print each event as one JSON line")
    parser.add_argument(
        "--kind",
        action="extend",
        type=_kinds,
        metavar="KIND[,KIND]",
        help=f"only these kinds ({', '.join(KINDS)}); repeatable",
    )
    parser.add_argument(
        "--min-kind",
        choices=KINDS,
        help="only kinds at least this severe: near_oom < memcg_oom < oom_kill",
    )
    for name in ("namespace", "pod", "vm"):
        parser.add_argument(
            f"--{name}",
            action="extend",
            type=_names,
            metavar=f"{name.upper()}[,{name.upper()}]",
            help=f"only events of this {name} (repeatable)",
        )
    parser.add_argument(
        "--since",
        metavar="TIME|ID",
        help="first replay the recent events the tracer still keeps from this RFC 3339 time or "
        "after this event id (0: all it keeps)",
    )
    parser.add_argument("--count", type=_count, metavar="N", help="exit after N events")
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="auto (default): colour on a terminal unless NO_COLOR is set",
    )


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


# --- one line per event ---------------------------------------------------------------------

_RESET: Final = "\x1b[0m"
_STYLE: Final = {
    "time": "\x1b[2m",  # dim
    "who": "\x1b[1m",  # bold
    OOM_KILL: "\x1b[1;31m",  # bold red
    MEMCG_OOM: "\x1b[31m",  # red
    NEAR_OOM: "\x1b[33m",  # yellow
}


def use_colour(mode: str, stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """--color: always / never; auto: a terminal and no NO_COLOR (https://no-color.org)."""
    if mode != "auto":
        return mode == "always"
    if environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def human_bytes(n: object) -> str:
    if not isinstance(n, int | float):
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _clock(ts: object) -> str:
    """The event's time of day in the local zone, to the millisecond."""
    if isinstance(ts, str):
        with contextlib.suppress(ValueError):
            moment = datetime.fromtimestamp(parse_rfc3339(ts))
            return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    return "--:--:--.---"


def who(event: Mapping[str, Any]) -> str:
    """Whom the event is about: namespace/pod/container when enrichment named them, else the
    pod uid and container id from the cgroup path, a systemd unit, or the cgroup."""
    namespace, pod, container = event.get("namespace"), event.get("pod"), event.get("container")
    if namespace or pod:
        text = f"{namespace or '?'}/{pod or '?'}" + (f"/{container}" if container else "")
    elif event.get("pod_uid"):
        text = f"pod:{str(event['pod_uid'])[:8]}"
        if event.get("container_id"):
            text += f"/{str(event['container_id'])[:12]}"
    elif event.get("unit"):
        text = str(event["unit"])
    elif event.get("cgroup"):
        text = str(event["cgroup"])
    else:
        text = "-"
    if event.get("vm"):
        text += f" vm:{event['vm']}"
    return text


def _task(event: Mapping[str, Any], prefix: str) -> str | None:
    pid = event.get(f"{prefix}_pid")
    if pid is None:
        return None
    return f"{event.get(f'{prefix}_comm') or '?'}[{pid}]"


def _usage(event: Mapping[str, Any]) -> str | None:
    if event.get("usage_bytes") is None:
        return None
    return f"usage={human_bytes(event['usage_bytes'])}/{human_bytes(event.get('limit_bytes'))}"


def details(event: Mapping[str, Any]) -> str:
    kind = event.get("event")
    parts: list[str | None] = []
    if kind == OOM_KILL:
        victim = _task(event, "victim")
        parts.append(f"killed {victim}" if victim else "killed ?")
        for field in ("anon_rss_bytes", "file_rss_bytes", "shmem_rss_bytes"):
            if event.get(field) is not None:
                parts.append(f"{field.removesuffix('_bytes')}={human_bytes(event[field])}")
        for field in ("oom_score_adj", "constraint"):
            if event.get(field) is not None:
                parts.append(f"{field}={event[field]}")
        if event.get("trigger_pid") not in (None, event.get("victim_pid")):
            parts.append(f"trigger={_task(event, 'trigger')}")
    elif kind == MEMCG_OOM:
        parts.append(_usage(event))
        for field in ("failcnt", "order", "gfp_mask"):
            if event.get(field) is not None:
                parts.append(f"{field}={event[field]}")
        trigger = _task(event, "trigger")
        parts.append(f"trigger={trigger}" if trigger else None)
    elif kind == NEAR_OOM and event.get("phase") == SUMMARY:
        interval = event.get("interval_s")
        parts.append(f"{interval:g}s:" if isinstance(interval, int | float) else "summary:")
        if event.get("reclaim_calls") is not None:
            reclaim = f"reclaims={event['reclaim_calls']}"
            if event.get("reclaim_time_ns") is not None:
                reclaim += f" ({event['reclaim_time_ns'] / 1e6:.1f}ms)"
            parts.append(reclaim)
        if event.get("reclaimed_bytes") is not None:
            parts.append(f"reclaimed={human_bytes(event['reclaimed_bytes'])}")
        if event.get("charge_failures") is not None:
            parts.append(f"charge_failures={event['charge_failures']}")
        parts.append(_usage(event))
    elif kind == NEAR_OOM:
        parts.append("first charge failure:")
        parts.append(_usage(event))
        trigger = _task(event, "trigger")
        parts.append(f"trigger={trigger}" if trigger else None)
    return " ".join(p for p in parts if p)


def render(event: Mapping[str, Any], colour: bool = False) -> str:
    """One line: local time, kind, whom it is about, what happened."""

    def paint(style: str, text: str) -> str:
        return f"{_STYLE[style]}{text}{_RESET}" if colour and style in _STYLE else text

    kind = str(event.get("event"))
    when = paint("time", _clock(event.get("ts")))
    line = f"{when}  {paint(kind, f'{kind:<9}')}  {paint('who', who(event))}"
    rest = details(event)
    return f"{line}  {rest}" if rest else line


# --- Server-Sent Events ---------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    type: str  # "message" unless the server named it (e.g. "gap")
    data: str
    id: str | None  # the last event id after this message (SSE keeps it across messages)


def sse_messages(readline: Callable[[int], bytes], last_id: str | None = None) -> Iterator[Message | int]:
    """Parses an SSE stream (HTML Living Standard, "Interpreting an event stream"). Yields a
    Message per dispatched event and an int for each `retry:` (milliseconds); ends at EOF.
    Comments (the server's heartbeat) are skipped."""
    data: list[str] = []
    kind = ""
    while True:
        raw = readline(MAX_LINE_BYTES)
        if not raw:
            return  # EOF: an incomplete message is discarded, as the standard says
        if not raw.endswith(b"\n") and len(raw) >= MAX_LINE_BYTES:
            raise http.client.HTTPException("an event stream line is too long")
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                yield Message(kind or "message", "\n".join(data), last_id)
            data, kind = [], ""
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            kind = value
        elif field == "id" and "\0" not in value:
            last_id = value
        elif field == "retry" and value.isdigit():
            yield int(value)


# --- the client -----------------------------------------------------------------------------


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
        cls = http.client.HTTPSConnection if self.endpoint.scheme == "https" else http.client.HTTPConnection
        self._conn = conn = cls(self.endpoint.host, self.endpoint.port, timeout=CONNECT_TIMEOUT_S)
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
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
        raise WatchError(f"the tracer refused the request ({response.status}): {first}")

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
            line = data
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
        self.err.write(f"watch: {message}\n")
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


def watch(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`oomtrace watch`: runs until interrupted (or --count events); bad input exits 2."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        endpoint = parse_endpoint(args.address)
        if args.since is not None and not args.since.strip():
            raise WatchError("--since: empty value")
        watcher = Watcher(
            endpoint,
            query_string(args),
            out,
            err,
            json_lines=args.json,
            colour=use_colour(args.color, out),
            since=args.since,
            count=args.count,
        )
        return watcher.run()
    except WatchError as error:
        errors.report(str(error), err)
        return errors.EXIT_USAGE
    except OutputClosed:
        # Piped into `head` and so on: the reader has gone, which is not an error. Point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 0
