"""The Kubernetes Events sink: plans on the event loop, sends from one background thread.

write() only plans (pure, in memory) and queues; the stdout line of the same event was
already written by the sink before it. A slow, hung or refusing API server delays nothing:
the queue is bounded, a series update waiting in it is replaced by a newer one, and what
cannot be queued or sent is counted in `oomtrace_kube_events_total{result}` and logged at
most once a minute per problem.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter

from tracer.enrich.kube.source import Complaints, Log, log_nothing
from tracer.sinks.kube_events.series import Action, EventPlanner
from tracer.sinks.kube_events.writer import EventWriteError
from tracer.timefmt import now_rfc3339

DEFAULT_QUEUE: Final = 256
CLOSE_WAIT_S: Final = 2.0
CREATED, PATCHED, FAILED, DROPPED = "created", "patched", "failed", "dropped"


class EventWriter(Protocol):
    def send(self, verb: str, namespace: str, name: str, body: dict[str, Any]) -> None: ...


class KubeEventsSink:
    def __init__(
        self,
        planner: EventPlanner,
        writer: EventWriter,
        registry: CollectorRegistry,
        log: Log | None = None,
        queue_size: int = DEFAULT_QUEUE,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], str] = now_rfc3339,
    ) -> None:
        self._planner = planner
        self._writer = writer
        self._complain = Complaints(log or log_nothing)
        self._queue_size = queue_size
        self._clock = clock
        self._wall = wall
        self._cond = threading.Condition()
        # Keyed by (verb, namespace, name): a patch already waiting is replaced by a newer one.
        self._queue: OrderedDict[tuple[str, str, str], Action] = OrderedDict()
        self._closing = False
        self._busy = False
        self._results = Counter(
            "oomtrace_kube_events",
            "Kubernetes Events oomtrace created or updated, or could not (failed: the API server "
            "refused or did not answer; dropped: the queue was full or oomtrace stopped)",
            ["reason", "result"],
            registry=registry,
        )
        self._thread = threading.Thread(target=self._run, name="oomtrace-kube-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def write(self, event: dict[str, Any]) -> None:
        if event.get("event") not in ("oom_kill", "near_oom"):
            return
        with self._cond:
            actions = self._planner.plan(event, self._clock(), self._wall())
            for action in actions:
                key = (action.verb, action.namespace, action.name)
                if self._closing:
                    self._results.labels(action.reason, DROPPED).inc()
                elif key in self._queue and action.verb == "patch":
                    self._queue[key] = action  # the newer count and time
                elif len(self._queue) >= self._queue_size:
                    self._results.labels(action.reason, DROPPED).inc()
                    self._complain("kubernetes events: queue full, events dropped (API server slow?)")
                else:
                    self._queue[key] = action
                    self._cond.notify()

    def flush(self) -> None:
        """Nothing: the sender thread sends as soon as it can."""

    def close(self) -> None:
        deadline = self._clock() + CLOSE_WAIT_S
        with self._cond:
            while (self._queue or self._busy) and self._clock() < deadline:
                self._cond.wait(0.05)
            self._closing = True
            for action in self._queue.values():
                self._results.labels(action.reason, DROPPED).inc()
            self._queue.clear()
            self._cond.notify_all()
        self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                _, action = self._queue.popitem(last=False)
                self._busy = True
            try:
                self._send(action)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _send(self, action: Action) -> None:
        try:
            self._writer.send(action.verb, action.namespace, action.name, action.body)
        except EventWriteError as err:
            self._results.labels(action.reason, FAILED).inc()
            self._complain(f"kubernetes events: {err}")
            if action.verb == "create":
                with self._cond:
                    self._planner.forget(action.namespace, action.name)
            return
        except Exception as err:  # a writer bug must not end the thread
            self._results.labels(action.reason, FAILED).inc()
            self._complain(f"kubernetes events: {type(err).__name__}: {err}")
            return
        self._results.labels(action.reason, CREATED if action.verb == "create" else PATCHED).inc()
