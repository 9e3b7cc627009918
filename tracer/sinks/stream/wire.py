"""The two wire formats of /events, Server-Sent Events and NDJSON: content negotiation, one event,
and the gap record that tells a resuming client what it missed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

# What SSE clients wait before reconnecting (the `retry:` field); `oomtrace watch` backs off from it.
SSE_RETRY_MS: Final = 2000

SSE: Final = "sse"
NDJSON: Final = "ndjson"
CONTENT_TYPES: Final = {SSE: "text/event-stream; charset=utf-8", NDJSON: "application/x-ndjson"}
# Media types each format answers to in Accept (besides */*).
_MEDIA_TYPES: Final = {
    SSE: ("text/event-stream", "text/*"),
    NDJSON: (
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/json",
        "application/*",
    ),
}
# Response headers: the heartbeat interval, so clients can tell a dead connection from a quiet
# one; and the id of the newest event when the stream started, so a client that has received
# nothing yet can still resume from where it started (Last-Event-ID) without a gap.
HEARTBEAT_HEADER: Final = "Oomtrace-Heartbeat-Seconds"
POSITION_HEADER: Final = "Oomtrace-Last-Event-Id"


@dataclass(frozen=True, slots=True)
class Entry:
    """One published event: what the filters look at, and its JSON, serialised once."""

    id: int
    kind: str
    namespace: str | None
    pod: str | None
    vm: str | None
    ts_s: float | None  # the event's `ts` as Unix time
    json: str


def negotiate(accept: str) -> str | None:
    """The stream format an Accept header asks for (RFC 9110 q-values); None if neither fits.

    No Accept, `*/*` and JSON types get NDJSON; `text/event-stream` (what EventSource sends)
    gets SSE. At equal q the more specific match wins, then NDJSON.
    """
    if not accept.strip():
        return NDJSON
    best: dict[str, tuple[int, float]] = {}  # format → (specificity of its best match, q)
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        media = media.lower()
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        for fmt, types in _MEDIA_TYPES.items():
            if media == "*/*":
                specificity = 0
            elif media in types:
                specificity = 1 if media.endswith("/*") else 2
            else:
                continue
            if fmt not in best or specificity > best[fmt][0]:
                best[fmt] = (specificity, q)
    ranked = sorted(
        ((q, specificity, fmt == NDJSON, fmt) for fmt, (specificity, q) in best.items() if q > 0),
        reverse=True,
    )
    return ranked[0][3] if ranked else None


# --- wire formats ---------------------------------------------------------------------------


def sse_event(entry: Entry) -> str:
    # json.dumps escapes newlines, so the event is one `data:` line.
    return f"id: {entry.id}\ndata: {entry.json}\n\n"


def ndjson_event(entry: Entry) -> str:
    # The id goes first, spliced into the JSON serialised once at write() time (always `{"event": …`).
    return f'{{"id": {entry.id}, {entry.json[1:]}\n'


@dataclass(frozen=True)
class Gap:
    """Events a resuming client asked for that the replay buffer no longer has."""

    after_id: int | None  # the client's last id (None when it resumed by time)
    next_id: int  # the first id it can still get
    missed: int | None  # events of any kind it missed (before filtering); None: unknown
    restarted: bool  # the client's id is from an earlier run of the tracer

    def as_dict(self) -> dict[str, Any]:
        return {
            "after_id": self.after_id,
            "next_id": self.next_id,
            "missed": self.missed,
            "restarted": self.restarted,
        }


def sse_gap(gap: Gap) -> str:
    return f"event: gap\ndata: {json.dumps(gap.as_dict())}\n\n"


def ndjson_gap(gap: Gap) -> str:
    return json.dumps({"gap": gap.as_dict()}) + "\n"
