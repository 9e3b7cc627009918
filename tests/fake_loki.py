"""A stand-in for Grafana Loki's push endpoint, on a loopback port, for the Loki sink's tests.

No Loki server is installable here (Debian 12 has none; PyPI and npm ship none), so this
speaks the shapes Loki documents for `POST /loki/api/v1/push` (grafana/loki docs
"Push log entries to Loki", and pkg/push/push.proto):

- `Content-Type: application/x-protobuf`: a snappy *block*-compressed `logproto.PushRequest`.
  It is decoded here independently of tracer/sinks/loki/encoding.py: snappy by the small decoder
  below (written from the format description, google/snappy format_description.txt), the
  protobuf by the `protobuf` package from descriptors built from push.proto's field numbers.
- `Content-Type: application/json`: `{"streams": [{"stream": {...}, "values": [["<ns>", "<line>"]]}]}`.

A successful push is answered `204 No Content`, as Loki does. It can be made slow, down
(nothing listening: connection refused), or answer 429 (with Retry-After) or 5xx on demand.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

PUSH_PATH = "/loki/api/v1/push"


def _push_request_class() -> Any:
    """logproto.PushRequest from Loki's pkg/push/push.proto (the fields a client sends)."""
    fd = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="push.proto",
        package="logproto",
        syntax="proto3",
        dependency=["google/protobuf/timestamp.proto"],
    )

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        msg = proto.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = msg.field.add(name=fname, number=number, type=ftype, label=label)  # type: ignore[arg-type]
            if type_name:
                f.type_name = type_name

    opt, rep = fd.LABEL_OPTIONAL, fd.LABEL_REPEATED
    message("PushRequest", ("streams", 1, fd.TYPE_MESSAGE, rep, ".logproto.StreamAdapter"))
    message(
        "StreamAdapter",
        ("labels", 1, fd.TYPE_STRING, opt, ""),
        ("entries", 2, fd.TYPE_MESSAGE, rep, ".logproto.EntryAdapter"),
        ("hash", 3, fd.TYPE_UINT64, opt, ""),
    )
    message("LabelPairAdapter", ("name", 1, fd.TYPE_STRING, opt, ""), ("value", 2, fd.TYPE_STRING, opt, ""))
    message(
        "EntryAdapter",
        ("timestamp", 1, fd.TYPE_MESSAGE, opt, ".google.protobuf.Timestamp"),
        ("line", 2, fd.TYPE_STRING, opt, ""),
        ("structuredMetadata", 3, fd.TYPE_MESSAGE, rep, ".logproto.LabelPairAdapter"),
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(timestamp_pb2.DESCRIPTOR.serialized_pb))
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("logproto.PushRequest"))


PushRequest = _push_request_class()


def snappy_decompress(data: bytes) -> bytes:
    """Snappy block format: a varint length, then literals and back-references."""
    pos, length, shift = 0, 0, 0
    while True:
        byte = data[pos]
        pos += 1
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    out = bytearray()
    while pos < len(data):
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            n = tag >> 2
            if n >= 60:
                extra = n - 59
                n = int.from_bytes(data[pos : pos + extra], "little")
                pos += extra
            n += 1
            out += data[pos : pos + n]
            pos += n
            continue
        if kind == 1:
            n = ((tag >> 2) & 7) + 4
            offset = (tag >> 5) << 8 | data[pos]
            pos += 1
        elif kind == 2:
            n = (tag >> 2) + 1
            offset = int.from_bytes(data[pos : pos + 2], "little")
            pos += 2
        else:
            n = (tag >> 2) + 1
            offset = int.from_bytes(data[pos : pos + 4], "little")
            pos += 4
        if not 0 < offset <= len(out):
            raise ValueError(f"snappy: bad copy offset {offset}")
        for _ in range(n):  # byte by byte: a copy may overlap its own output
            out.append(out[-offset])
    if len(out) != length:
        raise ValueError(f"snappy: declared {length} bytes, got {len(out)}")
    return bytes(out)


_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')


def parse_labels(text: str) -> dict[str, str]:
    """`{a="1", b="x\\"y"}` (Prometheus text form, as in StreamAdapter.labels) → a dict."""
    if not (text.startswith("{") and text.endswith("}")):
        raise ValueError(f"labels not in braces: {text!r}")
    body, labels, pos = text[1:-1], {}, 0
    while pos < len(body):
        match = _LABEL.match(body, pos)
        if not match:
            raise ValueError(f"bad labels at {pos}: {text!r}")
        value = re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), match.group(2))
        labels[match.group(1)] = value
        pos = match.end()
    return labels


@dataclass
class Entry:
    labels: dict[str, str]
    ts_ns: int
    line: str

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.line)
        return parsed


@dataclass
class Request:
    at: float  # time.monotonic() when it arrived
    headers: dict[str, str]
    status: int  # what we answered
    entries: list[Entry] = field(default_factory=list)
    body_bytes: int = 0
    raw_bytes: int = 0  # decompressed size for protobuf


def decode_push(content_type: str, body: bytes) -> tuple[list[Entry], int]:
    if content_type == "application/x-protobuf":
        raw = snappy_decompress(body)
        request = PushRequest.FromString(raw)
        entries = [
            Entry(parse_labels(stream.labels), e.timestamp.seconds * 10**9 + e.timestamp.nanos, e.line)
            for stream in request.streams
            for e in stream.entries
        ]
        return entries, len(raw)
    if content_type == "application/json":
        doc = json.loads(body)
        entries = []
        for stream in doc["streams"]:
            labels = stream["stream"]
            assert isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())
            for ts, line in stream["values"]:
                assert isinstance(ts, str) and ts.isdigit(), f"timestamp must be a string of ns: {ts!r}"
                assert isinstance(line, str)
                entries.append(Entry(dict(labels), int(ts), line))
        return entries, len(body)
    raise ValueError(f"unsupported Content-Type {content_type!r}")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as Loki's server does

    def setup(self) -> None:
        super().setup()
        self.server.loki.track(self.connection)

    def do_POST(self) -> None:
        loki = self.server.loki
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if loki.delay_s:
            time.sleep(loki.delay_s)
        status, extra = loki.next_answer()
        request = Request(time.monotonic(), headers, status, body_bytes=len(body))
        if self.path != PUSH_PATH:
            status, extra = 404, {}
        elif status == 204:
            try:
                request.entries, request.raw_bytes = decode_push(headers.get("content-type", ""), body)
            except Exception as err:  # a payload Loki would refuse: answer as Loki does, and remember
                loki.errors.append(f"{type(err).__name__}: {err}")
                status, extra = 400, {}
        request.status = status
        loki.record(request)
        payload = b"" if status == 204 else f"status {status}\n".encode()
        self.send_response(status)
        for key, value in extra.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, loki: FakeLoki) -> None:
        self.loki = loki
        super().__init__(("127.0.0.1", port), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.loki.tls is not None:
            sock.settimeout(5)
            sock = self.loki.tls.wrap_socket(sock, server_side=True)  # a failed handshake: OSError
        return sock, addr


class FakeLoki:
    """Loki's push endpoint on 127.0.0.1; every decoded request is kept in `requests`."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.delay_s = 0.0
        self.requests: list[Request] = []
        self.errors: list[str] = []
        self._answers: list[tuple[int, dict[str, str]]] = []
        self._cond = threading.Condition()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def up(self) -> None:
        assert self._server is None
        self._server = _Server(self.port, self)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def down(self) -> None:
        """Stop listening and cut every open connection: the client sees connection refused."""
        server, self._server = self._server, None
        assert server is not None
        server.shutdown()
        server.server_close()
        with self._cond:
            for sock in self._connections:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._connections.clear()

    def close(self) -> None:
        if self._server is not None:
            self.down()

    def answer(self, status: int, times: int = 1, headers: dict[str, str] | None = None) -> None:
        """Answer the next `times` pushes with `status` (e.g. 429 with Retry-After, 500)."""
        with self._cond:
            self._answers += [(status, headers or {})] * times

    def next_answer(self) -> tuple[int, dict[str, str]]:
        with self._cond:
            return self._answers.pop(0) if self._answers else (204, {})

    def track(self, sock: socket.socket) -> None:
        with self._cond:
            self._connections.add(sock)

    def record(self, request: Request) -> None:
        with self._cond:
            self.requests.append(request)
            self._cond.notify_all()

    @property
    def accepted(self) -> list[Request]:
        with self._cond:
            return [r for r in self.requests if r.status == 204]

    @property
    def entries(self) -> list[Entry]:
        """Every entry Loki accepted, in arrival order."""
        return [e for r in self.accepted for e in r.entries]

    def wait(self, predicate: Callable[[FakeLoki], bool], timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"fake Loki: condition not met within {timeout_s}s; "
                        f"{len(self.requests)} requests, errors {self.errors}"
                    )
                self._cond.wait(min(left, 0.05))

    def wait_for_entries(self, n: int, timeout_s: float = 5.0) -> list[Entry]:
        self.wait(lambda loki: sum(len(r.entries) for r in loki.requests if r.status == 204) >= n, timeout_s)
        return self.entries
