"""The Loki push sink (`oomtrace run --loki-url`): a bounded buffer, batches, one sender thread.

write() only appends to a batch under a lock and returns; one background thread cuts
batches by size and time and sends them, retrying 429 and 5xx with exponential backoff (a
Retry-After header wins). While Loki is unreachable events wait in a bounded buffer; past
its size the oldest batches are dropped and counted, and once Loki answers again the rest
arrive in the order they were written.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from prometheus_client import CollectorRegistry

from tracer.sinks.loki.accounting import DeliveryAccounting
from tracer.sinks.loki.config import LokiConfig
from tracer.sinks.loki.encoding import Entry, encode, stream_labels, timestamp_ns
from tracer.sinks.loki.push import PushConnection, Response, describe_error

# What the buffer charges per entry on top of its line: the Python objects that hold it (a
# tuple, an int, a str header, a list slot), so that --loki-buffer-bytes bounds real memory.
ENTRY_OVERHEAD_BYTES: Final = 160


class _Batch:
    __slots__ = ("body", "entries", "opened", "size")

    def __init__(self, opened: float) -> None:
        self.entries: list[Entry] = []
        self.size = 0
        self.opened = opened
        self.body: bytes | None = None  # encoded once, on its first attempt; kept for retries


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
        self._push = PushConnection(config)

        self._cond = threading.Condition()
        self._open: _Batch | None = None
        self._queue: deque[_Batch] = deque()  # sealed, oldest first; [0] is the one being sent
        self._size = 0  # bytes of _open and _queue
        self._inflight: _Batch | None = None  # never dropped while its request is on the wire
        self._closing = False
        self._close_deadline = 0.0
        self._finished = False

        registry = registry if registry is not None else CollectorRegistry()
        self._accounts = DeliveryAccounting(registry, lambda: self._size, config.buffer_bytes, clock)

        self._thread = threading.Thread(target=self._run, name="oomtrace-loki", daemon=True)

    def start(self) -> None:
        """Starts the sender thread: events written before it are kept in the buffer."""
        self._thread.start()

    # -- producer side (the event loop) --

    def flush(self) -> None:
        """Nothing to do per poll: batches leave on their own schedule (--loki-batch-*)."""

    def write(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":"), default=str)
        entry = (stream_labels(event), timestamp_ns(event), line)
        cost = len(line) + ENTRY_OVERHEAD_BYTES
        with self._cond:
            if self._closing:
                self._accounts.dropped("shutdown")
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
            self._accounts.dropped_for_space(len(batch.entries))

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
                    response = Response("encode_error", detail=describe_error(err))
                else:
                    response = self._push.post(batch.body, give_up=self._past_close_deadline)
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
                    notes = self._accounts.outcome(response, len(batch.entries), delay, self._finished)
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

    def _delay(self, attempt: int, response: Response) -> float:
        if response.retry_after_s is not None:
            return min(response.retry_after_s, self.config.max_retry_after_s)
        backoff = min(self.config.max_backoff_s, self.config.min_backoff_s * 2.0 ** (attempt - 1))
        return backoff * random.uniform(0.8, 1.0)  # jitter: nodes that failed together do not retry together

    def _say(self, level: str, message: str, **fields: Any) -> None:
        if self._log is not None:
            with contextlib.suppress(Exception):  # a broken stderr must not stop delivery
                getattr(self._log, level)(message, **fields)

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
            self._push.abort()  # stuck in a request past the deadline: cut its socket so the thread ends
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
            self._accounts.dropped("shutdown", left)
            self._say("warning", "loki: events not delivered before exit", events=left)
        self._push.close()
