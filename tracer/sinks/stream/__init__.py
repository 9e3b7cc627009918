"""The live event stream behind `GET /events`: the hub (a Sink), client queries and wire formats.

tracer.http.events serves it over HTTP.
"""

from tracer.sinks.stream.hub import (
    DEFAULT_CLIENT_QUEUE,
    DEFAULT_HEARTBEAT_S,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_REPLAY,
    DROP_REASONS,
    StreamClosed,
    StreamFull,
    StreamHub,
    Subscription,
)
from tracer.sinks.stream.query import SEVERITY, EventFilter, QueryError, StreamQuery, parse_query
from tracer.sinks.stream.wire import NDJSON, SSE, Entry, negotiate

__all__ = [
    "DEFAULT_CLIENT_QUEUE",
    "DEFAULT_HEARTBEAT_S",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_REPLAY",
    "DROP_REASONS",
    "NDJSON",
    "SEVERITY",
    "SSE",
    "Entry",
    "EventFilter",
    "QueryError",
    "StreamClosed",
    "StreamFull",
    "StreamHub",
    "StreamQuery",
    "Subscription",
    "negotiate",
    "parse_query",
]
