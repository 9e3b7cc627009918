"""The Loki sink's counters, and the few diagnostics it logs when delivery fails, recovers or drops.

Every event written is, in the end, sent or dropped for one of DROP_REASONS; the diagnostics
mark state changes (not each retry), so an outage is one warning and one recovery line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge

from tracer.sinks.loki.push import REQUEST_RESULTS, Response

DROP_REASONS: Final = ("buffer_full", "rejected", "shutdown", "encode_error")

Note = tuple[str, str, dict[str, Any]]  # log level, message, fields


class DeliveryAccounting:
    """Not thread-safe: the sink calls it under its own lock."""

    def __init__(
        self,
        registry: CollectorRegistry,
        buffered_bytes: Callable[[], float],
        buffer_bytes: int,
        clock: Callable[[], float],
    ) -> None:
        self._buffer_bytes = buffer_bytes
        self._clock = clock
        self._failing_since: float | None = None
        self._dropped_while_failing = 0
        self._drop_reported = False

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
        buffered.set_function(buffered_bytes)
        self._last_success = Gauge(
            "oomtrace_loki_last_success_timestamp_seconds",
            "Unix time of the last push Loki accepted.",
            registry=registry,
        )
        for reason in DROP_REASONS:
            self._dropped.labels(reason)
        for result in REQUEST_RESULTS:
            self._requests.labels(result)

    def dropped(self, reason: str, events: int = 1) -> None:
        self._dropped.labels(reason).inc(events)

    def dropped_for_space(self, events: int) -> None:
        """The oldest events, dropped to keep the buffer within --loki-buffer-bytes."""
        self._dropped.labels("buffer_full").inc(events)
        self._dropped_while_failing += events

    def outcome(self, response: Response, events: int, delay: float | None, finished: bool) -> list[Note]:
        """Counters for a batch's outcome, and diagnostics for state changes (not per retry)."""
        notes: list[Note] = []
        if response.result in REQUEST_RESULTS:  # an encode error never became a request
            self._requests.labels(response.result).inc()
        if response.result == "success":
            self._sent.inc(events)
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
            self._dropped.labels("encode_error").inc(events)
            notes.append(
                ("error", "loki: could not encode a batch", {"events": events, "error": response.detail})
            )
        elif response.result == "rejected":
            self._dropped.labels("rejected").inc(events)
            notes.append(
                (
                    "error",
                    "loki rejected a batch; not retrying it",
                    {
                        "status": response.status,
                        "events": events,
                        "response": response.detail,
                    },
                )
            )
        elif finished:  # a request that outlived close(): nobody will retry it
            self._dropped.labels("shutdown").inc(events)
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
                            "buffer_bytes": self._buffer_bytes,
                        },
                    )
                )
        return notes
