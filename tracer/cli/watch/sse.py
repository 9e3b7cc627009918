"""Server-Sent Events as `GET /events` speaks them: messages from a byte stream."""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

# A line longer than this is not from an oomtrace (an event is about 1.5 KB).
MAX_LINE_BYTES: Final = 1 << 20


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


