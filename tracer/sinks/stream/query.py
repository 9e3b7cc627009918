"""What a /events client asks for: the query string and Last-Event-ID, parsed into a filter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs

from tracer.schema import KINDS, MEMCG_OOM, NEAR_OOM, OOM_KILL
from tracer.sinks.stream.wire import CONTENT_TYPES, Entry
from tracer.timefmt import parse_rfc3339

# min_kind: an event kind passes if it is at least this severe.
SEVERITY: Final = {NEAR_OOM: 0, MEMCG_OOM: 1, OOM_KILL: 2}
QUERY_PARAMS: Final = ("kind", "min_kind", "namespace", "pod", "vm", "since", "format")


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
