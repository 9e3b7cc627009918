"""What both pod sources share: the source protocol, single-flight refreshes, failures, logging."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol

from tracer.enrich.failures import ERROR, FORBIDDEN, UNAUTHORIZED, UNAVAILABLE

SERVICE_ACCOUNT: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
REQUEST_TIMEOUT_S: Final = 5.0
# A kubelet /pods answer larger than this is not one (250 pods x ~20 KiB is ~5 MiB).
MAX_RESPONSE_BYTES: Final = 64 << 20


class KubeError(Exception):
    """Kubernetes access that cannot work as configured (bad kubeconfig, no cluster): exit 2."""


class Flight:
    """One refresh: done when it finished; `error` is a failures.REASONS value if it failed."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: str | None = None


class SourceFailure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# (level, message, fields): "info" or "error", as the daemon's diagnostics log takes them.
Log = Callable[[str, str, dict[str, Any]], None]


class Refresher:
    """Runs `refresh` in its own thread: on request (single flight: requests made while one is
    pending share it) and every `period_s` if given."""

    def __init__(self, name: str, refresh: Callable[[], None], period_s: float | None) -> None:
        self._refresh = refresh
        self._period = period_s
        self._cond = threading.Condition()
        self._pending: Flight | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self) -> Flight:
        with self._cond:
            if self._pending is None:
                self._pending = Flight()
                self._cond.notify()
            return self._pending

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._pending is None and not self._stopped:
                    self._cond.wait(self._period)
                    if self._pending is None and self._period is None and not self._stopped:
                        continue
                if self._stopped:
                    if self._pending is not None:
                        self._pending.error = UNAVAILABLE
                        self._pending.done.set()
                    return
                flight, self._pending = self._pending, None
            try:
                self._refresh()
            except SourceFailure as failure:
                if flight is not None:
                    flight.error = failure.reason
            except Exception:
                if flight is not None:
                    flight.error = ERROR
            if flight is not None:
                flight.done.set()


def log_nothing(_level: str, _message: str, _fields: dict[str, Any]) -> None:
    pass


class Complaints:
    """Logs each distinct problem at most once a minute: a down API must not flood stderr."""

    def __init__(self, log: Log, clock: Callable[[], float] = time.monotonic) -> None:
        self._log = log
        self._clock = clock
        self._last: dict[str, float] = {}

    def __call__(self, message: str, **fields: Any) -> None:
        now = self._clock()
        if now - self._last.get(message, -1e9) >= 60.0:
            self._last[message] = now
            self._log("error", message, fields)


class Source(Protocol):
    name: str

    def start(self) -> None: ...

    def close(self) -> None: ...

    def request_refresh(self) -> Flight: ...


def http_failure(what: str, where: str, status: int, permission: str) -> SourceFailure:
    if status == 401:
        return SourceFailure(
            UNAUTHORIZED,
            f"{what} at {where} rejected oomtrace's credentials (401 Unauthorized): "
            "check the service-account token or the kubeconfig",
        )
    if status == 403:
        return SourceFailure(
            FORBIDDEN,
            f"{what} at {where} forbids oomtrace to read pods (403 Forbidden): "
            f"grant its service account {permission}",
        )
    return SourceFailure(UNAVAILABLE, f"{what} at {where} answered HTTP {status}")
