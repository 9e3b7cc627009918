"""Events as Loki entries, and entries as the two push bodies Loki documents.

The protobuf is encoded here by hand from Loki's own schema (grafana/loki, pkg/push/push.proto):

    PushRequest   { repeated StreamAdapter streams = 1; }
    StreamAdapter { string labels = 1; repeated EntryAdapter entries = 2; }
    EntryAdapter  { google.protobuf.Timestamp timestamp = 1; string line = 2; }
    Timestamp     { int64 seconds = 1; int32 nanos = 2; }

and the body is compressed with snappy's block format (not the framed one), as Loki expects.
Stream labels are few and bounded: job, node, kind and, when enrichment set them, namespace
and vm — never a pod UID, pid or cgroup id. Every other field stays in the line.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable
from typing import Any, Final

from tracer.timefmt import parse_rfc3339_ns

JOB: Final = "oomtrace"
# Stream labels: label name → event key. Each has few values per cluster; Loki keeps one stream
# per distinct set, so a pod name, pod UID or pid here would make a stream per pod or per kill.
STREAM_LABELS: Final = (("node", "node"), ("kind", "event"), ("namespace", "namespace"), ("vm", "vm"))
LABEL_NAMES: Final = ("job", *(name for name, _key in STREAM_LABELS))

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
