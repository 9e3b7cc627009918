"""A sink that pushes events straight to Grafana Loki (`oomtrace run --loki-url`).

Loki's documented push API, `POST /loki/api/v1/push`: by default a snappy-compressed
protobuf `logproto.PushRequest`, or the JSON form with `--loki-encoding json`. The protobuf
is encoded here by hand from Loki's own schema (grafana/loki, pkg/push/push.proto):

    PushRequest   { repeated StreamAdapter streams = 1; }
    StreamAdapter { string labels = 1; repeated EntryAdapter entries = 2; }
    EntryAdapter  { google.protobuf.Timestamp timestamp = 1; string line = 2; }
    Timestamp     { int64 seconds = 1; int32 nanos = 2; }

and the body is compressed with snappy's block format (not the framed one), as Loki expects.

write() only appends to a batch under a lock and returns; one background thread cuts
batches by size and time and sends them, retrying 429 and 5xx with exponential backoff (a
Retry-After header wins). While Loki is unreachable events wait in a bounded buffer; past
its size the oldest batches are dropped and counted, and once Loki answers again the rest
arrive in the order they were written. Stream labels are few and bounded: job, node, kind
and, when enrichment set them, namespace and vm — never a pod UID, pid or cgroup id. Every
other field stays in the line, the same JSON object the tracer prints on stdout.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import email.utils
import http.client
import json
import random
import re
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge

from tracer import __version__
from tracer.cli import flagtypes
from tracer.timefmt import parse_rfc3339_ns

PUSH_PATH: Final = "/loki/api/v1/push"
ENCODINGS: Final = ("protobuf", "json")
JOB: Final = "oomtrace"
# Stream labels: label name → event key. Each has few values per cluster; Loki keeps one stream
# per distinct set, so a pod name, pod UID or pid here would make a stream per pod or per kill.
STREAM_LABELS: Final = (("node", "node"), ("kind", "event"), ("namespace", "namespace"), ("vm", "vm"))
LABEL_NAMES: Final = ("job", *(name for name, _key in STREAM_LABELS))

DROP_REASONS: Final = ("buffer_full", "rejected", "shutdown", "encode_error")
REQUEST_RESULTS: Final = ("success", "rate_limited", "server_error", "rejected", "network_error")

# What the buffer charges per entry on top of its line: the Python objects that hold it (a
# tuple, an int, a str header, a list slot), so that --loki-buffer-bytes bounds real memory.
ENTRY_OVERHEAD_BYTES: Final = 160
# Loki answers a push with an empty body or a short error; more than this is not read.
MAX_RESPONSE_BYTES: Final = 64 * 1024

_SIZE = re.compile(r"\s*([0-9]+)\s*(|b|B|k|K|KB|KiB|M|MB|MiB|G|GB|GiB)\s*")
_SIZE_UNITS: Final = {"": 1, "b": 1, "B": 1, "k": 1 << 10, "K": 1 << 10, "KB": 1 << 10, "KiB": 1 << 10}
_SIZE_UNITS.update({"M": 1 << 20, "MB": 1 << 20, "MiB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GiB": 1 << 30})


def parse_size(text: str) -> int:
    """`1048576`, `512KiB`, `1MiB`, `1G` → bytes (binary units); ValueError otherwise."""
    match = _SIZE.fullmatch(str(text))
    if not match:
        raise ValueError(f"not a size: {text!r} (expected bytes, or a number with KiB, MiB or GiB)")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


@dataclass(frozen=True)
class LokiConfig:
    url: str  # the push endpoint, or a base URL to which PUSH_PATH is added
    tenant: str | None = None  # X-Scope-OrgID
    username: str | None = None  # basic auth, with password
    password: str | None = None
    bearer_token: str | None = None
    ca_file: Path | None = None
    insecure_skip_verify: bool = False
    encoding: str = "protobuf"
    batch_bytes: int = 1 << 20  # a batch is sent when it would grow past this...
    batch_wait_s: float = 1.0  # ...or when its first entry is this old
    buffer_bytes: int = 8 << 20  # everything not yet delivered, batches and the open one
    timeout_s: float = 10.0  # per request
    min_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 300.0  # a longer Retry-After is cut to this
    close_timeout_s: float = 5.0  # how long close() may spend delivering what is buffered

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--loki-url: expected http(s)://host[:port][/path], got {self.url!r}")
        try:
            _ = parts.port
        except ValueError:
            raise ValueError(f"--loki-url: bad port in {self.url!r}") from None
        if parts.query or parts.fragment:
            raise ValueError(f"--loki-url: no query or fragment expected in {self.url!r}")
        if self.encoding not in ENCODINGS:
            raise ValueError(
                f"--loki-encoding: expected one of {', '.join(ENCODINGS)}, got {self.encoding!r}"
            )
        if (self.username is None) != (self.password is None):
            raise ValueError("--loki-username and --loki-password go together (basic auth)")
        if self.username is not None and self.bearer_token is not None:
            raise ValueError("--loki-bearer-token and --loki-username/--loki-password are exclusive")
        if self.tenant is not None and not self.tenant.strip():
            raise ValueError("--loki-tenant is empty")
        for name, value in (
            ("tenant", self.tenant),
            ("username", self.username),
            ("password", self.password),
            ("bearer-token", self.bearer_token),
        ):
            if value is not None and any(c in value for c in "\r\n"):
                raise ValueError(f"--loki-{name} contains a line break")
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"--loki-ca-file: no such file: {self.ca_file}")
        if (self.ca_file is not None or self.insecure_skip_verify) and parts.scheme != "https":
            raise ValueError("--loki-ca-file and --loki-insecure-skip-verify need an https:// --loki-url")
        if self.batch_bytes <= 0:
            raise ValueError("--loki-batch-bytes must be > 0")
        if not self.batch_wait_s > 0:
            raise ValueError("--loki-batch-wait must be > 0")
        if self.buffer_bytes < self.batch_bytes:
            raise ValueError(
                f"--loki-buffer-bytes ({self.buffer_bytes}) must be at least --loki-batch-bytes "
                f"({self.batch_bytes})"
            )
        for name in ("timeout_s", "min_backoff_s", "max_backoff_s", "close_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Loki {name} must be > 0")
        if self.ca_file is not None:
            try:
                ssl.create_default_context(cafile=str(self.ca_file))
            except (ssl.SSLError, OSError) as err:
                raise ValueError(f"--loki-ca-file: cannot load {self.ca_file}: {err}") from None

    @property
    def push_url(self) -> str:
        parts = urlsplit(self.url)
        path = parts.path if parts.path not in ("", "/") else PUSH_PATH
        return f"{parts.scheme}://{parts.netloc}{path}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if urlsplit(self.url).scheme != "https":
            return None
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/x-protobuf" if self.encoding == "protobuf" else "application/json",
            "User-Agent": f"oomtrace/{__version__}",
        }
        if self.tenant is not None:
            headers["X-Scope-OrgID"] = self.tenant
        if self.username is not None and self.password is not None:
            token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        elif self.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self.bearer_token}"
        return headers


# --- encoding -------------------------------------------------------------------------------

Labels = tuple[tuple[str, str], ...]  # sorted (name, value) pairs
Entry = tuple[Labels, int, str]  # stream labels, timestamp in ns since the epoch, line


def stream_labels(event: dict[str, Any]) -> Labels:
    """job, node, kind and (when known) namespace and vm; nothing else from the event."""
    pairs = [("job", JOB)]
    for name, key in STREAM_LABELS:
        value = event.get(key)
        if value is not None and value != "":
            pairs.append((name, str(value)))
    return tuple(sorted(pairs))


def timestamp_ns(event: dict[str, Any]) -> int:
    """The event's `ts` (RFC 3339 UTC) in ns since the epoch; now if it has none that parses."""
    ts = event.get("ts")
    if isinstance(ts, str):
        with contextlib.suppress(ValueError):
            return parse_rfc3339_ns(ts)
    return time.time_ns()


def label_string(labels: Labels) -> str:
    """Prometheus text form, as Loki's protobuf `labels` field wants: {a="1", b="x\\"y"}."""

    def quote(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ", ".join(f'{name}="{quote(value)}"' for name, value in labels) + "}"


def _by_stream(entries: Iterable[Entry]) -> dict[Labels, list[tuple[int, str]]]:
    streams: dict[Labels, list[tuple[int, str]]] = {}
    for labels, ts, line in entries:
        streams.setdefault(labels, []).append((ts, line))
    return streams


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _timestamp(ts_ns: int) -> bytes:
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    out = b""  # proto3: zero values are left out
    if seconds:
        out += _varint(1 << 3 | 0) + _varint(seconds)
    if nanos:
        out += _varint(2 << 3 | 0) + _varint(nanos)
    return out


def encode_protobuf(entries: Iterable[Entry]) -> bytes:
    """A logproto.PushRequest, uncompressed."""
    body = bytearray()
    for labels, values in _by_stream(entries).items():
        stream = bytearray(_field(1, label_string(labels).encode()))
        for ts, line in values:
            stream += _field(2, _field(1, _timestamp(ts)) + _field(2, line.encode()))
        body += _field(1, bytes(stream))
    return bytes(body)


def encode_json(entries: Iterable[Entry]) -> bytes:
    """{"streams": [{"stream": {labels}, "values": [["<ns>", "<line>"], ...]}]}"""
    streams = [
        {"stream": dict(labels), "values": [[str(ts), line] for ts, line in values]}
        for labels, values in _by_stream(entries).items()
    ]
    return json.dumps({"streams": streams}, separators=(",", ":")).encode()


def encode(entries: Iterable[Entry], encoding: str) -> bytes:
    """The request body for `encoding`: snappy(protobuf), or JSON."""
    if encoding == "json":
        return encode_json(entries)
    import cramjam  # only the protobuf encoding needs it

    return bytes(cramjam.snappy.compress_raw(encode_protobuf(entries)))


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header (delay-seconds or an HTTP date) in seconds from now; None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


# --- the sink -------------------------------------------------------------------------------


class _Batch:
    __slots__ = ("body", "entries", "opened", "size")

    def __init__(self, opened: float) -> None:
        self.entries: list[Entry] = []
        self.size = 0
        self.opened = opened
        self.body: bytes | None = None  # encoded once, on its first attempt; kept for retries


@dataclass(frozen=True)
class _Response:
    result: str  # one of REQUEST_RESULTS
    status: int | None = None
    retry_after_s: float | None = None
    detail: str = ""


class LokiSink:
    """Pushes events to Loki from a background thread; write() never waits for the network."""

    def __init__(
        self,
        config: LokiConfig,
        registry: CollectorRegistry | None = None,
        log: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._log = log
        self._clock = clock
        url = urlsplit(config.push_url)
        self._https = url.scheme == "https"
        self._host = url.hostname or ""
        self._port = url.port
        self._path = url.path
        self._ssl = config.ssl_context()
        self._headers = config.headers()
        self._conn: http.client.HTTPConnection | None = None

        self._cond = threading.Condition()
        self._open: _Batch | None = None
        self._queue: deque[_Batch] = deque()  # sealed, oldest first; [0] is the one being sent
        self._size = 0  # bytes of _open and _queue
        self._inflight: _Batch | None = None  # never dropped while its request is on the wire
        self._closing = False
        self._close_deadline = 0.0
        self._finished = False
        self._failing_since: float | None = None
        self._dropped_while_failing = 0
        self._drop_reported = False

        registry = registry if registry is not None else CollectorRegistry()
        self._sent = Counter(
            "oomtrace_loki_events_sent_total", "Events delivered to Loki.", registry=registry
        )
        self._dropped = Counter(
            "oomtrace_loki_events_dropped_total",
            "Events given up on: buffer_full (oldest dropped while Loki was unreachable), "
            "rejected (Loki answered 4xx other than 429), shutdown (undelivered at exit), "
            "encode_error (a bug: the batch could not be encoded).",
            ["reason"],
            registry=registry,
        )
        self._requests = Counter(
            "oomtrace_loki_requests_total", "Push requests to Loki, by result.", ["result"], registry=registry
        )
        buffered = Gauge(
            "oomtrace_loki_buffered_bytes",
            "Events waiting for Loki, in buffer bytes (see --loki-buffer-bytes).",
            registry=registry,
        )
        buffered.set_function(lambda: self._size)
        self._last_success = Gauge(
            "oomtrace_loki_last_success_timestamp_seconds",
            "Unix time of the last push Loki accepted.",
            registry=registry,
        )
        for reason in DROP_REASONS:
            self._dropped.labels(reason)
        for result in REQUEST_RESULTS:
            self._requests.labels(result)

        self._thread = threading.Thread(target=self._run, name="oomtrace-loki", daemon=True)

    def start(self) -> None:
        """Starts the sender thread: events written before it are kept in the buffer."""
        self._thread.start()

    # -- producer side (the event loop) --

    def write(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":"), default=str)
        entry = (stream_labels(event), timestamp_ns(event), line)
        cost = len(line) + ENTRY_OVERHEAD_BYTES
        with self._cond:
            if self._closing:
                self._dropped.labels("shutdown").inc()
                return
            batch = self._open
            if batch is not None and batch.entries and batch.size + cost > self.config.batch_bytes:
                self._seal()
                batch = None
            if batch is None:
                batch = self._open = _Batch(self._clock())
                self._cond.notify()  # the sender times the new batch
            batch.entries.append(entry)
            batch.size += cost
            self._size += cost
            if batch.size >= self.config.batch_bytes:
                self._seal()
            self._enforce_buffer_limit()

    def _seal(self) -> None:
        if self._open is not None and self._open.entries:
            self._queue.append(self._open)
            self._cond.notify()
        self._open = None

    def _enforce_buffer_limit(self) -> None:
        """Drop the oldest sealed batches until the buffer fits (not one whose request is on the wire)."""
        while self._size > self.config.buffer_bytes and self._queue:
            index = 1 if self._queue[0] is self._inflight else 0
            if index >= len(self._queue):
                return
            batch = self._queue[index]
            del self._queue[index]
            self._size -= batch.size
            self._dropped.labels("buffer_full").inc(len(batch.entries))
            self._dropped_while_failing += len(batch.entries)

    # -- sender side (background thread) --

    def _next_batch(self) -> _Batch | None:
        """Under the lock: the batch to send next, sealing the open one when it is due; None to stop."""
        while True:
            now = self._clock()
            if self._closing and now >= self._close_deadline:
                return None
            if self._queue:
                return self._queue[0]
            timeout: float | None = None
            if self._open is not None and self._open.entries:
                due = self._open.opened + self.config.batch_wait_s
                if self._closing or now >= due:
                    self._seal()
                    continue
                timeout = due - now
            elif self._closing:
                return None
            if self._closing:
                timeout = min(timeout if timeout is not None else 1e9, self._close_deadline - now)
            self._cond.wait(timeout)

    def _run(self) -> None:
        attempt = 0
        try:
            while True:
                with self._cond:
                    batch = self._next_batch()
                    if batch is None:
                        return
                    self._inflight = batch
                try:
                    if batch.body is None:  # sealed: no more entries are added to it
                        batch.body = encode(batch.entries, self.config.encoding)
                except Exception as err:  # a bug, not Loki's fault: retrying would not help
                    response = _Response("encode_error", detail=_describe(err))
                else:
                    response = self._post(batch.body)
                with self._cond:
                    self._inflight = None
                    delay = None
                    if response.result in ("success", "rejected", "encode_error"):
                        if self._queue and self._queue[0] is batch:
                            self._queue.popleft()
                            self._size -= batch.size
                        attempt = 0
                    else:
                        attempt += 1
                        delay = self._delay(attempt, response)
                    notes = self._account(response, batch, attempt, delay)
                for level, message, fields in notes:
                    self._say(level, message, **fields)
                if delay is not None:
                    self._sleep(delay)
        finally:
            self._finish()

    def _past_close_deadline(self) -> bool:
        return self._closing and self._clock() >= self._close_deadline

    def _sleep(self, delay: float) -> None:
        """Wait before a retry; close() shortens the wait to its deadline."""
        with self._cond:
            deadline = self._clock() + delay
            while True:
                end = min(deadline, self._close_deadline) if self._closing else deadline
                left = end - self._clock()
                if left <= 0:
                    return
                self._cond.wait(left)

    def _delay(self, attempt: int, response: _Response) -> float:
        if response.retry_after_s is not None:
            return min(response.retry_after_s, self.config.max_retry_after_s)
        backoff = min(self.config.max_backoff_s, self.config.min_backoff_s * 2.0 ** (attempt - 1))
        return backoff * random.uniform(0.8, 1.0)  # jitter: nodes that failed together do not retry together

    def _account(
        self, response: _Response, batch: _Batch, attempt: int, delay: float | None
    ) -> list[tuple[str, str, dict[str, Any]]]:
        """Under the lock: counters for the outcome, and diagnostics for state changes (not per retry)."""
        notes: list[tuple[str, str, dict[str, Any]]] = []
        n = len(batch.entries)
        if response.result in REQUEST_RESULTS:  # an encode error never became a request
            self._requests.labels(response.result).inc()
        if response.result == "success":
            self._sent.inc(n)
            self._last_success.set(time.time())
            if self._failing_since is not None:
                notes.append(
                    (
                        "info",
                        "loki push recovered",
                        {
                            "after_s": round(self._clock() - self._failing_since, 3),
                            "dropped_meanwhile": self._dropped_while_failing,
                        },
                    )
                )
                self._failing_since = None
            self._dropped_while_failing = 0
            self._drop_reported = False
        elif response.result == "encode_error":
            self._dropped.labels("encode_error").inc(n)
            notes.append(("error", "loki: could not encode a batch", {"events": n, "error": response.detail}))
        elif response.result == "rejected":
            self._dropped.labels("rejected").inc(n)
            notes.append(
                (
                    "error",
                    "loki rejected a batch; not retrying it",
                    {
                        "status": response.status,
                        "events": n,
                        "response": response.detail,
                    },
                )
            )
        elif self._finished:  # a request that outlived close(): nobody will retry it
            self._dropped.labels("shutdown").inc(n)
        else:
            if self._failing_since is None:
                self._failing_since = self._clock()
                notes.append(
                    (
                        "warning",
                        "loki push failed; retrying with backoff, buffering meanwhile",
                        {
                            "result": response.result,
                            "status": response.status,
                            "error": response.detail or None,
                            "retry_in_s": None if delay is None else round(delay, 3),
                        },
                    )
                )
            if self._dropped_while_failing and not self._drop_reported:
                self._drop_reported = True
                notes.append(
                    (
                        "warning",
                        "loki buffer full; dropping the oldest events",
                        {
                            "buffer_bytes": self.config.buffer_bytes,
                        },
                    )
                )
        return notes

    def _say(self, level: str, message: str, **fields: Any) -> None:
        if self._log is not None:
            with contextlib.suppress(Exception):  # a broken stderr must not stop delivery
                getattr(self._log, level)(message, **fields)

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.config.timeout_s, context=self._ssl
                )
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.config.timeout_s)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _post(self, body: bytes) -> _Response:
        # A kept-alive connection the server has since closed fails at once: one fresh retry.
        for fresh in (self._conn is None, True):
            conn = self._connection()
            try:
                conn.request("POST", self._path, body=body, headers=self._headers)
                reply = conn.getresponse()
                detail = reply.read(MAX_RESPONSE_BYTES)
                if not reply.isclosed() or reply.getheader("Connection", "").lower() == "close":
                    self._drop_connection()
            except Exception as err:  # OSError, HTTPException, ssl errors: all mean "not delivered"
                self._drop_connection()
                if fresh or self._past_close_deadline() or not isinstance(err, ConnectionError):
                    return _Response("network_error", detail=_describe(err))
                continue
            return _classify(reply.status, reply.getheader("Retry-After"), detail)
        raise AssertionError("unreachable")

    # -- shutdown --

    def close(self) -> None:
        """Deliver what is buffered, for at most close_timeout_s; the rest is counted as dropped."""
        with self._cond:
            if not self._closing:
                self._closing = True
                self._close_deadline = self._clock() + self.config.close_timeout_s
                self._cond.notify_all()
        if self._thread.ident is None:  # closed without start(): the thread still delivers what is buffered
            self._thread.start()
        self._thread.join(self.config.close_timeout_s + 0.2)
        if self._thread.is_alive():
            # Stuck in a request past the deadline: cut its socket so the thread ends.
            conn = self._conn
            sock = conn.sock if conn is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._thread.join(1.0)
        self._finish()

    def _finish(self) -> None:
        with self._cond:
            if self._finished or not self._closing:
                return
            self._finished = True
            # The batch whose request is still on the wire is counted when that request ends.
            left = sum(len(b.entries) for b in self._queue if b is not self._inflight)
            left += len(self._open.entries) if self._open else 0
            self._queue.clear()
            self._open = None
            self._size = 0
        if left:
            self._dropped.labels("shutdown").inc(left)
            self._say("warning", "loki: events not delivered before exit", events=left)
        self._drop_connection()


def _classify(status: int, retry_after: str | None, body: bytes) -> _Response:
    detail = body[:200].decode("utf-8", "replace").strip()
    if 200 <= status < 300:
        return _Response("success", status)
    if status == 429:
        return _Response("rate_limited", status, retry_after_s(retry_after), detail)
    if status >= 500:
        return _Response("server_error", status, retry_after_s(retry_after), detail)
    return _Response("rejected", status, None, detail)


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


# --- command line ---------------------------------------------------------------------------


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The --loki-* flags of `oomtrace run`; each can also be set as OOMTRACE_LOKI_*."""
    group = parser.add_argument_group(
        "Loki", "push events straight to Loki (the alternative to a log shipper reading stdout)"
    )
    group.add_argument(
        "--loki-url",
        metavar="URL",
        default=flagtypes.env("LOKI_URL"),
        help=f"Loki base URL or push endpoint, e.g. http://loki:3100 ({PUSH_PATH} is added)",
    )
    group.add_argument(
        "--loki-tenant", metavar="TENANT", default=flagtypes.env("LOKI_TENANT"), help="X-Scope-OrgID header"
    )
    group.add_argument(
        "--loki-username", metavar="USER", default=flagtypes.env("LOKI_USERNAME"), help="basic auth user"
    )
    group.add_argument(
        "--loki-password",
        metavar="PASSWORD",
        default=flagtypes.env("LOKI_PASSWORD"),
        help="basic auth password; prefer env OOMTRACE_LOKI_PASSWORD (a command line is visible to ps)",
    )
    group.add_argument(
        "--loki-bearer-token",
        metavar="TOKEN",
        default=flagtypes.env("LOKI_BEARER_TOKEN"),
        help="bearer token; prefer env OOMTRACE_LOKI_BEARER_TOKEN",
    )
    group.add_argument(
        "--loki-ca-file",
        metavar="FILE",
        type=Path,
        default=flagtypes.env("LOKI_CA_FILE"),
        help="PEM CA bundle to verify Loki's certificate (default: the system's)",
    )
    group.add_argument(
        "--loki-insecure-skip-verify",
        action="store_true",
        default=flagtypes.env("LOKI_INSECURE_SKIP_VERIFY", "") == "1",
        help="do not verify Loki's TLS certificate (testing only)",
    )
    group.add_argument(
        "--loki-encoding",
        choices=ENCODINGS,
        default=flagtypes.env("LOKI_ENCODING", "protobuf"),
        help="protobuf (snappy-compressed, Loki's native push format) or json (default %(default)s)",
    )
    group.add_argument(
        "--loki-batch-bytes",
        metavar="BYTES",
        type=_size_arg,
        default=flagtypes.env("LOKI_BATCH_BYTES", "1MiB"),
        help="send a batch when it reaches this size (default 1MiB)",
    )
    group.add_argument(
        "--loki-batch-wait",
        metavar="SECONDS",
        type=flagtypes.positive_seconds,
        default=flagtypes.env("LOKI_BATCH_WAIT", "1.0"),
        help="...or when its oldest event is this many seconds old (default 1.0)",
    )
    group.add_argument(
        "--loki-buffer-bytes",
        metavar="BYTES",
        type=_size_arg,
        default=flagtypes.env("LOKI_BUFFER_BYTES", "8MiB"),
        help="at most this much waits for Loki; past it the oldest batches are dropped and counted "
        "(default 8MiB)",
    )


def config_from_args(args: argparse.Namespace) -> LokiConfig | None:
    """The sink's configuration, None without --loki-url; ValueError (one line) for bad input."""
    url = args.loki_url
    if not url:
        given = [
            flag
            for flag, value in (
                ("--loki-tenant", args.loki_tenant),
                ("--loki-username", args.loki_username),
                ("--loki-password", args.loki_password),
                ("--loki-bearer-token", args.loki_bearer_token),
                ("--loki-ca-file", args.loki_ca_file),
                ("--loki-insecure-skip-verify", args.loki_insecure_skip_verify),
            )
            if value
        ]
        if given:
            raise ValueError(f"{', '.join(given)} given without --loki-url")
        return None
    return LokiConfig(
        url=url,
        tenant=args.loki_tenant,
        username=args.loki_username,
        password=args.loki_password,
        bearer_token=args.loki_bearer_token,
        ca_file=Path(args.loki_ca_file) if args.loki_ca_file else None,
        insecure_skip_verify=bool(args.loki_insecure_skip_verify),
        encoding=args.loki_encoding,
        batch_bytes=int(args.loki_batch_bytes),
        batch_wait_s=float(args.loki_batch_wait),
        buffer_bytes=int(args.loki_buffer_bytes),
    )
